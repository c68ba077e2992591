"""An `up` killed with SIGKILL in the middle of creating a balancer: the next `up` converges, with no orphan
and no duplicate (instances are named deterministically and adopted when they carry the stack's ownership keys)."""

import os
import signal

import pytest

from tests.helpers import instances_with_prefix, pulumi_stack, wait_for
from tests.reliability.interrupted import start_cli_up, three_node_lxc, up_converges

pytestmark = pytest.mark.integration


def plugins_in(directory: str) -> list[str]:
    """Command lines of the processes whose working directory is `directory` (language host, providers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == directory:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found.append(f.read().replace(b"\0", b" ").decode(errors="replace").strip())
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return [c for c in found if "pulumi up" not in c]


def test_sigkill_during_up_then_up_converges():
    with pulumi_stack(three_node_lxc("sigkill")) as (project, name, stack):
        proc = start_cli_up(project, name, capture=False)
        # Kill the CLI's process group once the first instances exist. The language host and the provider run in
        # process groups of their own: they must notice and end too, not linger re-parented to init.
        assert wait_for(lambda: len(instances_with_prefix(name)) >= 1, 60, 0.05)
        assert wait_for(lambda: plugins_in(project.dir), 10), "no plugin process found in the program directory"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        made_before = set(instances_with_prefix(name))
        assert wait_for(lambda: not plugins_in(project.dir), 10), \
            f"plugin processes outlived the killed CLI: {plugins_in(project.dir)}"

        # The killed CLI leaves the stack locked: `pulumi cancel` (scripts/stack does it by itself when the
        # locking process is gone), then the next `up`, refreshing first as `make up` does, converges.
        project.after_a_kill(name, stack)
        up_converges(stack, name, made_before)
        print(f"\nSIGKILL during up: {len(made_before)} instance(s) existed at the kill; the next up adopted them")
