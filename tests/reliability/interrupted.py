"""What the interrupted-`up` tests share: the stack they interrupt, a `pulumi up` run as its own CLI process, and
the check that the next `up` converges."""

from __future__ import annotations

import os
import subprocess

from tests.helpers import base_config, demo_group, http_get, instances_with_prefix, wait_for


def three_node_lxc(cluster: str) -> dict:
    """3 control-plane instances and one haproxy balancer: enough resources for an `up` to be cut mid-way."""
    return base_config(instanceGroups=[demo_group(3, name="cp", cluster=cluster)],
                       loadBalancers=[{"name": "api", "cluster": cluster, "type": "lxc"}])


def start_cli_up(project, name: str, *, capture: bool, env: dict | None = None) -> subprocess.Popen:
    """`pulumi up` as a CLI process in a session of its own, so a test can kill its group or wait for its output."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(["pulumi", "up", "--yes", "--skip-preview", "--non-interactive", "--stack", name],
                            cwd=project.dir, env={**os.environ, **project.env, **(env or {})}, stdout=out,
                            stderr=subprocess.STDOUT if capture else subprocess.DEVNULL, text=True,
                            start_new_session=True)


def up_converges(stack, name: str, made_before: set) -> dict:
    """The next `up` (refreshing first, as `make up` does) succeeds with exactly the stack's instances, nothing
    orphaned and nothing twice, and the balancer serves all three; returns the instances."""
    result = stack.up(on_output=lambda _: None, refresh=True)
    assert result.summary.result == "succeeded"
    after = instances_with_prefix(name)
    expected = {f"{name}-cp-{n}" for n in (1, 2, 3)} | {f"{name}-api-haproxy-1"}
    assert set(after) == expected, (made_before, set(after))
    host, port = result.outputs["loadBalancers"].value["api"]["endpoint"].rsplit(":", 1)
    assert wait_for(lambda: {http_get(host, int(port)) for _ in range(9)} ==
                    {f"{name}-cp-{n}" for n in (1, 2, 3)}, 20)
    return after
