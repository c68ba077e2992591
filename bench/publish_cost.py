"""What publishing into the cluster (`kubernetes.publish`) adds to `up`: the dev stack's shape (real 3-node control
plane, 2 balancers), a no-op `up` with publishing on and with it off, in the same run (N each, median).
Run: python bench/publish_cost.py [--runs N] [--record]."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import emit  # noqa: E402
from tests.helpers import pulumi_stack  # noqa: E402
from tests.integration.test_control_plane import dev_stack_values  # noqa: E402


def quiet(_):
    pass


def timed_ups(stack, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.monotonic()
        stack.up(on_output=quiet)
        out.append(time.monotonic() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    values = dev_stack_values()
    rows = []
    with pulumi_stack(values, prefix="pc") as (project, name, stack):
        t0 = time.monotonic()
        stack.up(on_output=quiet)
        rows.append(("first `up` of the dev stack's shape, publishing on", f"{time.monotonic() - t0:.1f} s"))
        on = timed_ups(stack, args.runs)
        project.write_stack_config(name, {**values, "kubernetes": {"publish": False}})
        t0 = time.monotonic()
        stack.up(on_output=quiet)
        rows.append(("`up` that turns publishing off (objects and CRDs deleted)", f"{time.monotonic() - t0:.1f} s"))
        off = timed_ups(stack, args.runs)
    rows += [(f"no-op `up`, publishing on ({args.runs} runs): median", f"{statistics.median(on):.1f} s"),
             (f"no-op `up`, publishing off ({args.runs} runs): median", f"{statistics.median(off):.1f} s"),
             ("what publishing adds to a no-op `up`", f"{statistics.median(on) - statistics.median(off):+.1f} s "
              f"({statistics.median(on) / statistics.median(off):.2f}×)")]
    emit("publishing into the cluster: cost in `up`", rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
