"""`make watch` latency, for `lxc` and `ovn`: from `incus start` of a new instance with the cluster's labels to its
first answer through the endpoint, and from `incus stop --force` of it to the balancer's config no longer naming it
(health checks stop traffic sooner; this is about the config). The loop runs as `make watch` runs it; nobody runs
`up`. N runs each (median, max).
Run: python bench/watch_latency.py [--runs N] [--record]."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import emit  # noqa: E402
from tests.helpers import incus, launch_external, pulumi_stack, wait_for  # noqa: E402
from tests.integration.test_watch import Strategy, Watch  # noqa: E402


def quiet(_):
    pass


def measure(kind: str, runs: int) -> list[tuple[str, str]]:
    import random

    s = Strategy(kind, f"bw{random.randrange(16**4):04x}")
    joins, leaves = [], []
    with pulumi_stack(s.values(), prefix="bw") as (project, name, stack):
        up = stack.up(on_output=quiet)
        watch = Watch(project, name)
        try:
            assert wait_for(watch.idle, 180)
            for n in range(runs):
                outside = f"{name}-x{n}"
                # Created stopped, then started: the clock starts at `incus start`, as the target says.
                client = incus()
                launch_external(outside, s.labels, image=s.image, network=s.network or "cplbbr0")
                client.set_state(outside, "stop", force=True)
                assert wait_for(lambda: not s.served(name, outside) and watch.idle(), 120, 0.2), watch.text()
                t0 = time.monotonic()
                client.set_state(outside, "start")
                assert wait_for(lambda: s.answers_from(name, up, outside), 120, 0.05), watch.text()
                joins.append(time.monotonic() - t0)
                assert wait_for(watch.idle, 120)
                t0 = time.monotonic()
                client.set_state(outside, "stop", force=True)
                assert wait_for(lambda: not s.served(name, outside), 120, 0.05), watch.text()
                leaves.append(time.monotonic() - t0)
                client.delete_instance(outside)
                print(f"{kind} run {n + 1}: served {joins[-1]:.2f} s after start, out of the config "
                      f"{leaves[-1]:.2f} s after stop", flush=True)
        finally:
            watch.stop()
    return [(f"{kind}: `incus start` of a labelled instance -> first answer through the endpoint ({runs} runs)",
             f"{statistics.median(joins):.2f} / {max(joins):.2f} s"),
            (f"{kind}: `incus stop --force` -> the config no longer names it ({runs} runs)",
             f"{statistics.median(leaves):.2f} / {max(leaves):.2f} s")]


def measure_embedded_default(runs: int) -> list[tuple[str, str]]:
    """The embedded default (stacks/Pulumi.dev.yaml: a real control plane, workers, two lxc balancers, publishing
    on) under its own names: an instance with the control-plane labels launched by hand -> in the API balancer's
    haproxy.cfg; deleted as soon as it is there (its events come while the watch finishes the first reconcile) -> out
    of haproxy.cfg, and out of the stack outputs."""
    import random

    from tests.integration.test_make_up import dev_config

    cluster = f"bd{random.randrange(16**4):04x}"
    rows: list[tuple[str, str]] = []
    with pulumi_stack(dev_config(cluster), prefix="bd") as (project, name, stack):
        stack.up(on_output=quiet)
        # The watch as it runs now, then as it ran before (each `up` waiting for new backends' first checks), on
        # the same stack in the same run.
        medians = []
        for label, extra in (("status read at once", ()), ("status waits for first checks", ("--status-wait",))):
            found, median_out = embedded_default_runs(project, name, stack, cluster, runs, label, extra)
            rows += found
            medians.append(median_out)
    rows.append(("embedded default: delete -> out of haproxy.cfg, status read at once / waiting (medians)",
                 f"{medians[0]:.2f} / {medians[1]:.2f} s = **{medians[0] / medians[1]:.2f}**"))
    return rows


def embedded_default_runs(project, name: str, stack, cluster: str, runs: int, label: str,
                          extra) -> tuple[list, float]:
    config_in, config_out, outputs_out = [], [], []
    watch = Watch(project, name, *extra)
    holder = f"{name}-{cluster}-api-haproxy-1"
    labels = {"user.cluster-name": cluster, "user.cluster-role": "control-plane"}

    def in_config(instance: str) -> bool:
        rc, out, _ = incus().exec(holder, ["cat", "/etc/haproxy/haproxy.cfg"])
        return rc == 0 and f"server {instance} " in out

    def in_outputs(instance: str) -> bool:
        backends = stack.outputs()["loadBalancers"].value[f"{cluster}-api"]["backends"]
        return any(b.get("name") == instance for b in backends)

    try:
        assert wait_for(watch.idle, 180)
        for n in range(runs):
            outside = f"{name}-x{n}"
            t0 = time.monotonic()
            launch_external(outside, labels)
            assert wait_for(lambda: in_config(outside), 120, 0.05), watch.text()
            config_in.append(time.monotonic() - t0)
            t0 = time.monotonic()
            incus().delete_instance(outside)
            assert wait_for(lambda: not in_config(outside), 120, 0.05), watch.text()
            config_out.append(time.monotonic() - t0)
            assert wait_for(lambda: not in_outputs(outside), 120, 0.2), watch.text()
            outputs_out.append(time.monotonic() - t0)
            print(f"embedded default ({label}) run {n + 1}: in the config {config_in[-1]:.2f} s after the launch; "
                  f"deleted at once: out of the config {config_out[-1]:.2f} s, out of the outputs "
                  f"{outputs_out[-1]:.2f} s", flush=True)
            assert wait_for(watch.idle, 120)
    finally:
        watch.stop()
    return [(f"embedded default, {label}: launch of a labelled instance -> in haproxy.cfg ({runs} runs)",
             f"{statistics.median(config_in):.2f} / {max(config_in):.2f} s"),
            (f"embedded default, {label}: its delete, while the watch finishes that reconcile -> out of haproxy.cfg",
             f"{statistics.median(config_out):.2f} / {max(config_out):.2f} s"),
            (f"embedded default, {label}: the same delete -> out of the stack outputs",
             f"{statistics.median(outputs_out):.2f} / {max(outputs_out):.2f} s")], statistics.median(config_out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--only", choices=["lxc", "ovn", "default"], help="one cell only")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rows: list[tuple[str, str]] = []
    if args.only in (None, "default"):
        rows += measure_embedded_default(args.runs)
    if args.only in (None, "lxc"):
        rows += measure("lxc", args.runs)
    if args.only in (None, "ovn"):
        subprocess.run([os.path.join(ROOT, "scripts", "ovn-up")], check=True, stdout=subprocess.DEVNULL)
        try:
            rows += measure("ovn", args.runs)
        finally:
            subprocess.run([os.path.join(ROOT, "scripts", "ovn-down")], check=False, stdout=subprocess.DEVNULL)
    emit("make watch: median / max latency without anyone running `up`", rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
