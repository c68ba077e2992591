"""`make status` reads the world live: a stopped backend shows as down."""

import os
import random
import subprocess
import sys

import pytest

from tests.helpers import ROOT, base_config, demo_group, incus, pulumi_stack

pytestmark = pytest.mark.integration


def test_status_shows_live_backend_state():
    cluster = f"s{random.randrange(16**5):05x}"
    values = base_config(instanceGroups=[demo_group(2, name="cp", cluster=cluster)],
                         loadBalancers=[{"name": "api", "cluster": cluster, "type": "lxc"}])
    with pulumi_stack(values) as (project, name, stack):
        stack.up(on_output=lambda _: None)
        env = {**os.environ, **project.env, "CPLB_PROJECT_DIR": project.dir}

        def status() -> str:
            r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "status"), name], env=env,
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            return r.stdout

        def row(text: str, backend: str) -> str:
            return next(line for line in text.splitlines() if line.strip().startswith(backend))

        before = status()
        assert "answers" in before
        assert "Exists=True  Ready=True  BackendsHealthy=True" in before, before
        assert row(before, f"{name}-cp-1").endswith("up") and row(before, f"{name}-cp-2").endswith("up")
        incus().set_state(f"{name}-cp-2", "stop", force=True)
        after = status()
        assert row(after, f"{name}-cp-2").endswith("down") and row(after, f"{name}-cp-1").endswith("up")
