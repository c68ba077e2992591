"""`oci` on the nested Incus 7 cluster: what a client sees when an API server behind it crashes, and when a member's
server goes away with one of them. The harness's prober (bench/prober.py: a new CA-verified TLS connection every
10 ms, `GET /readyz`, 200 ms timeout) runs against the endpoint of stacks/Pulumi.oci.yaml.

Set-up (as the stack file says): scripts/incus7-up --cluster; scripts/incus7-credentials oci; make up STACK=oci.
Run: python bench/oci_failover.py [--runs N] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.failover import Prober, observe, outage  # noqa: E402
from bench.report import emit  # noqa: E402
from tests import incus7  # noqa: E402
from tests.k8s import kubeconfig_ca  # noqa: E402


def stack_outputs(stack: str) -> dict:
    run = subprocess.run([os.path.join(ROOT, "scripts", "stack"), "outputs", stack], capture_output=True, text=True,
                         check=True)
    return json.loads(run.stdout)


def kubeconfig(stack: str, cluster: str) -> str:
    run = subprocess.run(["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack, "clusters"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(run.stdout)[cluster]["kubeconfig"]


def summary(rows: list[dict]) -> str:
    outages = [r["outage"] for r in rows]
    failed = statistics.median(r["failed"] for r in rows)
    last = [r["last_failure"] for r in rows if r["last_failure"] is not None]
    tail = f", last {max(last):.2f} s after" if last else ""
    return f"{statistics.median(outages):.2f} / {max(outages):.2f} s, {failed:g} failed{tail} ({len(rows)} runs)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stack", default="oci")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    env = incus7.up(cluster=True)
    out = stack_outputs(args.stack)
    lb_name, lb = next(iter(out["loadBalancers"].items()))
    cluster = next(iter(out["clusters"]))
    host, port = lb["endpoint"].rsplit(":", 1)
    backends = out["clusters"][cluster]["controlPlane"]
    client = incus7.client(env)
    prober = Prober(host, int(port), kubeconfig_ca(kubeconfig(args.stack, cluster)))
    crashes: list[dict] = []
    try:
        time.sleep(2)
        for run in range(args.runs):
            victim = backends[run % len(backends)]
            t0 = time.monotonic()
            client.exec(victim, ["killall", "-KILL", "kube-apiserver"])  # busybox init restarts it
            end = observe(prober, t0, max_seconds=30)
            crashes.append(outage(prober.probes(t0 - 1), t0, end))
            print(f"   API server SIGKILL on {victim}: {crashes[-1]}", flush=True)
            time.sleep(15)  # until it is back and ready (readyz, rise 1)
    finally:
        prober.stop()
    rows = [(f"oci ({lb_name}, Incus 7 cluster): an API server SIGKILLed behind it, median / max outage",
             summary(crashes))]
    emit("oci on the nested Incus 7 cluster: backend crash as a client sees it", rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
