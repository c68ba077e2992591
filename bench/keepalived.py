"""Benchmark of the `keepalived` strategy: failover time, N runs each (median, max), for a clean stop of the
holder, a crash of the holder (`incus stop --force`) and the API server down on the holder (track_script);
with advertIntervalSeconds 1 (VRRP v2) and 0.1 (VRRP v3). Time = from the event to the first answer on the VIP.
With advert 1 s also: the data path (wrk through VIP:6443 vs directly to one node's API server, same run), the
memory of keepalived + haproxy on a node (proportional set size), and the change cost: a fourth node joins the
control plane (its group's role label changes in the stack config) and the time from `up` start to VIP:6443
answering from it.
Run: `make bench` (or python bench/keepalived.py [--runs N] [--record]).
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

from bench.lxc import quiet, wrk  # noqa: E402
from bench.report import emit, traffic_arguments  # noqa: E402
from tests.helpers import (  # noqa: E402
    ProjectCopy, http_get, incus, service_down, service_up, unique_stack, vip_holders, wait_for,
)
from tests.integration.test_keepalived import config, settled  # noqa: E402


def measure(event, vip: str, nodes: list[str]) -> float:
    """From the start of the event (a clean stop takes as long as the instance's shutdown) to the first answer."""
    t0 = time.monotonic()
    event()
    ok = wait_for(lambda: http_get(vip, 6443, timeout=0.3) in nodes, 30, 0.02)
    return time.monotonic() - t0 if ok else float("nan")


def with_spare(values: dict, role: str) -> dict:
    """The keepalived stack plus a one-node group `spare` of the same image, in control-plane role or not."""
    cp = values["instanceGroups"][0]
    spare = {**cp, "name": "spare", "count": 1, "labels": {**cp["labels"], "user.cluster-role": role}}
    return {**values, "instanceGroups": [cp, spare]}


def node_memory_mib(node: str) -> float:
    """Proportional set size of keepalived and haproxy in `node` (shared pages split among the processes)."""
    script = ("for p in $(pidof keepalived haproxy); do awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup; done")
    out = subprocess.run(["incus", "exec", node, "--", "sh", "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    return sum(int(kb) for kb in out) / 1024


def extras(project: ProjectCopy, stack, name: str, values: dict, vip: str, nodes: list[str], seconds: int,
           connections: int) -> list[tuple[str, str]]:
    """Data path, node footprint and change cost, on the running advert-1 stack."""
    direct = incus().get_instance(nodes[0])["state"]["network"]["eth0"]["addresses"]
    direct = next(a["address"] for a in direct if a["family"] == "inet" and a["address"] != vip)
    rps_vip, p99_vip = wrk(f"http://{vip}:6443/", seconds, connections)
    rps_direct, p99_direct = wrk(f"http://{direct}:6443/", seconds, connections)
    holder = wait_for(lambda: settled(name, vip), 60)
    rows = [
        (f"data path: through VIP:6443 (keepalived holder, haproxy on it), wrk -c{connections} {seconds}s",
         f"{rps_vip:,.0f} req/s, p99 {p99_vip:.2f} ms"),
        ("the same, directly to one node's API server", f"{rps_direct:,.0f} req/s, p99 {p99_direct:.2f} ms"),
        ("ratio through / direct (req/s)", f"{rps_vip / rps_direct:.2f}"),
        ("memory per node: keepalived + haproxy (PSS), holder / backup",
         f"{node_memory_mib(holder):.1f} MiB / {node_memory_mib(next(n for n in nodes if n != holder)):.1f} MiB"),
    ]
    spare = f"{name}-spare-1"
    project.write_stack_config(name, with_spare(values, "control-plane"))
    t0 = time.monotonic()
    stack.up(on_output=quiet)
    t_up = time.monotonic() - t0
    joined = wait_for(lambda: spare in {http_get(vip, 6443, timeout=0.5) for _ in range(8)}, 60, 0.02)
    t_serving = time.monotonic() - t0
    rows += [
        ("change: a 4th node joins (labels, keepalived.conf and haproxy.cfg on 4 nodes): `up` time",
         f"{t_up:.2f} s"),
        ("change: `up` start to VIP:6443 answering from the new node",
         f"{t_serving:.2f} s" if joined else "not within 60 s"),
    ]
    return rows


def run(project: ProjectCopy, advert: float, runs: int, seconds: int = 10, connections: int = 32,
        with_extras: bool = False) -> list[tuple[str, str]]:
    name = unique_stack("bk")
    vip = f"198.18.10.{random.randrange(20, 90)}"
    values = config(f"bk{random.randrange(999)}", vip, random.randrange(100, 250), advert=advert)
    if with_extras:
        values = with_spare(values, "spare")
    stack = project.stack(name, values)
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
                wait_for(lambda: len(vip_holders(name, vip)) == 1 and
                         all(incus().get_instance(n)["status"] == "Running" for n in nodes), 60)
        v = f"v{3 if not float(advert).is_integer() else 2}"
        for kind, times in results.items():
            rows.append((f"{kind}, advert {advert:g} s (VRRP {v}), {runs} runs: median / max",
                         f"{statistics.median(times):.2f} s / {max(times):.2f} s"))
        if with_extras:
            rows += extras(project, stack, name, values, vip, nodes, seconds, connections)
    finally:
        stack.destroy(on_output=quiet)
    return rows


def main() -> int:
    args = traffic_arguments("--runs")
    project = ProjectCopy()
    try:
        rows = (run(project, 1, args.runs, args.seconds, args.connections, with_extras=True)
                + run(project, 0.1, args.runs))
    finally:
        project.cleanup()
    rows.append(("for comparison: kube-vip's default leader-election lease", "15 s (5 s in its static pod example)"))
    emit("keepalived strategy", rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
