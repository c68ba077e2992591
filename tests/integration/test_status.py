"""`make status` reads the world live: a stopped backend shows as down."""

import os
import random
import subprocess
import sys

import pytest

from tests.helpers import ROOT, base_config, demo_group, incus, pulumi_stack, wait_for

pytestmark = pytest.mark.integration


def incus_ipv6(name: str) -> str:
    """The instance's global IPv6 address on eth0, as Incus reports it now ('' while SLAAC has not run)."""
    state = (incus().get_instance(name) or {}).get("state") or {}
    for addr in (((state.get("network") or {}).get("eth0") or {}).get("addresses") or []):
        if addr.get("family") == "inet6" and addr.get("scope") == "global":
            return addr["address"]
    return ""


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
        # Only what the balancer balances: an IPv4-only balancer lists each backend once, by its IPv4 address,
        # though the instances have IPv6 addresses too (the bridge serves both).
        backends = stack.outputs()["loadBalancers"].value["api"]["backends"]
        if not all(b.get("address6") for b in backends):  # SLAAC came after the first `up` read them
            assert wait_for(lambda: all(incus_ipv6(b["name"]) for b in backends), 60)
            backends = stack.up(on_output=lambda _: None, refresh=True).outputs["loadBalancers"].value["api"]["backends"]
            before = status()
        for b in backends:
            assert b.get("address6"), b
            rows = [line for line in before.splitlines() if line.strip().startswith(b["name"] + " ")]
            assert len(rows) == 1 and b["address"] in rows[0] and b["address6"] not in rows[0], rows
        incus().set_state(f"{name}-cp-2", "stop", force=True)
        after = status()
        assert row(after, f"{name}-cp-2").endswith("down") and row(after, f"{name}-cp-1").endswith("up")
