"""Benchmark of the `keepalived` strategy: failover time, N runs each (median, max), for a clean stop of the
holder, a crash of the holder (`incus stop --force`) and the API server down on the holder (track_script);
with advertIntervalSeconds 1 (VRRP v2) and 0.1 (VRRP v3). Time = from the event to the first answer on the VIP.
Run: `make bench` (or python bench/keepalived.py [--runs N] [--record]).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.lxc import quiet  # noqa: E402
from bench.report import emit  # noqa: E402
from tests.helpers import ProjectCopy, http_get, incus, service_down, service_up, unique_stack, wait_for  # noqa: E402
from tests.integration.test_keepalived import config, holders, settled  # noqa: E402


def measure(event, vip: str, nodes: list[str]) -> float:
    """From the start of the event (a clean stop takes as long as the instance's shutdown) to the first answer."""
    t0 = time.monotonic()
    event()
    ok = wait_for(lambda: http_get(vip, 6443, timeout=0.3) in nodes, 30, 0.02)
    return time.monotonic() - t0 if ok else float("nan")


def run(project: ProjectCopy, advert: float, runs: int) -> list[tuple[str, str]]:
    name = unique_stack("bk")
    vip = f"198.18.10.{random.randrange(20, 90)}"
    stack = project.stack(name, config(f"bk{random.randrange(999)}", vip, random.randrange(100, 250), advert=advert))
    rows = []
    try:
        stack.up(on_output=quiet)
        nodes = [f"{name}-cp-{n}" for n in (1, 2, 3)]
        results: dict[str, list[float]] = {"clean stop": [], "crash (stop --force)": [], "API server down": []}
        for _ in range(runs):
            for kind in results:
                holder = wait_for(lambda: settled(name, vip), 60)
                wait_for(lambda: http_get(vip, 6443) in nodes, 20)
                if kind == "clean stop":
                    results[kind].append(measure(lambda: incus().set_state(holder, "stop", timeout=10), vip, nodes))
                    incus().set_state(holder, "start")
                elif kind == "crash (stop --force)":
                    results[kind].append(measure(lambda: incus().set_state(holder, "stop", force=True), vip, nodes))
                    incus().set_state(holder, "start")
                else:
                    results[kind].append(measure(lambda: service_down(holder, "apiserver"), vip, nodes))
                    service_up(holder, "apiserver")
                wait_for(lambda: len(holders(name, vip)) == 1 and
                         all(incus().get_instance(n)["status"] == "Running" for n in nodes), 60)
        v = f"v{3 if not float(advert).is_integer() else 2}"
        for kind, times in results.items():
            rows.append((f"{kind}, advert {advert:g} s (VRRP {v}), {runs} runs: median / max",
                         f"{statistics.median(times):.2f} s / {max(times):.2f} s"))
    finally:
        stack.destroy(on_output=quiet)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    project = ProjectCopy()
    try:
        rows = run(project, 1, args.runs) + run(project, 0.1, args.runs)
    finally:
        project.cleanup()
    rows.append(("for comparison: kube-vip's default leader-election lease", "15 s (5 s in its static pod example)"))
    emit("keepalived strategy", rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
