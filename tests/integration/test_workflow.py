"""preview-summary on real previews (create, update, replace, delete, secrets) and `make drift` on a real stack."""

import os
import random
import subprocess
import sys

import pytest

from tests.helpers import ROOT, base_config, demo_group, incus, pulumi_stack, set_label

pytestmark = pytest.mark.integration


def quiet(_):
    pass


def summary(project, stack_name: str) -> str:
    env = {**os.environ, **project.env}
    pv = subprocess.run(["pulumi", "preview", "--json", "--stack", stack_name], cwd=project.dir, env=env,
                        capture_output=True, text=True)
    assert pv.stdout.strip().startswith("{"), pv.stderr
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "preview-summary"), "-", stack_name],
                         input=pv.stdout, capture_output=True, text=True, check=True)
    return out.stdout


def lxc_lb(cluster, **lxc):
    return {"name": "api", "cluster": cluster, "type": "lxc", "lxc": {"replicas": 1, **lxc}}


def test_preview_summary_for_each_change_kind_without_secrets():
    from pulumi.automation import ConfigValue

    cluster = f"w{random.randrange(16**5):05x}"
    vip = f"198.18.10.{random.randrange(20, 90)}"
    password = "Pw" + "".join(random.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(6))
    values = base_config(instanceGroups=[demo_group(2, name="cp", cluster=cluster)],
                         loadBalancers=[lxc_lb(cluster, replicas=2, vip=vip, virtualRouterID=random.randrange(100, 250))])
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

        # replace (the image) and delete (one instance fewer), replacements and deletions listed first
        group = demo_group(1, name="cp", cluster=cluster)
        group["instance"]["image"] = "cplb/demo-node"
        project.write_stack_config(name, {**values, "instanceGroups": [group]})
        set_secret()
        mixed = summary(project, name)
        assert "**Replacements and deletions**" in mixed
        first_table = mixed.split("**Replacements and deletions**")[1].split("**Changes**")[0]
        assert "| delete | `incus:Instance` | `cp-2` | removed from the config |" in first_table
        assert "replace" in first_table and "`cp-1`" in first_table and "image" in first_table
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
