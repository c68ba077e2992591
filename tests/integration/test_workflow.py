"""preview-summary on real previews (create, update, replace, delete, secrets) and `make drift` on a real stack."""

import os
import random
import subprocess
import sys

import pytest

from tests.helpers import (
    fresh_router_id, fresh_vip,
    ROOT, base_config, demo_group, incus, pulumi_stack, service_down, service_up, set_label, wait_for,
)

pytestmark = pytest.mark.integration


def quiet(_):
    pass


def preview_json(project, stack_name: str) -> str:
    env = {**os.environ, **project.env}
    pv = subprocess.run(["pulumi", "preview", "--json", "--stack", stack_name], cwd=project.dir, env=env,
                        capture_output=True, text=True)
    assert pv.stdout.strip().startswith("{"), pv.stderr
    return pv.stdout


def summary(project, stack_name: str) -> str:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "preview-summary"), "-", stack_name],
                         input=preview_json(project, stack_name), capture_output=True, text=True, check=True)
    return out.stdout


def lxc_lb(cluster, **lxc):
    return {"name": "api", "cluster": cluster, "type": "lxc", "lxc": {"replicas": 1, **lxc}}


def test_preview_summary_for_each_change_kind_without_secrets():
    from pulumi.automation import ConfigValue

    cluster = f"w{random.randrange(16**5):05x}"
    vip = fresh_vip()
    password = "Pw" + "".join(random.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(6))
    values = base_config(instanceGroups=[demo_group(2, name="cp", cluster=cluster)],
                         loadBalancers=[lxc_lb(cluster, replicas=2, vip=vip, virtualRouterID=fresh_router_id())])
    with pulumi_stack(values) as (project, name, stack):
        def set_secret():
            stack.set_config("cplb:loadBalancers[0].lxc.authPass", ConfigValue(password, secret=True), path=True)

        set_secret()
        created = summary(project, name)
        assert "to create" in created and "| create | `incus:Instance` | `cp-1` |" in created
        assert "| create | `incus:InstanceFile` | `api-keepalived-conf-1` |" in created
        stack.up(on_output=quiet)

        # update: a label on the group
        group = demo_group(2, name="cp", cluster=cluster)
        group["labels"]["user.tier"] = "gold"
        project.write_stack_config(name, {**values, "instanceGroups": [group]})
        set_secret()
        updated = summary(project, name)
        # The two instances change `config`; the balancer's files show as updates too, since in a preview the
        # address of an instance being updated is unknown (Pulumi's rule for updated resources).
        assert "to update" in updated and "| update | `incus:Instance` | `cp-1` | `config` |" in updated
        assert "to replace" not in updated and "to delete" not in updated

        # replace (the instance type; a new image alone is a rebuild in place, an update) and delete (one instance
        # fewer), replacements and deletions listed first
        group = demo_group(1, name="cp", cluster=cluster)
        group["instance"]["image"] = "cplb/demo-node"
        group["instance"]["instanceType"] = "c1-m1"
        project.write_stack_config(name, {**values, "instanceGroups": [group]})
        set_secret()
        mixed = summary(project, name)
        assert "**Replacements and deletions**" in mixed
        first_table = mixed.split("**Replacements and deletions**")[1].split("**Changes**")[0]
        assert "| delete | `incus:Instance` | `cp-2` | removed from the config |" in first_table
        assert "replace" in first_table and "`cp-1`" in first_table and "instanceType" in first_table
        assert mixed.index("Replacements and deletions") < mixed.index("<details>")

        for text in (created, updated, mixed):
            assert password not in text


def test_drift_is_detected_and_reported():
    cluster = f"w{random.randrange(16**5):05x}"
    with pulumi_stack(base_config(instanceGroups=[demo_group(1, name="cp", cluster=cluster)])) as (project, name, stack):
        stack.up(on_output=quiet)
        env = {**os.environ, **project.env, "CPLB_PROJECT_DIR": project.dir}
        drift = [os.path.join(ROOT, "scripts", "drift"), name]
        clean = subprocess.run(drift, env=env, capture_output=True, text=True)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "no drift" in clean.stdout

        set_label(f"{name}-cp-1", "user.cluster-role", "changed-by-hand")
        found = subprocess.run(drift, env=env, capture_output=True, text=True)
        assert found.returncode == 1, found.stdout + found.stderr
        assert "changed out of band" in found.stdout and "incus:Instance cp-1" in found.stdout

        incus().delete_instance(f"{name}-cp-1")
        gone = subprocess.run(drift, env=env, capture_output=True, text=True)
        assert gone.returncode == 1 and "cp-1" in gone.stdout


def test_an_unchanged_stack_previews_with_no_change_outputs_included():
    """Conditions are live state: a refresh reads them (the status resource), a preview of an unchanged stack shows
    nothing, not even an output, and `make drift` does not call a changed condition drift."""
    import json

    cluster = f"w{random.randrange(16**5):05x}"
    values = base_config(instanceGroups=[demo_group(2, name="cp", cluster=cluster)],
                         loadBalancers=[lxc_lb(cluster), {"name": "ext", "cluster": cluster, "type": "external",
                                                          "role": "service",
                                                          "external": {"endpoint": "198.18.10.250:443"}}])
    with pulumi_stack(values) as (project, name, stack):
        up = stack.up(on_output=quiet)
        conds = {c["type"]: c for c in up.outputs["loadBalancers"].value["api"]["status"]["conditions"]}
        assert conds["BackendsHealthy"]["status"] == "True" and "2 of 2" in conds["BackendsHealthy"]["message"], conds

        def changed_outputs() -> list[str]:
            """What a preview would change: no resource, and which output lines (the JSON has no stack outputs;
            the CLI's diff marks a changed output line with ~, + or -)."""
            doc = json.loads(preview_json(project, name))
            changed = [(s["op"], s["urn"].rsplit("::", 1)[-1]) for s in doc.get("steps") or [] if s["op"] != "same"]
            assert not changed, changed
            text = stack.preview(on_output=quiet, diff=True).stdout
            section = text.split("--outputs:--", 1)[1].split("Resources:", 1)[0] if "--outputs:--" in text else ""
            return [line.strip() for line in section.splitlines() if line.strip()[:2] in ("~ ", "+ ", "- ", "+-")]

        assert changed_outputs() == []
        env = {**os.environ, **project.env, "CPLB_PROJECT_DIR": project.dir}
        drift = [os.path.join(ROOT, "scripts", "drift"), name]

        # A backend stops answering: the world changed, the config did not.
        service_down(f"{name}-cp-2", "apiserver")
        try:
            clean = subprocess.run(drift, env=env, capture_output=True, text=True)
            assert clean.returncode == 0 and "no drift" in clean.stdout, clean.stdout + clean.stderr
            # A refresh reads the conditions into the state: now the preview shows the outputs that `up` will
            # change (and nothing else), which is also what shows this check can fail.
            stack.refresh(on_output=quiet)
            changed = changed_outputs()
            assert any("2 of 2 healthy" in line and "1 of 2 healthy" in line for line in changed), changed
            up = stack.up(on_output=quiet)
            conds = {c["type"]: c for c in up.outputs["loadBalancers"].value["api"]["status"]["conditions"]}
            assert conds["BackendsHealthy"]["status"] == "False" and "1 of 2" in conds["BackendsHealthy"]["message"]
            assert changed_outputs() == []
        finally:
            service_up(f"{name}-cp-2", "apiserver")
        assert wait_for(lambda: "2 of 2" in {c["type"]: c for c in stack.up(on_output=quiet, refresh=True).outputs[
            "loadBalancers"].value["api"]["status"]["conditions"]}["BackendsHealthy"]["message"], 60, 2)
