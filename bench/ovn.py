"""Benchmark of the `ovn` strategy on a real local OVN (userspace Open vSwitch): bring-up time, `up` times,
requests/s through the OVN balancer vs directly to one backend (same run), and time from a backend's API server
stopping to every request landing on the healthy ones (OVN health check), over N runs.
Run: `make bench` (or python bench/ovn.py [--record]).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.lxc import quiet, timed, wrk  # noqa: E402
from bench.report import emit, traffic_arguments  # noqa: E402
from tests.helpers import ProjectCopy, http_get, service_down, service_up, unique_stack, wait_for  # noqa: E402
from tests.integration.test_ovn_oci_external import ovn_stack_config  # noqa: E402


def main() -> int:
    args = traffic_arguments()

    t_ovn, _ = timed(lambda: subprocess.run([os.path.join(ROOT, "scripts", "ovn-up")], check=True,
                                            capture_output=True))
    project = ProjectCopy()
    name = unique_stack("bo")
    listen = f"198.18.20.{random.randrange(200, 250)}"
    stack = project.stack(name, ovn_stack_config(f"bo{random.randrange(999)}", listen, count=3))
    rows = [("OVN bring-up (scripts/ovn-up: OVS, northd, controller, networks)", f"{t_ovn:.1f} s")]
    try:
        t_create, up = timed(lambda: stack.up(on_output=quiet))
        names = [f"{name}-cp-{n}" for n in (1, 2, 3)]
        addrs = up.outputs["instanceGroups"].value["cp"]["addresses"]
        wait_for(lambda: {http_get(listen, 6443) for _ in range(30)} >= set(names), 30)
        t_noop, _ = timed(lambda: stack.up(on_output=quiet))
        rps_direct, p99_direct = wrk(f"http://{addrs[0]}:6443/", args.seconds, args.connections)
        rps_lb, p99_lb = wrk(f"http://{listen}:6443/", args.seconds, args.connections)
        times = []
        for i in range(args.failovers):
            victim = names[i % 3]
            service_down(victim, "apiserver")
            t0 = time.monotonic()
            ok = wait_for(lambda: all(http_get(listen, 6443, timeout=0.5) not in (victim, None) for _ in range(10)),
                          60, 0.05)
            times.append(time.monotonic() - t0 if ok else float("nan"))
            service_up(victim, "apiserver")
            wait_for(lambda: victim in {http_get(listen, 6443) for _ in range(30)}, 60)
        rows += [
            ("`up` creating 3 backends + the OVN balancer", f"{t_create:.2f} s"),
            ("no-op `up`", f"{t_noop:.2f} s"),
            (f"direct to one backend: req/s, p99 (wrk -c{args.connections}, {args.seconds}s)",
             f"{rps_direct:,.0f} req/s, p99 {p99_direct:.2f} ms"),
            ("through the OVN balancer: req/s, p99", f"{rps_lb:,.0f} req/s, p99 {p99_lb:.2f} ms"),
            ("OVN balancer / direct throughput ratio", f"{rps_lb / rps_direct:.2f}"),
            (f"backend API server down to all requests healthy, {len(times)} runs: median / max",
             f"{statistics.median(times):.2f} s / {max(times):.2f} s"),
        ]
    finally:
        stack.destroy(on_output=quiet)
        project.cleanup()
        subprocess.run([os.path.join(ROOT, "scripts", "ovn-down")], check=False, capture_output=True)

    emit("ovn strategy", rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
