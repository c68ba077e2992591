"""incusd stopped in the middle of an `up`: the `up` fails with a clear error naming Incus, and once incusd is back
the next `up` converges (instances made before the stop are adopted, nothing is made twice)."""

import os
import signal
import subprocess
import time

import pytest

from tests.helpers import ROOT, incus, instances_with_prefix, pulumi_stack, wait_for
from tests.reliability.interrupted import start_cli_up, three_node_lxc, up_converges

pytestmark = [pytest.mark.integration, pytest.mark.alone]


def incusd_pid() -> int:
    r = subprocess.run(["pgrep", "-f", "^/usr/libexec/incus/incusd --group"], capture_output=True, text=True)
    return int(r.stdout.split()[0]) if r.stdout.strip() else 0


def stop_incusd() -> None:
    """SIGTERM: incusd shuts down and leaves the instances running (as `systemctl stop incus` would)."""
    pid = incusd_pid()
    assert pid, "incusd is not running"
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: incusd_pid() == 0, 60, 0.1), "incusd did not stop"


def start_incusd() -> None:
    subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh && start_incusd"], check=True,
                   stdout=subprocess.DEVNULL)


def test_incusd_stopped_during_up_then_up_converges():
    with pulumi_stack(three_node_lxc("incusdown")) as (project, name, stack):
        proc = start_cli_up(project, name, capture=True)
        try:
            assert wait_for(lambda: len(instances_with_prefix(name)) >= 1, 60, 0.05)
            stop_incusd()
            stopped_at = time.monotonic()
            out, _ = proc.communicate(timeout=300)
            failed_after = time.monotonic() - stopped_at
        finally:
            if not incusd_pid():
                start_incusd()
        assert proc.returncode != 0, out
        # The error says what is wrong, in words: Incus could not be reached.
        assert "cannot reach Incus" in out or "Incus is unavailable" in out, out[-3000:]
        assert "run `up` again once incusd answers" in out
        made_before = set(instances_with_prefix(name))

        after = up_converges(stack, name, made_before)
        assert all(i["status"] == "Running" for i in after.values())
        print(f"\nincusd stopped during up: up failed {failed_after:.1f}s later naming Incus; "
              f"{len(made_before)} instance(s) existed; the next up converged")
        assert incus().get_instance(f"{name}-cp-1") is not None
