"""The `lxc` strategy against real incusd, real haproxy/keepalived in containers and the real Pulumi CLI.

The control plane here is made outside the stack (as cluster-api would make it): instances labelled
user.cluster-name=<cluster>, user.cluster-role=control-plane, picked up by the default selector.
"""

import hashlib
import random
import time

import pytest

from providers.incus_client import IncusError
from providers.instance_file import InstanceFileProvider
from tests.helpers import (
    process_users,
    fresh_router_id, fresh_vip,
    Load, base_config, http_get, incus, instances_with_prefix, launch_external, pulumi_stack, set_label, vip_holders,
    wait_for,
)

pytestmark = pytest.mark.integration


def quiet(_):
    pass


def lxc_lb(cluster: str, **lxc) -> dict:
    return {
        "name": "api", "cluster": cluster, "type": "lxc",
        "healthCheck": {"mode": "tcp", "intervalSeconds": 1, "rise": 1, "fall": 2},
        "lxc": {"replicas": 1, **lxc},
    }


@pytest.fixture
def control_plane():
    """Three demo api servers outside the stack, labelled for a cluster of their own."""
    cluster = f"c{random.randrange(16**6):06x}"
    names = [f"{cluster}-cp-{n}" for n in (1, 2, 3)]
    labels = {"user.cluster-name": cluster, "user.cluster-role": "control-plane"}
    addresses = {}
    try:
        for name in names:
            addresses[name] = launch_external(name, labels)
        yield cluster, names, addresses
    finally:
        for name in names:
            incus().delete_instance(name)


def endpoint_of(result) -> str:
    return result.outputs["loadBalancers"].value["api"]["endpoint"]


def answers(endpoint: str, n: int) -> list:
    host, port = endpoint.rsplit(":", 1)
    return [http_get(host, int(port), timeout=10) for _ in range(n)]


def test_lxc_endpoint_follows_the_control_plane(control_plane):
    cluster, names, addresses = control_plane
    with pulumi_stack(base_config(loadBalancers=[lxc_lb(cluster)])) as (project, stack_name, stack):
        up = stack.up(on_output=quiet)
        ep = endpoint_of(up)
        lb = up.outputs["loadBalancers"].value["api"]
        assert sorted(b["name"] for b in lb["backends"]) == names
        assert {b["name"]: b["address"] for b in lb["backends"]} == addresses
        routing = up.outputs["routing"].value["api"]["destinations"]
        assert all(d["uuid"] for d in routing) and len(routing) == 3
        balancer = instances_with_prefix(stack_name)
        assert list(balancer) == [f"{stack_name}-api-haproxy-1"]
        uuid_before = balancer[f"{stack_name}-api-haproxy-1"]["config"]["volatile.uuid"]
        # The master keeps root; the worker that carries the traffic runs as nobody (65534).
        users = process_users(f"{stack_name}-api-haproxy-1", "haproxy")
        assert "0" in users and "65534" in users, users

        # Wait until haproxy has seen all three healthy, then 30 requests go to all three in turn.
        assert wait_for(lambda: len(set(answers(ep, 6))) == 3, 20)
        got = answers(ep, 30)
        assert None not in got
        assert {name: got.count(name) for name in names} == {name: 10 for name in names}, got
        assert all(got[i] != got[i + 1] for i in range(29)), "round robin: no backend twice in a row"

        # One control-plane instance leaves the selector: preview shows exactly one update, the config file.
        set_label(names[2], "user.cluster-role", "retired")
        pv = stack.preview(on_output=quiet, diff=True)
        # The config file, and the balancer's status, which reads the new backend set when `up` applies it.
        assert pv.change_summary.get("update") == 2, pv.change_summary
        assert not {"replace", "delete", "create"} & set(pv.change_summary), pv.change_summary
        assert "InstanceFile" in pv.stdout and "~content" in pv.stdout.replace(" ", "") or "content" in pv.stdout
        stack.up(on_output=quiet)
        assert wait_for(lambda: set(answers(ep, 6)) == {names[0], names[1]}, 15)
        assert set(answers(ep, 20)) == {names[0], names[1]}
        # Same balancer instance: updated file and reload, no replace.
        assert instances_with_prefix(stack_name)[f"{stack_name}-api-haproxy-1"]["config"]["volatile.uuid"] == uuid_before

        # Drained through the label: user.cplb.disabled=true takes it out too.
        set_label(names[2], "user.cluster-role", "control-plane")
        set_label(names[1], "user.cplb.disabled", "true")
        stack.up(on_output=quiet)
        assert wait_for(lambda: set(answers(ep, 6)) == {names[0], names[2]}, 15)

        stack.destroy(on_output=quiet)
        assert instances_with_prefix(stack_name) == {}


def test_reload_under_load_drops_nothing(control_plane):
    cluster, names, _ = control_plane
    with pulumi_stack(base_config(loadBalancers=[lxc_lb(cluster)])) as (_, _name, stack):
        ep = endpoint_of(stack.up(on_output=quiet))
        assert wait_for(lambda: len(set(answers(ep, 6))) == 3, 20)
        with Load(ep, min_requests=2000) as load:
            # Three `up`s, each changing the backend set (and so reloading haproxy).
            for role in ("retired", "control-plane", "retired"):
                set_label(names[0], "user.cluster-role", role)
                result = stack.up(on_output=quiet)
                assert result.summary.resource_changes.get("update") == 2  # haproxy.cfg, and the status
        print(f"\nreload under load: {load.total} requests, {len(load.failures)} failed, answers {dict(load.answers)}")
        assert load.total >= 2000
        assert load.failures == [], load.failures[:5]


def test_dead_backend_is_taken_out_without_client_errors(control_plane):
    cluster, names, _ = control_plane
    with pulumi_stack(base_config(loadBalancers=[lxc_lb(cluster)])) as (_, _name, stack):
        ep = endpoint_of(stack.up(on_output=quiet))
        assert wait_for(lambda: len(set(answers(ep, 6))) == 3, 20)
        # New connections to the dead backend are redispatched by haproxy; a request already in flight on it when
        # it dies is cut (TCP mode cannot replay it), so the client retries once, as Kubernetes clients do.
        with Load(ep, min_requests=300, max_seconds=60, retries=1) as load:
            time.sleep(0.5)
            incus().set_state(names[1], "stop", force=True)
            time.sleep(4)  # health checks (inter 1s, fall 2) mark it down meanwhile
        print(f"\nbackend death: {load.total} requests, {load.retried} retried once, {len(load.failures)} failed")
        assert load.failures == [], load.failures[:5]
        assert set(answers(ep, 12)) == {names[0], names[2]}


def test_injection_and_invalid_options_rejected_at_preview(control_plane):
    from pulumi.automation import errors

    cluster, _, _ = control_plane
    with pulumi_stack(base_config(loadBalancers=[lxc_lb(cluster)])) as (project, name, stack):
        stack.up(on_output=quiet)
        lb_name = f"{name}-api-haproxy-1"
        before = incus().pull_file(lb_name, "/etc/haproxy/haproxy.cfg")[0]

        injected = lxc_lb(cluster)
        injected["targets"] = {"selector": {"matchLabels": {
            "user.cluster-name": f"{cluster}\n    server evil 198.18.10.9:1"}}}
        invalid_option = {**lxc_lb(cluster), "balance": "static-rr"}
        for bad, path in ((injected, "cplb:loadBalancers[0].targets.selector.matchLabels.user.cluster-name"),
                          (invalid_option, "cplb:loadBalancers[0].balance")):
            project.write_stack_config(name, base_config(loadBalancers=[bad]))
            with pytest.raises(errors.CommandError) as exc:
                stack.preview(on_output=quiet)
            assert path in str(exc.value)
            with pytest.raises(errors.CommandError):
                stack.up(on_output=quiet)
        assert incus().pull_file(lb_name, "/etc/haproxy/haproxy.cfg")[0] == before


def test_config_that_fails_validation_keeps_the_old_one_serving(control_plane):
    cluster, names, _ = control_plane
    with pulumi_stack(base_config(loadBalancers=[lxc_lb(cluster)])) as (_, name, stack):
        ep = endpoint_of(stack.up(on_output=quiet))
        assert wait_for(lambda: len(set(answers(ep, 6))) == 3, 20)
        lb_name = f"{name}-api-haproxy-1"
        before = incus().pull_file(lb_name, "/etc/haproxy/haproxy.cfg")[0]
        props = {
            "instance": lb_name, "path": "/etc/haproxy/haproxy.cfg", "content": "frontend x\n    bogus_keyword 1\n",
            "connection": {"socket": "/var/lib/incus/unix.socket"}, "mode": "0644",
            "validateCommand": ["haproxy", "-c", "-q", "-f", "{path}"],
            "reloadCommand": ["sh", "-c", "kill -USR2 $(cat /run/haproxy.pid)"],
        }
        with pytest.raises(IncusError) as exc:
            InstanceFileProvider().update(lb_name, {"contentHash": hashlib.sha256(before).hexdigest()}, props)
        assert "failed validation" in str(exc.value) and "previous config keeps serving" in str(exc.value)
        assert incus().pull_file(lb_name, "/etc/haproxy/haproxy.cfg")[0] == before
        assert incus().pull_file(lb_name, "/etc/haproxy/haproxy.cfg.cplb-new") is None
        assert set(answers(ep, 9)) == set(names)


def test_ha_pair_moves_the_vip_when_the_holder_dies(control_plane):
    cluster, names, _ = control_plane
    from pulumi.automation import ConfigValue

    vip = fresh_vip()
    password = "Vr" + "".join(random.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(6))
    with pulumi_stack(base_config(loadBalancers=[lxc_lb(cluster, replicas=2, vip=vip,
                                                        virtualRouterID=fresh_router_id())])) as (project, name, stack):
        stack.set_config("cplb:loadBalancers[0].lxc.authPass", ConfigValue(password, secret=True), path=True)
        logs = []
        preview = stack.preview(on_output=logs.append, diff=True)
        up = stack.up(on_output=logs.append)
        # The VRRP password reached the instances, and nowhere else in plain text.
        conf, mode = incus().pull_file(f"{name}-api-haproxy-1", "/etc/keepalived/keepalived.conf")
        assert f"auth_pass {password}" in conf.decode()
        assert mode == 0o600, oct(mode)  # readable by root alone in the instance
        state = project.state_text()  # the state files as stored (export_stack would decrypt them)
        assert f"{name}-api-haproxy-1" in state
        for where, text in (("state", state), ("preview", preview.stdout), ("up log", "\n".join(logs)),
                            ("outputs", str(up.outputs))):
            assert password not in text, f"the VRRP password leaked into the {where}"
        ep = endpoint_of(up)
        assert ep == f"{vip}:6443"
        assert up.outputs["loadBalancers"].value["api"]["mode"] == "vrrp"

        def holders():
            return vip_holders(name, vip)

        def settled():
            # Exactly one holder, the same over 3 s (equal priorities: whichever started first keeps it).
            first = holders()
            time.sleep(3)
            return first[0] if len(first) == 1 and holders() == first else None

        first = wait_for(settled, 30)
        replicas = [f"{name}-api-haproxy-1", f"{name}-api-haproxy-2"]
        assert first in replicas, f"one replica should hold the VIP: {holders()}"
        assert wait_for(lambda: len(set(answers(ep, 6))) == 3, 20)

        incus().set_state(first, "stop", force=True)
        t0 = time.monotonic()
        answered = wait_for(lambda: http_get(vip, 6443, timeout=0.5) in names, 15, interval=0.05)
        failover = time.monotonic() - t0
        print(f"\nHA failover: endpoint answered again {failover:.2f}s after `stop --force` of {first}")
        assert answered, "the endpoint did not come back within 15 s"
        assert holders() == [r for r in replicas if r != first]


def test_when_no_backend_passes_its_check_the_endpoint_fails_open(control_plane):
    """Checks that all fail together (a cause they share, as a busy host or an etcd election is for every API server)
    do not close the endpoint: haproxy sends connections to every backend that accepts them, round robin, and still
    leaves out one that does not. With `failOpen: false` the endpoint refuses while no check passes."""
    from health import haproxy_servers

    cluster, names, _ = control_plane
    lb = {**lxc_lb(cluster), "healthCheck": {"mode": "http", "path": "/readyz", "intervalSeconds": 1,
                                               "rise": 1, "fall": 1}}
    with pulumi_stack(base_config(loadBalancers=[lb])) as (project, name, stack):
        ep = endpoint_of(stack.up(on_output=quiet))
        balancer = f"{name}-api-haproxy-1"
        uuid = incus().get_instance(balancer)["config"]["volatile.uuid"]
        assert wait_for(lambda: haproxy_servers(incus(), balancer) == {n: True for n in names}, 20)
        for n in names:  # every demo API server's /readyz answers 503 from now on, as in a shutdown delay
            assert incus().exec(n, ["touch", "/run/cplb-shutting-down"])[0] == 0
        assert wait_for(lambda: haproxy_servers(incus(), balancer) == {n: False for n in names}, 20)
        got = answers(ep, 30)
        assert None not in got and set(got) == set(names), got

        incus().set_state(names[1], "stop", force=True)
        assert wait_for(lambda: set(answers(ep, 12)) == {names[0], names[2]}, 20)

        project.write_stack_config(name, base_config(loadBalancers=[
            {**lb, "healthCheck": {**lb["healthCheck"], "failOpen": False}}]))
        stack.up(on_output=quiet)
        assert incus().get_instance(balancer)["config"]["volatile.uuid"] == uuid, "the balancer was replaced"
        assert wait_for(lambda: answers(ep, 3) == [None, None, None], 10)
