"""Instance provider against the real incusd and the real Pulumi CLI (Automation API, file backend)."""

import pytest

from tests.helpers import (
    base_config, demo_group, http_get, incus, instances_with_prefix, pulumi_stack, wait_for,
)

pytestmark = pytest.mark.integration


def quiet(_):
    pass


def test_lifecycle_create_noop_update_drift_destroy():
    # A sentinel outside the stack's prefix, not owned by incus-cplb: must be untouched throughout.
    client = incus()
    sentinel = "cplb-sentinel-" + __import__("secrets").token_hex(2)
    client.call("POST", "instances", json={
        "name": sentinel, "source": {"type": "image", "alias": "cplb/demo-apiserver"},
        "devices": {"root": {"type": "disk", "path": "/", "pool": "cplb"}}, "config": {"user.cluster-name": "itdemo"}})
    try:
        with pulumi_stack(base_config(instanceGroups=[demo_group(3)])) as (project, name, stack):
            up = stack.up(on_output=quiet)
            assert up.summary.result == "succeeded"
            addrs = up.outputs["instanceGroups"].value["demo-cp"]["addresses"]
            names = up.outputs["instanceGroups"].value["demo-cp"]["instances"]
            assert names == [f"{name}-demo-cp-{n}" for n in (1, 2, 3)]
            # Each instance answers on 6443 with its own name.
            for inst_name, addr in zip(names, addrs):
                assert wait_for(lambda: http_get(addr, 6443) == inst_name, 20), (inst_name, addr)
                assert http_get(addr, 6443, "/healthz") == "ok"

            # A second `up` without change does nothing.
            again = stack.preview(on_output=quiet)
            assert set(again.change_summary) == {"same"}, again.change_summary

            # A label change updates in place: no replace, same instance (uuid).
            uuid_before = instances_with_prefix(name)[names[1]]["config"]["volatile.uuid"]
            group = demo_group(3)
            group["labels"]["user.tier"] = "gold"
            project.write_stack_config(name, base_config(instanceGroups=[group]))
            pv = stack.preview(on_output=quiet)
            assert pv.change_summary.get("update") == 3 and "replace" not in pv.change_summary, pv.change_summary
            stack.up(on_output=quiet)
            after = instances_with_prefix(name)
            assert after[names[1]]["config"]["volatile.uuid"] == uuid_before
            assert all(after[n]["config"]["user.tier"] == "gold" for n in names)

            # Deleted out of band: refresh sees it, the next `up` recreates it, and it answers again.
            client.delete_instance(names[0])
            ref = stack.refresh(on_output=quiet)
            assert ref.summary.resource_changes.get("delete") == 1, ref.summary.resource_changes
            up2 = stack.up(on_output=quiet)
            assert up2.summary.resource_changes.get("create") == 1, up2.summary.resource_changes
            addr = up2.outputs["instanceGroups"].value["demo-cp"]["addresses"][0]
            assert wait_for(lambda: http_get(addr, 6443) == names[0], 20)

            stack.destroy(on_output=quiet)
            assert instances_with_prefix(name) == {}
        assert client.get_instance(sentinel)["config"].get("user.cluster-name") == "itdemo"
    finally:
        client.delete_instance(sentinel)


def test_refuses_an_instance_it_does_not_own():
    from pulumi.automation import errors

    with pulumi_stack(base_config(instanceGroups=[demo_group(1, name="own")])) as (_, name, stack):
        squatter = f"{name}-own-1"
        incus().call("POST", "instances", json={
            "name": squatter, "source": {"type": "image", "alias": "cplb/demo-apiserver"},
            "devices": {"root": {"type": "disk", "path": "/", "pool": "cplb"}}})
        with pytest.raises(errors.CommandError) as exc:
            stack.up(on_output=quiet)
        assert "never takes over an instance it did not create" in str(exc.value)
        # Still there, still not ours.
        assert incus().get_instance(squatter)["config"].get("user.cplb.stack") is None


def test_invalid_config_fails_preview_and_creates_nothing():
    from pulumi.automation import errors

    bad = base_config(instanceGroups=[demo_group(2)], loadBalancers=[
        {"name": "api", "cluster": "demo", "type": "lxc", "ports": [{"name": "api", "port": 99999}]}])
    with pulumi_stack(bad) as (_, name, stack):
        with pytest.raises(errors.CommandError) as exc:
            stack.preview(on_output=quiet)
        assert "cplb:loadBalancers[0].ports[0].port" in str(exc.value)
        with pytest.raises(errors.CommandError):
            stack.up(on_output=quiet)
        assert instances_with_prefix(name) == {}
