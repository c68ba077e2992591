"""Benchmark of the `lxc` strategy on this machine's real incusd, haproxy and Pulumi CLI.

Prints one Markdown table of figures (and appends it, dated, to docs/benchmarks.md with --record):
- `up` time: create, a backend change, a no-op `up`; and the time from `up` start to the new backend set serving;
- data path: requests/s and p99 latency through the balancer vs directly to one backend (wrk, same run);
- HA failover: time from `incus stop --force` of the VIP holder to the first answer, over N runs;
- footprint: memory of a balancer instance.
Traffic goes only to instances on the project's bridge. Run: `make bench` (or python bench/lxc.py).
"""

from __future__ import annotations

import os
import random
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import emit, traffic_arguments  # noqa: E402
from tests.helpers import (  # noqa: E402
    ProjectCopy, base_config, http_get, incus, launch_external, set_label, unique_stack, vip_holders, wait_for,
)


def quiet(_):
    pass


def timed(fn):
    t0 = time.monotonic()
    result = fn()
    return time.monotonic() - t0, result


def wrk(url: str, seconds: int, connections: int) -> tuple[float, float]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def lb_config(cluster: str, **lxc) -> dict:
    return base_config(loadBalancers=[{
        "name": "api", "cluster": cluster, "type": "lxc",
        "healthCheck": {"mode": "tcp", "intervalSeconds": 1, "rise": 1, "fall": 2},
        "lxc": {"replicas": 1, **lxc},
    }])


def main() -> int:
    args = traffic_arguments()

    cluster = f"b{random.randrange(16**6):06x}"
    names = [f"{cluster}-cp-{n}" for n in (1, 2, 3)]
    labels = {"user.cluster-name": cluster, "user.cluster-role": "control-plane"}
    rows: list[tuple[str, str]] = []
    project = ProjectCopy()
    stacks = []
    try:
        addrs = [launch_external(n, labels) for n in names]

        # --- single balancer: up times and data path ---
        name = unique_stack("bn")
        stack = project.stack(name, lb_config(cluster))
        stacks.append(stack)
        t_create, up = timed(lambda: stack.up(on_output=quiet))
        ep = up.outputs["loadBalancers"].value["api"]["endpoint"]
        host, port = ep.rsplit(":", 1)
        wait_for(lambda: len({http_get(host, int(port)) for _ in range(6)}) == 3, 20)
        t_noop, _ = timed(lambda: stack.up(on_output=quiet))

        set_label(names[2], "user.cluster-role", "retired")
        t0 = time.monotonic()
        stack.up(on_output=quiet)
        t_change = time.monotonic() - t0
        wait_for(lambda: names[2] not in {http_get(host, int(port)) for _ in range(6)}, 20, interval=0.01)
        t_serving = time.monotonic() - t0
        set_label(names[2], "user.cluster-role", "control-plane")
        stack.up(on_output=quiet)
        wait_for(lambda: len({http_get(host, int(port)) for _ in range(6)}) == 3, 20)

        rps_direct, p99_direct = wrk(f"http://{addrs[0]}:6443/", args.seconds, args.connections)
        rps_lb, p99_lb = wrk(f"http://{ep}/", args.seconds, args.connections)
        lb_inst = incus().get_instance(f"{name}-api-haproxy-1")
        mem_mib = ((lb_inst.get("state") or {}).get("memory") or {}).get("usage", 0) / 2**20

        rows += [
            ("`up` creating the balancer (1 haproxy instance, 3 backends)", f"{t_create:.2f} s"),
            ("no-op `up`", f"{t_noop:.2f} s"),
            ("`up` after a backend change (file update + reload)", f"{t_change:.2f} s"),
            ("`up` start to the new backend set serving", f"{t_serving:.2f} s"),
            (f"direct to one backend: req/s, p99 (wrk -c{args.connections}, {args.seconds}s)",
             f"{rps_direct:,.0f} req/s, p99 {p99_direct:.2f} ms"),
            ("through the balancer: req/s, p99", f"{rps_lb:,.0f} req/s, p99 {p99_lb:.2f} ms"),
            ("balancer / direct throughput ratio", f"{rps_lb / rps_direct:.2f}"),
            ("balancer instance memory (haproxy + busybox init)", f"{mem_mib:.1f} MiB"),
        ]

        # --- HA pair: failover time ---
        vip = f"198.18.10.{random.randrange(20, 90)}"
        ha_name = unique_stack("bh")
        ha = project.stack(ha_name, lb_config(cluster, replicas=2, vip=vip, virtualRouterID=random.randrange(100, 250)))
        stacks.append(ha)
        ha.up(on_output=quiet)
        times = []
        for _ in range(args.failovers):
            def settled():
                first = vip_holders(ha_name, vip)
                time.sleep(2)
                return first[0] if len(first) == 1 and vip_holders(ha_name, vip) == first else None

            holder = wait_for(settled, 60)
            wait_for(lambda: http_get(vip, 6443) in names, 20)
            incus().set_state(holder, "stop", force=True)
            t0 = time.monotonic()
            wait_for(lambda: http_get(vip, 6443, timeout=0.3) in names, 20, interval=0.02)
            times.append(time.monotonic() - t0)
            incus().set_state(holder, "start")
            ha.up(on_output=quiet)  # converge: nothing to do but check
        rows += [
            (f"HA failover, {len(times)} runs: median / max",
             f"{statistics.median(times):.2f} s / {max(times):.2f} s"),
        ]
    finally:
        for stack in stacks:
            try:
                stack.destroy(on_output=quiet)
            except Exception as exc:  # noqa: BLE001 - report and go on cleaning
                print(f"destroy failed: {exc}", file=sys.stderr)
        for n in names:
            incus().delete_instance(n)
        project.cleanup()

    emit("lxc strategy", rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
