"""The `keepalived` strategy against real keepalived and haproxy in the control-plane instances."""

import random
import time

import pytest

from tests.helpers import (
    fresh_router_id, fresh_vip,
    base_config, http_get, incus, instances_with_prefix, launch_external, pulumi_stack, service_down, service_up,
    vip_holders, wait_for,
)

pytestmark = pytest.mark.integration


def quiet(_):
    pass


def config(cluster: str, vip: str, vrid: int, advert: float = 1, extra_vips=()) -> dict:
    return base_config(
        instanceGroups=[{"name": "cp", "count": 3, "instance": {"image": "cplb/demo-node", "limits": {"memory": "128MiB"}},
                         "labels": {"user.cluster-name": cluster, "user.cluster-role": "control-plane"}}],
        loadBalancers=[{
            "name": "api", "cluster": cluster, "type": "keepalived",
            "healthCheck": {"mode": "http-healthz", "intervalSeconds": 1, "rise": 1, "fall": 2},
            "keepalived": {"vrrpInstances": [{"virtualIPs": [f"{vip}/24", *extra_vips], "virtualRouterID": vrid,
                                              "advertIntervalSeconds": advert}]},
        }],
    )


def settled(prefix: str, vip: str):
    first = vip_holders(prefix, vip)
    time.sleep(3)
    return first[0] if len(first) == 1 and vip_holders(prefix, vip) == first else None


def test_keepalived_vip_follows_api_server_health():
    from pulumi.automation import ConfigValue

    cluster = f"k{random.randrange(16**5):05x}"
    vip = fresh_vip()
    vrid = fresh_router_id()
    password = "Ka" + "".join(random.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(6))
    with pulumi_stack(config(cluster, vip, vrid)) as (project, name, stack):
        stack.set_config("cplb:loadBalancers[0].keepalived.vrrpInstances[0].authPass",
                         ConfigValue(password, secret=True), path=True)
        # Someone else's instance with the cluster's labels (and keepalived in its image), named to sort first: it
        # is selected, but it is not the stack's, so it gets neither the password nor a share of the VIP.
        stranger = f"{name}-0-stranger"
        launch_external(stranger, {"user.cluster-name": cluster, "user.cluster-role": "control-plane"},
                        image="cplb/haproxy")
        logs = []
        pv = stack.preview(on_output=logs.append, diff=True)
        up = stack.up(on_output=logs.append)
        assert f"{stranger} match the targets but are neither this stack's instances" in "\n".join(logs)
        pushed = incus().pull_file(stranger, "/etc/keepalived/keepalived.conf")
        assert pushed is None or password.encode() not in pushed[0], "the VRRP password reached a stranger"
        out = up.outputs["loadBalancers"].value["api"]
        assert out["endpoint"] == f"{vip}:6443" and out["mode"] == "userspace"
        nodes = [f"{name}-cp-{n}" for n in (1, 2, 3)]

        # Exactly one node holds the VIP, and VIP:6443 is answered (haproxy spreads over all three).
        holder = wait_for(lambda: settled(name, vip), 40)
        assert holder in nodes, vip_holders(name, vip)
        assert wait_for(lambda: {http_get(vip, 6443) for _ in range(9)} == set(nodes), 20)

        # The API server on the holder dies: track_script moves the VIP.
        service_down(holder, "apiserver")
        t0 = time.monotonic()
        assert wait_for(lambda: vip_holders(name, vip) and holder not in vip_holders(name, vip), 20, 0.1)
        assert wait_for(lambda: http_get(vip, 6443, timeout=0.5) in nodes, 15, 0.05)
        print(f"\nkeepalived: API server down on {holder}: VIP answered again after {time.monotonic() - t0:.2f}s")
        service_up(holder, "apiserver")

        # The holder crashes: the VIP moves.
        second = wait_for(lambda: settled(name, vip), 40)
        incus().set_state(second, "stop", force=True)
        t0 = time.monotonic()
        assert wait_for(lambda: http_get(vip, 6443, timeout=0.5) in nodes, 15, 0.05)
        print(f"keepalived: {second} stopped (--force): VIP answered again after {time.monotonic() - t0:.2f}s")
        assert vip_holders(name, vip) and second not in vip_holders(name, vip)
        incus().set_state(second, "start")
        wait_for(lambda: http_get(incus().wait_for_address(second)["state"]["network"]["eth0"]["addresses"][0]
                                  ["address"], 6443) == second, 30)

        assert stranger not in vip_holders(name, vip)
        # The authPass reached the nodes, and nowhere else in plain text.
        conf, mode = incus().pull_file(nodes[0], "/etc/keepalived/keepalived.conf")
        assert f"auth_pass {password}" in conf.decode() and f"virtual_router_id {vrid}" in conf.decode()
        assert mode == 0o600, oct(mode)  # readable by root alone on the node
        for where, text in (("state", project.state_text()), ("preview", pv.stdout), ("logs", "\n".join(logs)),
                            ("outputs", str(up.outputs))):
            assert password not in text, f"the VRRP password leaked into the {where}"

        # Advert interval and VIP set change: config files update, no instance is replaced; keepalived reloads.
        uuids = {n: i["config"]["volatile.uuid"] for n, i in instances_with_prefix(name).items()}
        extra = fresh_vip()
        while extra == vip:
            extra = fresh_vip()
        project.write_stack_config(name, config(cluster, vip, vrid, advert=2, extra_vips=[f"{extra}/24"]))
        stack.set_config("cplb:loadBalancers[0].keepalived.vrrpInstances[0].authPass",
                         ConfigValue(password, secret=True), path=True)
        change = stack.preview(on_output=quiet, diff=True)
        assert not {"create", "replace", "delete"} & set(change.change_summary), change.change_summary
        # keepalived.conf + haproxy.cfg x3, and the balancer's status (read again once they are in place)
        assert change.change_summary.get("update") == 7, change.change_summary
        stack.up(on_output=quiet)
        assert {n: i["config"]["volatile.uuid"] for n, i in instances_with_prefix(name).items()} == uuids
        assert "advert_int 2" in incus().pull_file(nodes[0], "/etc/keepalived/keepalived.conf")[0].decode()
        assert wait_for(lambda: len(vip_holders(name, extra)) == 1, 20)
        assert wait_for(lambda: http_get(extra, 6443) in nodes, 15)
