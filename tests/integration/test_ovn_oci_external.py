"""`ovn` against a real OVN (started and stopped by this module), `oci` against Incus 6.0 (missing extension),
and `external` with and without kube-vip."""

import os
import random
import subprocess
import time

import pytest

from tests.helpers import (
    ROOT, base_config, demo_group, http_get, incus, instances_with_prefix, pulumi_stack, run_dir, service_down,
    service_up, wait_for,
)

pytestmark = pytest.mark.integration
OVN_NETWORK = "cplbovn0"
OVN_UPLINK = "cplbuplink0"


def quiet(_):
    pass


@pytest.fixture(scope="module")
def ovn():
    """A real OVN, up from the first module that needs it until the whole run ends: scripts/ovn-down restarts incusd
    (which would cut every other test's Incus calls), so tests/conftest.py runs it once, after the last test."""
    t0 = time.monotonic()
    subprocess.run([os.path.join(ROOT, "scripts", "ovn-up")], check=True)
    open(os.path.join(run_dir(), "ovn-up"), "w").close()
    print(f"\nOVN bring-up: {time.monotonic() - t0:.1f}s")
    yield


def listen_address() -> str:
    return f"198.18.20.{random.randrange(200, 250)}"


def ovn_stack_config(cluster: str, listen: str, count: int = 2, **lb) -> dict:
    group = demo_group(count, name="cp", cluster=cluster)
    group["instance"]["network"] = OVN_NETWORK
    return base_config(instanceGroups=[group], loadBalancers=[{
        "name": "api", "cluster": cluster, "type": "ovn",
        "ovn": {"networkName": OVN_NETWORK, "listenAddress": listen},
        "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1, "rise": 1, "fall": 1},
        **lb,
    }])


def nb_load_balancers() -> str:
    return subprocess.run(["ovn-nbctl", "--format=csv", "--columns=vip", "list", "Load_Balancer"],
                          capture_output=True, text=True, check=True).stdout


def health(stack) -> dict:
    """Per-backend health as `pulumi refresh` reads it from the state endpoint into the balancer's status.
    (Not `up --refresh`: that would also start the instance the test stopped.)"""
    stack.refresh(on_output=quiet)
    for res in stack.export_stack().deployment["resources"]:
        if res["type"].endswith("status:BalancerStatus"):
            return dict((res["outputs"].get("observed") or {}).get("health") or {})
    return {}


def test_ovn_balances_fails_over_and_updates_in_place(ovn):
    cluster = f"o{random.randrange(16**5):05x}"
    listen = listen_address()
    with pulumi_stack(ovn_stack_config(cluster, listen)) as (project, name, stack):
        up = stack.up(on_output=quiet)
        assert up.outputs["loadBalancers"].value["api"]["endpoint"] == f"{listen}:6443"
        names = [f"{name}-cp-1", f"{name}-cp-2"]
        # Traffic from the host to the listen address reaches both backends.
        seen = wait_for(lambda: {http_get(listen, 6443) for _ in range(20)} >= set(names), 30)
        assert seen, "the OVN balancer did not reach both backends"
        assert wait_for(lambda: health(stack) == {n: "online" for n in names}, 30), health(stack)

        # One backend's API server stops (the instance stays: a stopped instance loses its logical switch
        # port and Incus reports `unknown`): OVN marks it offline and all requests go to the other.
        service_down(names[0], "apiserver")
        t0 = time.monotonic()
        assert wait_for(lambda: all(http_get(listen, 6443, timeout=1) == names[1] for _ in range(10)), 30, 0.1)
        print(f"\nOVN: all requests on the healthy backend {time.monotonic() - t0:.2f}s after the stop")
        assert wait_for(lambda: health(stack).get(names[0]) == "offline", 30), health(stack)
        service_up(names[0], "apiserver")
        assert wait_for(lambda: health(stack).get(names[0]) == "online", 30), health(stack)
        assert wait_for(lambda: {http_get(listen, 6443) for _ in range(20)} >= set(names), 30)

        # A third backend: the balancer is updated in place, not replaced.
        project.write_stack_config(name, ovn_stack_config(cluster, listen, count=3))
        pv = stack.preview(on_output=quiet, diff=True)
        assert "replace" not in pv.change_summary and pv.change_summary.get("update", 0) >= 1, pv.change_summary
        assert "NetworkLoadBalancer" in pv.stdout
        stack.up(on_output=quiet)
        assert wait_for(lambda: {http_get(listen, 6443) for _ in range(30)} >= set(names + [f"{name}-cp-3"]), 30)

        stack.destroy(on_output=quiet)
        assert listen not in nb_load_balancers()
        assert instances_with_prefix(name) == {}


def test_ovn_refuses_a_balancer_it_does_not_own(ovn):
    from pulumi.automation import errors

    listen = listen_address()
    incus().call("POST", f"networks/{OVN_NETWORK}/load-balancers",
                 json={"listen_address": listen, "description": "theirs", "config": {}})
    try:
        with pulumi_stack(ovn_stack_config("conflict", listen, count=1)) as (_, _name, stack):
            with pytest.raises(errors.CommandError) as exc:
                stack.up(on_output=quiet)
            assert "never takes it over" in str(exc.value)
            theirs = incus().call("GET", f"networks/{OVN_NETWORK}/load-balancers/{listen}")
            assert theirs["description"] == "theirs" and theirs["backends"] == []
    finally:
        subprocess.run(["incus", "network", "load-balancer", "delete", OVN_NETWORK, listen], check=False)


@pytest.mark.parametrize("change,message", [
    ({"ovn": {"networkName": "cplbbr0", "listenAddress": "198.18.20.210"}}, "only on OVN networks"),
    ({"ovn": {"networkName": OVN_NETWORK, "listenAddress": "198.18.30.5"}}, "not in the uplink"),
    ({"ovn": {"networkName": "nosuchnet", "listenAddress": "198.18.20.210"}}, "no network 'nosuchnet'"),
])
def test_ovn_bad_config_fails_at_preview(ovn, change, message):
    from pulumi.automation import errors

    config = ovn_stack_config("bad", "198.18.20.210", count=1)
    config["loadBalancers"][0].update(change)
    with pulumi_stack(config) as (_, name, stack):
        with pytest.raises(errors.CommandError) as exc:
            stack.preview(on_output=quiet)
        assert message in str(exc.value) and "cplb:loadBalancers[0].ovn" in str(exc.value)
        assert instances_with_prefix(name) == {}


def test_oci_on_incus_6_0_names_the_missing_extension():
    from pulumi.automation import errors

    if "instance_oci" in incus().extensions():
        pytest.skip("this Incus server has instance_oci")
    config = base_config(loadBalancers=[{"name": "api", "cluster": "demo", "type": "oci", "oci": {}}])
    with pulumi_stack(config) as (_, name, stack):
        with pytest.raises(errors.CommandError) as exc:
            stack.preview(on_output=quiet)
        assert "instance_oci" in str(exc.value) and "cplb:loadBalancers[0].type" in str(exc.value)
        assert instances_with_prefix(name) == {}


def test_external_publishes_the_endpoint_and_pushes_kube_vip():
    cluster = f"x{random.randrange(16**5):05x}"
    vip = "198.18.10.98"
    plain = base_config(instanceGroups=[demo_group(2, name="cp", cluster=cluster)], loadBalancers=[
        {"name": "api", "cluster": cluster, "type": "external", "external": {"endpoint": f"{vip}:6443"}}])
    with pulumi_stack(plain) as (project, name, stack):
        up = stack.up(on_output=quiet)
        out = up.outputs["loadBalancers"].value["api"]
        assert out["endpoint"] == f"{vip}:6443" and out["kubeVip"] is None
        names = [f"{name}-cp-1", f"{name}-cp-2"]
        assert all(incus().pull_file(n, "/etc/kubernetes/manifests/kube-vip.yaml") is None for n in names)

        with_kube_vip = base_config(instanceGroups=[demo_group(2, name="cp", cluster=cluster)], loadBalancers=[
            {"name": "api", "cluster": cluster, "type": "external",
             "external": {"endpoint": f"{vip}:6443", "kubeVip": {"vip": vip, "leaseDurationSeconds": 15,
                                                                 "renewDeadlineSeconds": 10, "retryPeriodSeconds": 2}}}])
        project.write_stack_config(name, with_kube_vip)
        up = stack.up(on_output=quiet)
        assert up.outputs["loadBalancers"].value["api"]["kubeVip"]["instances"] == names
        import yaml

        for n in names:
            content, mode = incus().pull_file(n, "/etc/kubernetes/manifests/kube-vip.yaml")
            assert mode == 0o600
            pod = yaml.safe_load(content)
            env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
            assert env["address"] == vip and env["vip_arp"] == "true" and env["port"] == "6443"
            assert (env["vip_leaseduration"], env["vip_renewdeadline"], env["vip_retryperiod"]) == ("15", "10", "2")
            assert pod["spec"]["hostNetwork"] is True


def test_ovn_balancer_changed_or_deleted_out_of_band_is_seen_by_refresh_and_repaired(ovn):
    cluster = f"b{random.randrange(16**5):05x}"
    listen = listen_address()
    with pulumi_stack(ovn_stack_config(cluster, listen)) as (project, name, stack):
        stack.up(on_output=quiet)
        names = [f"{name}-cp-1", f"{name}-cp-2"]
        path = f"networks/{OVN_NETWORK}/load-balancers/{listen}"

        # Someone drops a backend by hand: refresh shows the balancer changed, up puts the backend back.
        current, etag = incus().etag_get(path)
        body = {k: current[k] for k in ("description", "config", "ports")}
        body["backends"] = [b for b in current["backends"] if b["name"] != names[1]]
        body["ports"] = [{**p, "target_backend": [t for t in p["target_backend"] if t != names[1]]}
                         for p in current["ports"]]
        incus().call("PUT", path, json=body, headers={"If-Match": etag})
        refreshed = stack.refresh(on_output=quiet)
        assert refreshed.summary.resource_changes.get("update", 0) >= 1, refreshed.summary.resource_changes
        pv = stack.preview(on_output=quiet, diff=True)
        assert pv.change_summary.get("update", 0) >= 1 and "replace" not in pv.change_summary, pv.change_summary
        stack.up(on_output=quiet)
        assert sorted(b["name"] for b in incus().call("GET", path)["backends"]) == names
        assert wait_for(lambda: {http_get(listen, 6443) for _ in range(20)} >= set(names), 30)

        # Someone deletes it: refresh drops it from the state, up creates it again.
        incus().call("DELETE", path)
        refreshed = stack.refresh(on_output=quiet)
        assert refreshed.summary.resource_changes.get("delete", 0) >= 1, refreshed.summary.resource_changes
        stack.up(on_output=quiet)
        assert incus().call("GET", path)["backends"]
        assert wait_for(lambda: {http_get(listen, 6443) for _ in range(20)} >= set(names), 30)
