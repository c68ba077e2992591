"""The shared load-balancer model (issue 7) on real components: draining through haproxy's runtime API with a
bounded wait, status conditions, routing, and a dual-stack endpoint reaching IPv6 backends."""

import random
import socket
import time

import pytest

from tests.helpers import (
    base_config, http_get, incus, launch_external, pulumi_stack, service_down, service_up, set_label, up_in_thread,
    wait_for,
)

pytestmark = pytest.mark.integration


def quiet(_):
    pass


@pytest.fixture
def control_plane():
    cluster = f"m{random.randrange(16**6):06x}"
    names = [f"{cluster}-cp-{n}" for n in (1, 2, 3)]
    labels = {"user.cluster-name": cluster, "user.cluster-role": "control-plane"}
    try:
        for name in names:
            launch_external(name, labels)
        yield cluster, names
    finally:
        for name in names:
            incus().delete_instance(name)


def lxc_lb(cluster: str, **extra) -> dict:
    return {"name": "api", "cluster": cluster, "type": "lxc",
            "healthCheck": {"mode": "tcp", "intervalSeconds": 1, "rise": 1, "fall": 2}, **extra}


def conditions(result, lb: str = "api") -> dict:
    status = result.outputs["loadBalancers"].value[lb]["status"]
    return {c["type"]: c for c in status["conditions"]}


class KeepAlive:
    """One HTTP/1.1 connection kept open through the balancer (an API server watch, in miniature)."""

    def __init__(self, endpoint: str):
        host, port = endpoint.rsplit(":", 1)
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        self.buffer = b""

    def get(self) -> str:
        self.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed by the balancer")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
        while len(rest) < length:
            rest += self.sock.recv(4096)
        self.buffer = rest[length:]
        return rest[:length].decode().strip()

    def close(self):
        self.sock.close()


def last_drain(stack) -> dict:
    for res in stack.export_stack().deployment["resources"]:
        if res["type"].endswith("InstanceFile") and res["outputs"].get("lastDrain"):
            return res["outputs"]["lastDrain"]
    return {}


def test_drain_waits_for_open_connections_within_the_bound_and_status_follows(control_plane):
    cluster, names = control_plane
    config = base_config(loadBalancers=[lxc_lb(cluster, drain={"timeoutSeconds": 60})])
    with pulumi_stack(config) as (project, stack_name, stack):
        up = stack.up(on_output=quiet)
        ep = up.outputs["loadBalancers"].value["api"]["endpoint"]
        assert wait_for(lambda: len({http_get(*ep.rsplit(":", 1), timeout=5) for _ in range(6)}) == 3, 20)

        # Status and routing, read at `up`: all three healthy, the endpoint answers, one row per backend and port.
        up = stack.up(on_output=quiet)
        cond = conditions(up)
        assert cond["Exists"]["status"] == "True", cond
        assert cond["Ready"]["status"] == "True", cond
        assert cond["BackendsHealthy"]["status"] == "True" and "3 of 3" in cond["BackendsHealthy"]["message"], cond
        routing = up.outputs["routing"].value["api"]["destinations"]
        assert sorted(d["name"] for d in routing) == names and {d["port"] for d in routing} == {6443}
        assert all(d["uuid"] and d["family"] == "IPv4" for d in routing)

        # A backend's API server stops: BackendsHealthy says 2 of 3 (from haproxy's own checks).
        service_down(names[2], "apiserver")
        time.sleep(3)
        cond = conditions(stack.up(on_output=quiet, refresh=True))
        assert cond["BackendsHealthy"]["status"] == "False" and "2 of 3" in cond["BackendsHealthy"]["message"], cond
        service_up(names[2], "apiserver")

        # A long-lived connection to one member; then that member is drained by its label.
        watch = KeepAlive(ep)
        member = watch.get()
        assert member in names
        set_label(member, "user.cplb.disabled", "true")
        thread, box = up_in_thread(stack)
        lb_instance = f"{stack_name}-api-haproxy-1"

        def member_state() -> str:
            rc, out, _ = incus().exec(lb_instance, ["sh", "-c", "echo 'show stat' | nc 127.0.0.1 9999"])
            rows = [line.split(",") for line in out.splitlines() if line.startswith("be_api,")]
            return next((r[17] for r in rows if r[1] == member), "")

        assert wait_for(lambda: member_state() == "DRAIN", 30, 0.2), "the member never entered drain state"
        # While `up` waits: new connections avoid the member, the open one is still served by it.
        fresh = [http_get(*ep.rsplit(":", 1), timeout=5) for _ in range(20)]
        assert None not in fresh and member not in fresh, fresh
        assert watch.get() == member
        assert thread.is_alive(), "up returned while the drained member still had a connection"
        time.sleep(2)
        assert watch.get() == member and thread.is_alive()
        closed_at = time.monotonic()
        watch.close()
        thread.join(120)
        assert "error" not in box, box.get("error")
        drained = last_drain(stack)
        assert drained["servers"] == [f"be_api/{member}"] and drained["timedOut"] is False, drained
        assert drained["openAtEnd"] == 0
        print(f"\nup returned {time.monotonic() - closed_at:.1f}s after the connection closed "
              f"(drain wait {drained['waitedSeconds']}s, bound 60s)")
        after = [http_get(*ep.rsplit(":", 1), timeout=5) for _ in range(10)]
        assert member not in after and None not in after

        # The bound: a connection that never ends does not hold `up` past drain.timeoutSeconds.
        others = [n for n in names if n != member]
        set_label(member, "user.cplb.disabled", None)
        stack.set_config("cplb:loadBalancers", __import__("pulumi").automation.ConfigValue(
            value=__import__("json").dumps([lxc_lb(cluster, drain={"timeoutSeconds": 4})])))
        stack.up(on_output=quiet)
        watch = KeepAlive(ep)
        second = watch.get()
        set_label(second, "user.cplb.disabled", "true")
        thread, box = up_in_thread(stack)
        thread.join(180)
        assert "error" not in box, box.get("error")
        drained = last_drain(stack)
        assert drained["servers"] == [f"be_api/{second}"] and drained["timedOut"] is True, drained
        assert drained["openAtEnd"] == 1 and 4 <= drained["waitedSeconds"] < 10, drained
        print(f"bounded drain: waited {drained['waitedSeconds']}s with the connection open (bound 4s), "
              f"up took {box['seconds']:.1f}s")
        watch.close()
        assert others  # the remaining members keep serving
        assert wait_for(lambda: http_get(*ep.rsplit(":", 1), timeout=5) in names, 10)


def test_dual_stack_endpoint_reaches_ipv6_backends(control_plane):
    cluster, names = control_plane
    # SLAAC gives the backends their IPv6 address a moment after the IPv4 lease.
    assert wait_for(lambda: all(incus().get_instance(n)["state"]["network"]["eth0"]["addresses"]
                                and any(a["family"] == "inet6" and a["scope"] == "global"
                                        for a in incus().get_instance(n)["state"]["network"]["eth0"]["addresses"])
                                for n in names), 30)
    config = base_config(loadBalancers=[lxc_lb(cluster, ipFamilies=["IPv4", "IPv6"])])
    with pulumi_stack(config) as (project, stack_name, stack):
        up = stack.up(on_output=quiet)
        lb = up.outputs["loadBalancers"].value["api"]
        v4, v6 = lb["endpoints"]
        assert v6.startswith("[fd00:198:18:10:") and not v4.startswith("["), lb["endpoints"]
        host6, port = v6.rsplit(":", 1)
        host4, _ = v4.rsplit(":", 1)
        assert wait_for(lambda: {http_get(host6, int(port), timeout=5) for _ in range(9)} == set(names), 20)
        # Who the backends saw: over IPv6 the balancer's IPv6 address, over IPv4 its IPv4 address.
        peers6 = {http_get(host6, int(port), "/peer", timeout=5) for _ in range(6)}
        peers4 = {http_get(host4, int(port), "/peer", timeout=5) for _ in range(6)}
        balancer = incus().get_instance(f"{stack_name}-api-haproxy-1")["state"]["network"]["eth0"]["addresses"]
        own6 = {a["address"] for a in balancer if a["family"] == "inet6" and a["scope"] == "global"}
        own4 = {a["address"] for a in balancer if a["family"] == "inet"}
        assert peers6 == own6 and peers4 == own4, (peers6, peers4, own6, own4)
        routing = up.outputs["routing"].value["api"]["destinations"]
        assert {d["family"] for d in routing} == {"IPv4", "IPv6"} and len(routing) == 6
        cond = conditions(up)
        assert cond["Ready"]["status"] == "True" and v6 in cond["Ready"]["message"], cond
