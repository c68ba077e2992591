"""`make up` as a newcomer sees it: the dev stack's own config (under a stack and cluster names of its own, so a dev
stack on this machine is never touched), run by scripts/stack as the Makefile does."""

import os
import random
import re
import subprocess

import pytest
import yaml

from tests import leftovers
from tests.helpers import ROOT, ProjectCopy, embedded_default, incus, instances_with_prefix, unique_stack

pytestmark = pytest.mark.integration


def dev_config(cluster: str) -> dict:
    # `demo` names the cluster, the balancers and the groups, and is in their labels; not the image names.
    return embedded_default(lambda text: re.sub(r"(?<![/\w])demo(?=[-\s:]|$)", cluster, text, flags=re.M))


def test_make_up_ends_with_a_short_report():
    cluster = f"mu{random.randrange(16**4):04x}"
    values = dev_config(cluster)
    project = ProjectCopy()
    name = unique_stack("mu")
    leftovers.register(name, project.dir)
    project.write_stack_config(name, values)
    env = {**os.environ, **project.env, "CPLB_PROJECT_DIR": project.dir}
    try:
        run = subprocess.run([os.path.join(ROOT, "scripts", "stack"), "up", name], env=env, capture_output=True,
                             text=True, timeout=1800)
        out = run.stdout
        assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
        lines = out.splitlines()
        assert len(lines) < 40, f"{len(lines)} lines:\n{out}"
        # One row per balancer, after the header: its endpoint, Ready and BackendsHealthy as the last read saw them.
        header = next(i for i, line in enumerate(lines) if line.split()[:5] == ["balancer", "endpoint", "Ready",
                                                                               "BackendsHealthy", "mode"])
        rows = {line.split()[0]: line for line in lines[header + 1:header + 1 + len(values["loadBalancers"])]}
        assert set(rows) == {lb["name"] for lb in values["loadBalancers"]}, out
        assert all(" True " in row and re.search(r"True \((\d+) of \1\)", row) for row in rows.values()), out
        assert f"{cluster}: kubectl get --raw /readyz -> ok" in out, out
        assert any(line.startswith("try: export KUBECONFIG=") for line in lines), out
        assert "make outputs" in lines[-1], out
        assert "BEGIN" not in out and "PRIVATE KEY" not in out  # no kubeconfig or key on the terminal
    finally:
        try:
            project.stack(name, values).destroy(on_output=lambda _: None)
        finally:
            for inst in instances_with_prefix(name):
                incus().delete_instance(inst)
            project.cleanup()
            leftovers.unregister(name)
            kubeconfig = os.path.join(ROOT, ".state", "kubeconfig", f"{name}-{cluster}")
            if os.path.exists(kubeconfig):
                os.unlink(kubeconfig)
