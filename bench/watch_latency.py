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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    rows = measure("lxc", args.runs)
    subprocess.run([os.path.join(ROOT, "scripts", "ovn-up")], check=True, stdout=subprocess.DEVNULL)
    try:
        rows += measure("ovn", args.runs)
    finally:
        subprocess.run([os.path.join(ROOT, "scripts", "ovn-down")], check=False, stdout=subprocess.DEVNULL)
    emit("make watch: median / max latency without anyone running `up`", rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
