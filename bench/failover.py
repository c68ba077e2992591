"""One failover harness for every strategy, against the real control plane (3 instances of etcd + kube-apiserver).

What a client sees is measured by bench/prober.py: a new TLS connection every 10 ms, verified against the cluster
CA, `GET /readyz` with a 200 ms timeout. Per event:
- outage: the longest time between two successful probes, from the event until the endpoint is steady again
  (the time from the last success before the outage to the first success after it; ~0.01 s means no outage);
- failed: how many probes failed; last failure: when the last one started, counted from the event.

Events (each on the VIP holder where there is one; otherwise on a backend):
- holder crash: `incus stop --force` of the instance holding the VIP (lxc: the haproxy replica; keepalived and
  kube-vip: the control-plane node). dns: a proxy node, measured as the time until the watch loop withdraws its
  record (clients that resolved the name before keep it up to the TTL more);
- backend crash: `incus stop --force` of a control-plane node that holds no VIP;
- API server SIGKILL, the node staying up (cplb-service's respawn held, then released);
- graceful restart: SIGTERM to kube-apiserver, wait for it to exit, start it, wait for /readyz;
- network cut: the holder's bridge port stops forwarding for 10 s (tests/helpers.partition), then after
  3 adverts (VRRP) or one lease (kube-vip): exactly one holder, and the host's neighbour entry for the VIP names
  the holder's MAC (so no client request goes to a node that no longer holds the VIP).

`--soak SECONDS` instead measures false failovers: VRRP pairs (lxc) and keepalived nodes at each advert interval
of `--intervals`, for SECONDS while two CPU burners keep both CPUs busy; it counts "Entering MASTER STATE" in the
instances' own counters (SIGUSR2 statistics, "Became master") during the soak.

Run: `make bench` (python bench/failover.py [--quick] [--runs N] [--only LABEL,...] [--record]).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import emit  # noqa: E402
from tests.helpers import (  # noqa: E402
    ProjectCopy, base_config, clients_reach_only, demo_group, eth0_addresses, incus, instances_with_prefix,
    local_dns_server, partition, unique_stack, vip_holders, wait_for,
)
from tests.k8s import readyz_check, real_control_plane  # noqa: E402

CLUSTER = "bfo"
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
# The advert interval to measure beside 1 s and 0.1 s: the fastest with no false failover in a `--soak` run (10 min
# with both CPUs busy: none at 0.02, 0.03, 0.04 or 0.05 s, for the lxc pair and keepalived; docs/benchmarks.md).
RECOMMENDED_ADVERT = 0.02
KUBE_VIP_DEFAULTS = (15, 10, 2)
NO_OUTAGE = 0.1  # seconds: the longest gap between successful probes that is not an outage (10 probe intervals)
EVENTS = ("holder crash", "backend crash", "API server SIGKILL", "graceful restart", "network cut 10 s")


def quiet(_):
    pass


# --- the prober -------------------------------------------------------------------------------------------------

class Prober:
    """bench/prober.py as its own process; `probes()` reads what it has written so far."""

    def __init__(self, host: str, port: int, ca_pem: str, server_name: str = "", timeout: float = 0.2,
                 resolve: str = ""):
        self.host = host
        self.dir = tempfile.mkdtemp(prefix="cplb-probe-")
        ca = os.path.join(self.dir, "ca.pem")
        with open(ca, "w") as f:
            f.write(ca_pem)
        self.out = os.path.join(self.dir, "probes")
        self.proc = subprocess.Popen(
            [PYTHON, os.path.join(ROOT, "bench", "prober.py"), host, str(port), ca,
             *(["--server-name", server_name] if server_name else []), "--timeout", str(timeout),
             *(["--resolve", resolve] if resolve else [])],
            stdout=open(self.out, "w"))

    def probes(self, since: float, answered: bool = False) -> list[tuple[float, float, bool]]:
        """(start, end, ok): ok is a 200; with `answered`, any HTTP answer (not a refused or timed-out probe)."""
        return [(start, end, result not in ("0", "t") if answered else result == "1")
                for start, end, result in self.results(since)]

    def results(self, since: float) -> list[tuple[float, float, str]]:
        """(start, end, result) as bench/prober.py wrote them: 1, 5 (another HTTP answer), 0 (refused, reset or
        closed without an answer), t (no answer within the timeout)."""
        rows = []
        with open(self.out) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and float(parts[0]) >= since:
                    rows.append((float(parts[0]), float(parts[1]), parts[2]))
        return rows

    def steady(self, seconds: float = 2.0) -> bool:
        """Every probe started in the last `seconds` (that had time to finish) succeeded."""
        now = time.monotonic()
        recent = [p for p in self.probes(now - seconds - 0.3) if p[0] <= now - 0.3]
        return len(recent) >= seconds * 50 and all(ok for _, _, ok in recent)

    def stop(self):
        import shutil

        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def outage(probes: list[tuple[float, float, bool]], t_event: float, t_end: float) -> dict:
    """The client's view of one event: the longest gap between successes after it, failed probes."""
    window = [p for p in probes if t_event - 1 <= p[0] <= t_end]
    ok = sorted(end for _, end, good in window if good)
    failed = [start for start, _, good in window if not good and start >= t_event - 0.2]
    gaps = [b - a for a, b in zip(ok, ok[1:]) if b > t_event]
    recovered = bool(ok) and ok[-1] > t_event
    if not recovered:
        gaps.append(t_end - (ok[-1] if ok else t_event))
    return {"outage": max(gaps, default=0.0), "failed": len(failed), "recovered": recovered,
            "last_failure": (max(failed) - t_event) if failed else None}


def observe(prober: Prober, t_event: float, max_seconds: float, min_seconds: float = 2.0) -> float:
    """Wait until the endpoint is steady again (or `max_seconds` after the event); returns the window's end."""
    while True:
        time.sleep(0.25)
        now = time.monotonic()
        if now - t_event >= max_seconds or (now - t_event >= min_seconds and prober.steady()):
            return now


# --- strategies --------------------------------------------------------------------------------------------------

@dataclass
class Strategy:
    label: str
    balancer: dict
    kind: str  # "vrrp", "lease", "ovn", "dns"
    vip: str = ""
    settle: float = 3.0  # after a network cut: 3 adverts, or one lease
    window: float = 30.0  # longest wait for the endpoint to come back
    events: tuple = EVENTS

    @property
    def holder_prefix(self) -> str:
        return "api-haproxy" if self.balancer["type"] == "lxc" else "cp"


def vip_strategies(recommended: float) -> list[Strategy]:
    adverts = [1, 0.1] + ([recommended] if recommended and recommended not in (1, 0.1) else [])
    def vip() -> str:
        return f"198.18.10.{random.randrange(20, 90)}"

    def vrid() -> int:
        return random.randrange(100, 250)

    out = []
    for lease, renew, retry in (KUBE_VIP_DEFAULTS, (5, 3, 1)):
        v = vip()
        out.append(Strategy(f"kube-vip {lease}/{renew}/{retry}", {"type": "external", "external": {
            "endpoint": f"{v}:6443", "kubeVip": {"vip": v, "leaseDurationSeconds": lease,
                                                 "renewDeadlineSeconds": renew, "retryPeriodSeconds": retry}}},
            "lease", v, settle=lease + 1, window=lease * 3 + 10))
    for advert in adverts:
        v = vip()
        out.append(Strategy(f"lxc ×2 advert {advert:g} s", {"type": "lxc", "lxc": {
            "replicas": 2, "vip": v, "virtualRouterID": vrid(), "advertIntervalSeconds": advert}},
            "vrrp", v, settle=3 * advert + 1, window=20))
    for advert in adverts:
        v = vip()
        out.append(Strategy(f"keepalived advert {advert:g} s", {"type": "keepalived", "keepalived": {
            "mode": "userspace", "vrrpInstances": [{"virtualIPs": [f"{v}/24"], "virtualRouterID": vrid(),
                                                    "advertIntervalSeconds": advert}]}},
            "vrrp", v, settle=3 * advert + 1, window=20))
    return out


def dns_strategy(server: dict, hostname: str) -> Strategy:
    return Strategy("dns (watch loop)", {"type": "dns", "dns": {
        "nodes": {"count": 2}, "zone": "cplb.test.", "hostname": hostname, "ttl": 30, "server": server["server"],
        "tsig": {"name": "cplb-update", "secret": "cGxhY2Vob2xkZXI="},
        "roles": [{"name": "api", "port": 6443, "targetPort": 6443}]}},
        "dns", events=("holder crash", "backend crash", "API server SIGKILL", "graceful restart"))


def ovn_strategy(network: str) -> Strategy:
    listen = f"198.18.20.{random.randrange(200, 250)}"
    return Strategy("ovn", {"type": "ovn", "ovn": {"networkName": network, "listenAddress": listen}}, "ovn",
                    events=("backend crash", "API server SIGKILL", "graceful restart"))


# --- one control plane, balancers switched in front of it --------------------------------------------------------

@dataclass
class Bench:
    project: ProjectCopy
    name: str
    stack: object
    values: dict
    outputs: dict = field(default_factory=dict)
    dns_server: Optional[dict] = None
    watch: Optional[subprocess.Popen] = None

    def up(self, strategy: Strategy):
        lb = {"name": "api", "cluster": CLUSTER, "healthCheck": readyz_check(), **strategy.balancer}
        self.values["loadBalancers"] = [lb]
        self.project.write_stack_config(self.name, self.values)
        if strategy.kind == "dns":
            from pulumi.automation import ConfigValue

            self.stack.set_config("cplb:loadBalancers[0].dns.tsig.secret",
                                  ConfigValue(self.dns_server["secret"], secret=True), path=True)
        self.outputs = {k: v.value for k, v in self.stack.up(on_output=quiet).outputs.items()}

    @property
    def cluster(self) -> dict:
        return self.outputs["clusters"][CLUSTER]

    @property
    def ca_pem(self) -> str:
        from tests.k8s import kubeconfig_ca

        return kubeconfig_ca(self.cluster["kubeconfig"])

    def cp_address(self, instance: str) -> str:
        return dict(zip(self.cluster["controlPlane"], self.cluster["addresses"]))[instance]

    def holders(self, s: Strategy) -> list[str]:
        return vip_holders(f"{self.name}-{s.holder_prefix}", s.vip)

    def single_holder(self, s: Strategy, seconds: float = 60) -> Optional[str]:
        def once():
            first = self.holders(s)
            time.sleep(1)
            return first[0] if len(first) == 1 and self.holders(s) == first else None
        return wait_for(once, seconds, 0.1)

    def all_ready(self) -> bool:
        from components.control_plane import readyz

        return all(readyz(a, self.ca_pem) for a in self.cluster["addresses"])

    def endpoint(self, s: Strategy) -> tuple[str, int, str]:
        out = self.outputs["loadBalancers"]["api"]
        if s.kind == "dns":
            return sorted(out["published"])[0], 6443, out["endpoint"].rsplit(":", 1)[0].rstrip(".")
        host, port = out["endpoint"].rsplit(":", 1)
        return host, int(port), ""

    def backend(self, s: Strategy) -> str:
        """A control-plane node that holds no VIP (the last one that does not)."""
        holders = set(self.holders(s)) if s.kind in ("vrrp", "lease") else set()
        return [n for n in self.cluster["controlPlane"] if n not in holders][-1]

    def api_target(self, s: Strategy) -> str:
        """Where the API server is killed or restarted: the VIP holder if it is a control-plane node."""
        if s.kind in ("vrrp", "lease") and s.holder_prefix == "cp":
            return self.single_holder(s)
        return self.cluster["controlPlane"][0]

    def proxy_nodes(self) -> dict[str, str]:
        """The dns strategy's proxy nodes and their IPv4 addresses."""
        return {n: next(a["address"] for a in inst["state"]["network"]["eth0"]["addresses"] if a["family"] == "inet")
                for n, inst in instances_with_prefix(f"{self.name}-api-proxy").items()}

    # -- recovery --
    def restart(self, instance: str):
        if incus().get_instance(instance)["status"] != "Running":  # the watch loop's `up` may have started it
            incus().set_state(instance, "start")
        if instance in self.cluster["controlPlane"]:
            from components.control_plane import readyz

            wait_for(lambda: readyz(self.cp_address(instance), self.ca_pem), 120, 0.5)

    def settle(self, s: Strategy, prober: Prober):
        wait_for(self.all_ready, 120, 0.5)
        if s.kind in ("vrrp", "lease"):
            self.single_holder(s)
        if s.kind == "dns":
            wait_for(lambda: self.published() == sorted(self.outputs["loadBalancers"]["api"]["published"]), 120)
        wait_for(prober.steady, 60, 0.5)

    def published(self) -> list[str]:
        import dns.message
        import dns.query

        fqdn = self.outputs["loadBalancers"]["api"]["endpoint"].rsplit(":", 1)[0]
        fqdn = fqdn if fqdn.endswith(".") else fqdn + "."
        r = dns.query.tcp(dns.message.make_query(fqdn, "A"), "127.0.0.1", port=self.dns_server["port"], timeout=3)
        return sorted(rd.to_text() for rrset in r.answer for rd in rrset)

    def start_watch(self):
        log = open(os.path.join(self.project.dir, "watch.log"), "w")
        self.watch = subprocess.Popen(
            [PYTHON, os.path.join(ROOT, "scripts", "watch"), "--stack", self.name, "--work-dir", self.project.dir,
             "--interval", "1", "--max-seconds", "7200", "--max-ups", "500"],
            cwd=self.project.dir, env={**os.environ, **self.project.env}, stdout=log, stderr=subprocess.STDOUT)
        # Events start once the loop follows the stack: during its catch-up (a refresh, then `up`) a stopped stack
        # instance is started again, as any refresh and `up` would do, and that is not what is measured.
        path = os.path.join(self.project.dir, "watch.log")
        if not wait_for(lambda: "reconcile (watch started)" in open(path).read(), 180, 0.5):
            raise RuntimeError(f"the watch loop did not finish its first reconcile: {open(path).read()[-2000:]}")

    def stop_watch(self):
        import signal

        if self.watch:
            self.watch.send_signal(signal.SIGINT)
            try:
                self.watch.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.watch.kill()
            self.watch = None


def hold(instance: str, signal_name: str):
    """Stop kube-apiserver with a signal and keep cplb-service from respawning it."""
    client = incus()
    client.exec(instance, ["touch", "/run/cplb-service.kube-apiserver.down"])
    client.exec(instance, ["killall", f"-{signal_name}", "kube-apiserver"])


def release(instance: str):
    incus().exec(instance, ["rm", "-f", "/run/cplb-service.kube-apiserver.down"])


def one_run(b: Bench, s: Strategy, event: str, prober: Prober) -> dict:
    """One event, its client-visible effect, and the recovery that puts things back for the next run."""
    b.settle(s, prober)
    extra: dict = {}
    undo: Callable[[], None] = lambda: None
    if event == "holder crash":
        if s.kind == "dns":  # a proxy node the prober does not use
            gone, victim = next((a, n) for n, a in b.proxy_nodes().items() if a != prober.host)
        else:
            victim = b.single_holder(s)
        t_event = time.monotonic()
        incus().set_state(victim, "stop", force=True)
        if s.kind == "dns":
            wait_for(lambda: gone not in b.published(), 120, 0.05)
            extra["withdrawn"] = time.monotonic() - t_event
        undo = lambda: b.restart(victim)  # noqa: E731
    elif event == "backend crash":
        victim = b.backend(s)
        t_event = time.monotonic()
        incus().set_state(victim, "stop", force=True)
        undo = lambda: b.restart(victim)  # noqa: E731
    elif event == "API server SIGKILL":
        victim = b.api_target(s)
        t_event = time.monotonic()
        hold(victim, "KILL")

        def undo():
            release(victim)
            wait_for(b.all_ready, 120, 0.5)
    elif event == "graceful restart":
        victim = b.api_target(s)
        t_event = time.monotonic()
        hold(victim, "TERM")
        wait_for(lambda: incus().exec(victim, ["pidof", "kube-apiserver"])[0] != 0, 120, 0.1)
        release(victim)
        wait_for(b.all_ready, 120, 0.2)
    else:  # network cut
        victim = b.single_holder(s)
        with partition(victim):
            t_event = time.monotonic()
            time.sleep(10)
        time.sleep(s.settle)
        after = b.holders(s)
        extra["one holder"] = len(after) == 1
        extra["neighbour is holder"] = len(after) == 1 and clients_reach_only(after[0], s.vip)
    t_end = observe(prober, t_event, s.window + (10 if event.startswith("network") else 0))
    result = {**outage(prober.probes(t_event - 2), t_event, t_end), **extra}
    # Probes with no HTTP answer at all, apart from /readyz 500s of a server in its shutdown delay.
    result["unanswered"] = outage(prober.probes(t_event - 2, answered=True), t_event, t_end)["failed"]
    undo()
    return result


def cell_text(results: list[dict]) -> str:
    outs = [r["outage"] for r in results]
    text = f"{statistics.median(outs):.2f} / {max(outs):.2f} s"
    text += f", {statistics.median([r['failed'] for r in results]):.0f} failed"
    if "unanswered" in results[0]:
        text += f" ({statistics.median([r['unanswered'] for r in results]):.0f} with no answer)"
    if not all(r["recovered"] for r in results):
        text += f" ({sum(not r['recovered'] for r in results)} not back in the window)"
    if "withdrawn" in results[0]:
        w = [r["withdrawn"] for r in results]
        text = f"record withdrawn {statistics.median(w):.2f} / {max(w):.2f} s; clients up to that + TTL 30 s"
    if "one holder" in results[0]:
        text += f"; one holder after: {sum(r['one holder'] for r in results)}/{len(results)}"
        text += f", neighbour entry on the holder: {sum(r['neighbour is holder'] for r in results)}/{len(results)}"
    lasts = [r["last_failure"] for r in results if r["last_failure"] is not None]
    if lasts:
        text += f"; last failure {max(lasts):.2f} s after"
    return text


def load_cells(path: str) -> dict:
    """Cells a previous run finished ({(label, event): runs}), from `--results`: a bench of two hours survives an
    interruption (an incusd restart, a reboot) and goes on where it stopped."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return {tuple(k.split("|", 1)): v for k, v in json.load(f).items()}


def save_cells(path: str, table: dict) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({f"{k[0]}|{k[1]}": v for k, v in table.items()}, f)
        os.replace(path + ".tmp", path)


def run_strategy(b: Bench, s: Strategy, runs: int, table: dict, events: frozenset = frozenset(),
                 results: str = ""):
    todo = [e for e in s.events if (not events or e in events) and len(table.get((s.label, e), [])) < runs]
    if not todo:
        print(f"== {s.label}: every cell already measured ({results})", flush=True)
        return
    print(f"== {s.label}", flush=True)
    b.up(s)
    if s.kind == "dns":
        b.start_watch()
    host, port, server_name = b.endpoint(s)
    prober = Prober(host, port, b.ca_pem, server_name)
    try:
        for event in todo:
            cell = []
            for n in range(runs):
                r = one_run(b, s, event, prober)
                print(f"   {event} #{n + 1}: {r}", flush=True)
                cell.append(r)
            table[(s.label, event)] = cell
            save_cells(results, table)
    finally:
        prober.stop()
        b.stop_watch()


def ratios(table: dict, strategies: list[str]) -> list[tuple[str, str]]:
    rows = []
    for kv in (f"kube-vip {'/'.join(map(str, KUBE_VIP_DEFAULTS))}", "kube-vip 5/3/1"):
        for event in EVENTS:
            if (kv, event) not in table:
                continue
            ref = statistics.median(r["outage"] for r in table[(kv, event)])
            if ref <= NO_OUTAGE:
                continue  # kube-vip has no outage here either: nothing to compare
            parts = []
            for label in strategies:
                if label.startswith("kube-vip") or (label, event) not in table or "withdrawn" in table[(label, event)][0]:
                    continue
                mine = statistics.median(r["outage"] for r in table[(label, event)])
                # Below NO_OUTAGE a client saw no outage (gaps of a few probe intervals): a ratio would only say how
                # fast the prober is.
                parts.append(f"{label} {ref / mine:.0f}×" if mine > NO_OUTAGE else f"{label}: no outage")
            if parts:
                rows.append((f"{event}: {kv} median outage ÷ each strategy's", ", ".join(parts)))
    return rows


def control_plane_bench(args) -> list[tuple[str, str]]:
    """The bridge control plane (dns, lxc, keepalived, kube-vip), then the OVN one (ovn)."""
    only = set(filter(None, args.only.split(",")))
    events = frozenset(filter(None, args.events.split(",")))
    table: dict = load_cells(args.results) if args.resume else {}
    labels: list[str] = []
    with local_dns_server() as dns_server:
        # kube-vip first: its API servers bind every address; the later strategies bind VIP:6443 beside them.
        bridge = [*vip_strategies(args.advert), dns_strategy(dns_server, f"api-{random.randrange(16**5):05x}")]
        bridge = [s for s in bridge if not only or s.label in only]
        if bridge:
            labels += [s.label for s in bridge]
            with control_plane(dns_server) as b:
                for s in bridge:
                    run_strategy(b, s, args.runs, table, events, args.results)
        if not only or "ovn" in only:
            subprocess.run([os.path.join(ROOT, "scripts", "ovn-up")], check=True, stdout=subprocess.DEVNULL)
            from tests.integration.test_ovn_oci_external import OVN_NETWORK

            labels.append("ovn")
            try:
                with control_plane(dns_server, network=OVN_NETWORK) as b:
                    run_strategy(b, ovn_strategy(OVN_NETWORK), args.runs, table, events, args.results)
            finally:
                subprocess.run([os.path.join(ROOT, "scripts", "ovn-down")], check=False, stdout=subprocess.DEVNULL)
    if args.resume:  # the table is every cell measured so far, this run's and the earlier ones'
        labels = list(dict.fromkeys([label for label, _ in table] + labels))
    rows = [(f"{label}: {event} ({len(res)} runs) — outage median / max", cell_text(res))
            for label in labels for event in EVENTS if (res := table.get((label, event)))]
    return rows + ratios(table, labels)


class control_plane:
    """A stack with the real 3-node control plane (on the project bridge, or an OVN network)."""

    def __init__(self, dns_server: dict, network: str = ""):
        cp = real_control_plane("cp", CLUSTER, image="cplb/control-plane-kube-vip")  # kube-vip is one of the cells
        if network:
            cp["instance"]["network"] = network
        self.project = ProjectCopy()
        self.name = unique_stack("fo")
        self.values = base_config(controlPlanes=[cp])
        self.bench = Bench(self.project, self.name, None, self.values, dns_server=dns_server)

    def __enter__(self) -> Bench:
        self.bench.stack = self.project.stack(self.name, self.values)
        return self.bench

    def __exit__(self, *exc):
        self.bench.stop_watch()
        try:
            self.bench.stack.destroy(on_output=quiet)
        finally:
            for inst in instances_with_prefix(self.name):
                incus().delete_instance(inst)
            self.project.cleanup()


# --- false failovers under CPU load ------------------------------------------------------------------------------

def masters(instance: str) -> int:
    """How many times keepalived in `instance` became VRRP master since it started (its own counters: SIGUSR2
    writes /tmp/keepalived.stats)."""
    import re

    script = ("rm -f /tmp/keepalived.stats; kill -USR2 $(cat /run/keepalived.pid); "
              "for i in 1 2 3 4 5 6 7 8 9 10; do [ -s /tmp/keepalived.stats ] && break; sleep 0.3; done; "
              "cat /tmp/keepalived.stats")
    rc, out, err = incus().exec(instance, ["sh", "-c", script])
    counts = re.findall(r"Became master:\s*(\d+)", out)
    if rc != 0 or not counts:
        raise RuntimeError(f"no keepalived statistics from {instance}: {out[-300:]}{err[-300:]}")
    return sum(int(c) for c in counts)


def soak(args) -> list[tuple[str, str]]:
    from tests.integration.test_keepalived import config as keepalived_config

    intervals = [float(x) for x in args.intervals.split(",")]
    project = ProjectCopy()
    stacks = []
    rows = []
    burners = []
    try:
        # Distinct VIPs (outside the bridge's DHCP range, .100-.199) and router ids for every pair.
        used = {a for inst in incus().list_instances() for a in eth0_addresses(inst)}
        free = [a for a in range(20, 100) if f"198.18.10.{a}" not in used]
        pairs = [(advert, kind) for advert in intervals for kind in ("lxc", "keepalived")]
        for k, (advert, kind) in enumerate(pairs):
            cluster = f"so{random.randrange(16**4):04x}"
            vip, vrid = f"198.18.10.{free[k]}", 200 + k
            if kind == "lxc":
                values = base_config(instanceGroups=[demo_group(1, name="cp", cluster=cluster)], loadBalancers=[{
                    "name": "api", "cluster": cluster, "type": "lxc", "lxc": {
                        "replicas": 2, "vip": vip, "virtualRouterID": vrid, "advertIntervalSeconds": advert}}])
            else:
                values = keepalived_config(cluster, vip, vrid, advert=advert)
            name = unique_stack("so")
            stack = project.stack(name, values)
            stacks.append((kind, advert, name, stack))
            stack.up(on_output=quiet)
        time.sleep(10)  # first elections
        vrrp_nodes = {}
        for kind, advert, name, _ in stacks:
            prefix = f"{name}-api-haproxy" if kind == "lxc" else f"{name}-cp"
            vrrp_nodes[name] = {n: masters(n) for n in instances_with_prefix(prefix)}
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
        print(f"soak: {args.soak} s with {len(burners)} CPU burners", flush=True)
        time.sleep(args.soak)
        for kind, advert, name, _ in stacks:
            extra = sum(masters(n) - before for n, before in vrrp_nodes[name].items())
            rows.append((f"false failovers in {args.soak / 60:g} min, both CPUs busy: {kind}, advert {advert:g} s",
                         str(extra)))
            print(rows[-1], flush=True)
    finally:
        for p in burners:
            p.kill()
        for _, _, name, stack in stacks:
            try:
                stack.destroy(on_output=quiet)
            finally:
                for inst in instances_with_prefix(name):
                    incus().delete_instance(inst)
        project.cleanup()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10, help="runs per cell (median and max)")
    ap.add_argument("--quick", action="store_true", help="3 runs per cell (a smoke test)")
    ap.add_argument("--only", default="", help="comma-separated strategy labels (default: all)")
    ap.add_argument("--events", default="", help="comma-separated events (default: all)")
    ap.add_argument("--advert", type=float, default=RECOMMENDED_ADVERT, help="the recommended advert interval")
    ap.add_argument("--soak", type=int, default=0, help="seconds of false-failover soak instead of failovers")
    ap.add_argument("--intervals", default="0.02,0.05,0.1", help="advert intervals for --soak")
    ap.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    ap.add_argument("--results", default=os.path.join(ROOT, ".state", "bench", "failover-cells.json"),
                    help="where each finished cell is kept")
    ap.add_argument("--resume", action="store_true", help="skip the cells --results already holds")
    args = ap.parse_args()
    if args.quick:
        args.runs = 3
    if args.soak:
        emit("false failovers under CPU load (VRRP)", soak(args), args.record)
        return 0
    rows = control_plane_bench(args)
    rows += [("anchor: kube-vip's defaults", "lease 15 s, renew 10 s, retry 2 s: about 20 s worst case"),
             ("anchor: keepalived", "3 × advert_int + skew (skew = (256 - priority) / 256 × advert_int)"),
             ("anchor: Claudie's DNS TTL", "300 s in clients' caches")]
    emit(f"failover as a client sees it, real control plane ({args.runs} runs per cell)", rows, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
