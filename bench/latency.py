"""The latency a balancer adds, at a fixed request rate, on the real control plane (3 × etcd + kube-apiserver).

The load generator is vegeta (built from Go modules by `scripts/setup --bench`): a constant-rate generator (it
sends at the rate whether or not earlier requests have answered), so a slow balancer shows as latency, not as a
lower rate. Requests: HTTPS `GET /version` (anonymous, TLS verified against the cluster CA), for 10 s per cell
after a 2 s warm-up, at 200, 1000 and 5000 requests/s,
- on kept-alive connections (HTTP/2, one connection multiplexed: what client-go does), then on kept-alive HTTP/1.1
  ones (a pool, one request at a time per connection), then
- on new ones (`-keepalive=false -http2=false`: a TCP and TLS handshake per request, as curl or a fresh kubectl
  does); a rate at which the API server alone fails more than 1% of the requests is reported as saturated,
through each strategy and directly to one API server, in the same run (each cell from a settled server).
Printed: p50 / p99 / p99.9, errors, and the
added latency (through − direct) per strategy, rate and connection mode; then the maximum throughput (rate 0,
kept-alive) through each strategy as a ratio to direct. A control: beside the first strategy, each direct cell is
measured twice (A/A); their difference is the noise of the machine, the bound below which an added figure means
nothing here.

CPUs: the machine has few. vegeta runs on CPU 0 (`taskset`); the balancer's own instances (lxc's haproxy pair,
dns's nginx nodes) are pinned to CPU 1 (`limits.cpu: 1-1`), so the load generator and the balancer do not share a
CPU; the control plane is not pinned (pinned to CPU 0 with vegeta, the API servers starve: direct p99 at 200 req/s
went from 24 to 47 ms). `keepalived` has no balancer instance: its haproxy runs on the control-plane nodes, which
float over both CPUs (said in the table). `--no-pin` pins nothing.

Run: python bench/latency.py [--seconds N] [--rates 200,1000,5000] [--modes h2,h1,new] [--only lxc,keepalived,dns]
[--no-control] [--record]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.failover import Bench, Strategy, control_plane, dns_strategy  # noqa: E402
from bench.report import emit  # noqa: E402
from tests.helpers import TOOLS_BIN, local_dns_server  # noqa: E402

VEGETA = os.path.join(TOOLS_BIN, "vegeta")
GENERATOR_CPU, BALANCER_CPU = "0", "1-1"
WARMUP = 2.0
PIN = {"generator": (os.cpu_count() or 1) > 1}


def strategies(pinned: bool) -> list[Strategy]:
    """The strategies whose data path is measured (kube-vip's is direct: the VIP is on an API server)."""
    limits = {"limits": {"cpu": BALANCER_CPU}} if pinned else {}
    vip = f"198.18.10.{random.randrange(20, 90)}"
    lxc = Strategy("lxc ×2", {"type": "lxc", "lxc": {"replicas": 2, "vip": vip, "virtualRouterID":
                                                     random.randrange(100, 250), "instanceSpec": {
                                                         "image": "cplb/haproxy", **limits}}}, "vrrp", vip)
    vip2 = f"198.18.10.{random.randrange(20, 90)}"
    while vip2 == vip:
        vip2 = f"198.18.10.{random.randrange(20, 90)}"
    keepalived = Strategy("keepalived", {"type": "keepalived", "keepalived": {
        "mode": "userspace", "vrrpInstances": [{"virtualIPs": [f"{vip2}/24"],
                                                "virtualRouterID": random.randrange(100, 250)}]}}, "vrrp", vip2)
    return [lxc, keepalived]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


@dataclass(frozen=True)
class Cell:
    """One vegeta run."""

    p50: float  # ms
    p99: float
    p999: float
    requests: int
    errors: int
    rate: float  # successes per second
    error: str = ""  # the commonest error vegeta reported, with its count


#: Connection modes: kept-alive HTTP/2 (one connection multiplexed, what client-go does), kept-alive HTTP/1.1 (a
#: pool of connections, one request at a time on each), and a new connection (TCP and TLS handshake) per request.
MODES = {"h2": ("kept-alive (HTTP/2)", []),
         # A fixed pool, opened during the warm-up: vegeta otherwise adds a worker (a new connection, a TLS
         # handshake the API server pays for) whenever answers slow down, and at 1000 req/s that feedback alone
         # tipped the balanced path into timeouts while the direct one, a little faster, never started it.
         "h1": ("kept-alive (HTTP/1.1, a pool of 64)", ["-http2=false", "-workers=64", "-max-workers=64"]),
         "new": ("new connections", ["-keepalive=false", "-http2=false"])}


def attack(url: str, ca_file: str, rate: int, seconds: float, mode: str,
           connect_to: list[str] = ()) -> Cell:
    flags = [f"-rate={rate}/s" if rate else "-rate=0", f"-duration={seconds + WARMUP}s", "-timeout=2s",
             f"-root-certs={ca_file}", *[f"-connect-to={c}" for c in connect_to], *MODES[mode][1]]
    if not rate:
        flags += ["-max-workers=64"]
    taskset = ["taskset", "-c", GENERATOR_CPU] if PIN["generator"] else []
    attack_proc = subprocess.Popen([*taskset, VEGETA, "attack", *flags], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE)
    # CSV rows: unix time (ns), HTTP code, latency (ns), bytes out, bytes in, error, ...; kept: (s, code, ms, error)
    encode = subprocess.Popen([VEGETA, "encode", "-to", "csv"], stdin=attack_proc.stdout, stdout=subprocess.PIPE,
                              text=True)
    attack_proc.stdin.write(f"GET {url}\n".encode())
    attack_proc.stdin.close()
    attack_proc.stdout.close()
    rows = [(int(r[0]) / 1e9, int(r[1]), int(r[2]) / 1e6, r[5] if len(r) > 5 else "")
            for r in csv.reader(encode.stdout) if r]
    attack_proc.wait()
    encode.wait()
    if not rows:
        raise RuntimeError(f"vegeta sent nothing to {url}")
    t0 = min(r[0] for r in rows)
    kept = [r for r in rows if r[0] - t0 >= WARMUP]
    latencies = sorted(r[2] for r in kept)
    ok = sum(r[1] == 200 for r in kept)
    span = (max(r[0] for r in kept) - t0 - WARMUP) if kept else 0
    # The commonest error of the measured requests (the warm-up's are left out, as from every other figure).
    common = Counter(e.rsplit(": ", 1)[-1][:80] for *_, e in kept if e).most_common(1)
    return Cell(p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99), p999=percentile(latencies, 0.999),
                requests=len(kept), errors=len(kept) - ok, rate=ok / (span or seconds),
                error=f"{common[0][1]} × {common[0][0]}" if common else "")


def settle(host: str, ca_file: str, timeout: float = 90) -> None:
    """Until the API server answers 20 `GET /version` in a row, each within 50 ms (bounded): the next cell starts
    from a server that is not still working off the previous one."""
    import http.client
    import ssl
    import time

    ctx = ssl.create_default_context(cafile=ca_file)
    deadline, streak = time.monotonic() + timeout, 0
    time.sleep(2)
    while streak < 20 and time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPSConnection(host, 6443, context=ctx, timeout=2)
            conn.request("GET", "/version")
            ok = conn.getresponse().status == 200
            conn.close()
        except OSError:
            ok = False
        streak = streak + 1 if ok and time.monotonic() - t0 < 0.05 else 0
        time.sleep(0.05)


def saturated(c: Cell) -> bool:
    """More than 1% of the requests failed: the rate is beyond what this path can serve here."""
    return c.errors > 0.01 * max(c.requests, 1)


def text(c: Cell) -> str:
    errors = f", {c.errors} errors (commonest: {c.error})" if c.errors else ""
    return f"{c.p50:.2f} / {c.p99:.2f} / {c.p999:.2f} ms{errors}"


def measure(b: Bench, s: Strategy, args, ca_file: str, control: bool = False) -> dict:
    """Direct to the first API server, then through the strategy, cell by cell (same conditions, same run).

    With `control`, each direct cell is run twice (an A/A comparison): how far two measurements of the same path
    differ here is the noise every "added" figure of the run carries."""
    out = b.outputs["loadBalancers"]["api"]
    direct_host = b.cluster["addresses"][0]
    if s.kind == "dns":
        host = out["endpoint"].rsplit(":", 1)[0].rstrip(".")
        through = (f"https://{host}:6443/version", [f"{host}:6443:{a}:6443" for a in sorted(out["published"])])
    else:
        through = (f"https://{out['endpoint']}/version", [])
    results = {}
    # Kept-alive first: a rate of new TLS connections beyond what one API server can take leaves it busy (and its
    # memory grown) for a while, which would spoil the cells after it. Each cell starts from a settled server.
    for mode in args.modes:
        for rate in args.rates:
            settle(direct_host, ca_file)
            d = attack(f"https://{direct_host}:6443/version", ca_file, rate, args.seconds, mode)
            if control:
                settle(direct_host, ca_file)
                again = attack(f"https://{direct_host}:6443/version", ca_file, rate, args.seconds, mode)
                results[("again", rate, mode)] = again
                print(f"   direct again {rate}/s {MODES[mode][0]}: {text(again)}", flush=True)
            settle(direct_host, ca_file)
            t = attack(*through[:1], ca_file, rate, args.seconds, mode, connect_to=through[1])
            results[(rate, mode)] = (d, t)
            print(f"   {s.label} {rate}/s {MODES[mode][0]}: direct {text(d)}; through {text(t)}", flush=True)
    settle(direct_host, ca_file)
    d = attack(f"https://{direct_host}:6443/version", ca_file, 0, 5, "h2")
    settle(direct_host, ca_file)
    t = attack(*through[:1], ca_file, 0, 5, "h2", connect_to=through[1])
    results["max"] = (d, t)
    print(f"   {s.label} max: direct {d.rate:.0f}/s, through {t.rate:.0f}/s", flush=True)
    return results


def rows_of(label: str, results: dict, rates: list[int], modes: list[str], pinned_note: str) -> list[tuple[str, str]]:
    rows = []
    for key in modes:
        mode = MODES[key][0]
        for rate in rates:
            d, t = results[(rate, key)]
            if saturated(d):
                added = "direct saturated: one API server cannot take this rate here, so no added latency is given"
            else:
                added = f"added p99 **{t.p99 - d.p99:+.2f} ms**, p50 {t.p50 - d.p50:+.2f} ms"
            rows.append((f"{label}, {rate} req/s, {mode}: p50 / p99 / p99.9 through (direct)",
                         f"{text(t)} ({text(d)}); {added}"))
            again = results.get(("again", rate, key))
            if again and not saturated(d):
                rows.append((f"control: direct measured twice, {rate} req/s, {mode} (A/A: the noise of this run)",
                             f"{text(again)} after {text(d)}; difference p99 **{again.p99 - d.p99:+.2f} ms**, "
                             f"p50 {again.p50 - d.p50:+.2f} ms"))
    d, t = results["max"]
    rows.append((f"{label}: maximum throughput, kept-alive, through ÷ direct",
                 f"{t.rate:.0f} / {d.rate:.0f} req/s = **{t.rate / d.rate:.2f}** ({pinned_note})"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10, help="measured seconds per cell (after a 2 s warm-up)")
    ap.add_argument("--rates", default="200,1000,5000")
    ap.add_argument("--only", default="", help="comma-separated: lxc, keepalived, dns (default: all)")
    ap.add_argument("--modes", default="h2,h1,new", help=f"connection modes, comma-separated: {', '.join(MODES)}")
    ap.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    ap.add_argument("--no-pin", action="store_true", help="pin nothing (to compare with the pinned layout)")
    ap.add_argument("--no-control", action="store_true", help="skip the A/A control (direct measured twice)")
    args = ap.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    if set(args.modes) - set(MODES):
        ap.error(f"--modes: one of {', '.join(MODES)}")
    if not os.access(VEGETA, os.X_OK):
        print("vegeta is missing: run `scripts/setup --bench` (make bench does)", file=sys.stderr)
        return 2
    pinned = (os.cpu_count() or 1) > 1 and not args.no_pin
    PIN["generator"] = pinned
    only = set(filter(None, args.only.split(",")))
    rows: list[tuple[str, str]] = []
    with local_dns_server() as dns_server:
        cp = control_plane(dns_server)
        # Room for the goroutines and TLS state of thousands of new connections a second (768 MiB is not). The
        # control plane is not pinned: on CPU 0 beside vegeta, the API servers starve (p99 at 200 req/s doubled).
        cp.bench.values["controlPlanes"][0]["instance"]["limits"]["memory"] = "2GiB"
        chosen = [s for s in strategies(pinned) if not only or s.label.split()[0] in only]
        if not only or "dns" in only:
            dns = dns_strategy(dns_server, f"lat-{random.randrange(16**5):05x}")
            if pinned:
                dns.balancer["dns"]["nodes"]["instanceSpec"] = {"image": "cplb/nginx-proxy",
                                                                "limits": {"cpu": BALANCER_CPU}}
            chosen.append(dns)
        with cp as b:
            for s in chosen:
                print(f"== {s.label}", flush=True)
                b.up(s)
                with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
                    f.write(b.ca_pem)
                try:
                    # The A/A control once per run, beside the first strategy measured.
                    results = measure(b, s, args, f.name, control=s is chosen[0] and not args.no_control)
                finally:
                    os.unlink(f.name)
                if not pinned:
                    note = "one CPU: nothing pinned"
                elif s.label == "keepalived":
                    note = "its haproxy runs on the control-plane nodes, unpinned; vegeta on CPU 0"
                else:
                    note = "balancer on CPU 1, vegeta on CPU 0, control plane unpinned"
                rows += rows_of(s.label, results, args.rates, args.modes, note)
    emit(f"latency a balancer adds, vegeta at a fixed rate, GET /version over TLS ({args.seconds:g} s per cell)",
         rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
