"""What a client sees while the stack rolls to a new image: each rollout under the 10 ms prober of bench/failover.py
(a new TLS connection every 10 ms asking GET /readyz of the real control plane behind the balancer) and an
authenticated API load (tests/k8s.ApiLoad: new connections and one kept-alive connection).

One stack, side by side in the same run: a real 3-member control plane behind two `lxc` balancers, a VRRP pair on a
VIP and a single replica; then (`members`) a control plane whose VIP lives on its members, with `keepalived` and with
kube-vip (lease 5/3/1), each rolling its image; then (`dns`) the dns strategy's two proxy nodes rolling theirs, seen
by clients that hold one node's address (a dns endpoint's clients keep an answer for the TTL). Each run builds a new version of an image (scripts/build-image --variant) and runs
`up` with CPLB_UPGRADE=1, as `make upgrade` does:
- `cplb/haproxy`: both balancers roll in the same `up` (the pair standby first, the single one in place); the pair
  again without the new holder taking the old one's connections over (CPLB_TAKEOVER=0), the before of the same run;
- `cplb/control-plane`: the members roll one at a time behind both balancers.
Reported per cell: the longest gap between answered probes (median and max over the runs), failed probes, failed API
requests, and the `up`'s duration; beside it the all-at-once figure measured before rollouts existed (issue 27:
5.2 s, 37 failed probes, for the pair).

Run: python bench/rollout.py [--runs N] [--only lxc|members|dns|default] [--record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.failover import Prober, outage  # noqa: E402
from bench.report import emit  # noqa: E402
from tests.helpers import base_config, build_image_version, pulumi_stack, wait_for  # noqa: E402
from tests.k8s import ApiLoad, kubeconfig_ca, readyz_check, real_control_plane  # noqa: E402

CLUSTER = "benchroll"
VIP = "198.18.10.42"
ALL_AT_ONCE_PAIR = "5.2 s, 37 failed probes (issue 27, before rollouts)"


def quiet(_):
    pass


def values() -> dict:
    api = {"ports": [{"name": "api", "port": 6443, "targetPort": 6443}], "healthCheck": readyz_check(),
           "cluster": CLUSTER, "type": "lxc"}
    haproxy = {"image": "cplb/haproxy", "limits": {"memory": "128MiB"}}
    return base_config(controlPlanes=[real_control_plane("bcp", CLUSTER)], loadBalancers=[
        {**api, "name": "pair", "lxc": {"replicas": 2, "vip": VIP, "virtualRouterID": 142,
                                        "advertIntervalSeconds": 0.02, "instanceSpec": haproxy}},
        {**api, "name": "single", "lxc": {"instanceSpec": haproxy}},
    ])


def one_rollout(stack, kubeconfig: str, endpoints: dict, image: str, variant: str, timeout: float,
                env: dict | None = None) -> dict:
    for one in image.split(","):
        build_image_version(one, variant)
    ca = kubeconfig_ca(kubeconfig)
    # An endpoint is (host, port), (host, port, the name its certificate is checked for) or (name, port, name, the
    # DNS server that resolves it): a client that resolves the name for its TTL (probes only, no API load).
    probers = {label: Prober(e[0], e[1], ca, server_name=(e[2:] or ("",))[0], timeout=timeout,
                             resolve=(e[3:] or ("",))[0]) for label, e in endpoints.items()}
    loads = {label: ApiLoad(kubeconfig, e[0], e[1], server_name=(e[2:] or (None,))[0])
             for label, e in endpoints.items() if not e[3:]}
    try:
        for p in probers.values():
            assert wait_for(p.steady, 20), "the endpoint never answered steadily before the rollout"
        t0 = time.monotonic()
        for load in loads.values():
            load.__enter__()
        extra = {"CPLB_UPGRADE": "1", **(env or {})}
        stack.workspace.env_vars.update(extra)
        try:
            stack.up(on_output=quiet)
        finally:
            for key in extra:
                del stack.workspace.env_vars[key]
            for load in loads.values():
                load.__exit__(None, None, None)
        t1 = time.monotonic()
        for p in probers.values():
            wait_for(p.steady, 15)
        api = {label: loads[label].counts if label in loads else {"failed": 0, "ok": 0, "retried": 0}
               for label in probers}
        return {label: {**outage(p.probes(t0 - 1, answered=True), t0, t1), "up": t1 - t0,
                        "api_failed": api[label]["failed"], "api_ok": api[label]["ok"],
                        "api_retried": api[label]["retried"]}
                for label, p in probers.items()}
    finally:
        for p in probers.values():
            p.stop()


def cell(runs: list[dict]) -> str:
    gaps = [r["outage"] for r in runs]
    api = sum(r["api_ok"] + r["api_failed"] for r in runs)
    return (f"longest gap median {statistics.median(gaps):.3f} s, max {max(gaps):.3f} s; failed probes "
            f"{sum(r['failed'] for r in runs)}; " +
            (f"failed API requests {sum(r['api_failed'] for r in runs)} of {api} (GETs client-go retries after a "
             f"reset or EOF: {sum(r.get('api_retried', 0) for r in runs)}); " if api else "") +
            f"`up` {statistics.median(r['up'] for r in runs):.1f} s")


# The VIPs on the members themselves: the control plane's image (with kube-vip in it, for the kube-vip cell) rolls one
# member at a time while the VIP moves off each member before its rebuild (keepalived: its priority drops with its
# API server's /readyz; kube-vip: its lease).
VIP_ON_MEMBERS = {
    "keepalived": lambda vip: {"type": "keepalived", "ports": [{"name": "api", "port": 6443, "targetPort": 6443}],
                               "healthCheck": readyz_check(), "keepalived": {"mode": "userspace", "vrrpInstances": [
                                   {"virtualIPs": [f"{vip}/24"], "virtualRouterID": 143}]}},
    "kube-vip 5/3/1": lambda vip: {"type": "external", "external": {"endpoint": f"{vip}:6443", "kubeVip": {
        "vip": vip, "leaseDurationSeconds": 5, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 1}}},
}
MEMBERS_VIP = "198.18.10.43"


def vip_on_members(label: str, runs: int, timeout: float) -> list[dict]:
    """`runs` rollouts of cplb/control-plane-kube-vip under a balancer whose VIP lives on the members."""
    cp = real_control_plane("bvm", CLUSTER, image="cplb/control-plane-kube-vip")
    lb = {"name": "vm", "cluster": CLUSTER, **VIP_ON_MEMBERS[label](MEMBERS_VIP)}
    found = []
    with pulumi_stack(base_config(controlPlanes=[cp], loadBalancers=[lb]), prefix="brv") as (_project, name, stack):
        result = stack.up(on_output=quiet)
        kubeconfig = result.outputs["clusters"].value[CLUSTER]["kubeconfig"]
        for n in range(runs):
            figures = one_rollout(stack, kubeconfig, {label: (MEMBERS_VIP, 6443)}, "control-plane-kube-vip",
                                  f"bench-{name}-{n}", timeout)[label]
            found.append(figures)
            print(f"run {n + 1} control-plane-kube-vip via {label}: gap {figures['outage']:.3f} s, "
                  f"{figures['failed']} failed probes, {figures['api_failed']} failed API requests, "
                  f"up {figures['up']:.1f} s", flush=True)
    build_image_version("control-plane-kube-vip")  # back to the checkout's recipe
    return found


def dns_cells(args) -> list[tuple[str, str]]:
    """The `dns` strategy's proxy nodes (2, nginx stream, records in the project's BIND) rolling cplb/nginx-proxy, one
    node at a time. A client of a dns endpoint holds an answer for the TTL and connects to an address in it: one
    prober (and API load) per node, as the clients that resolved to that node see the rollout."""
    from pulumi.automation import ConfigValue

    from tests.helpers import local_dns_server

    cp = real_control_plane("bdc", CLUSTER)
    runs: dict[str, list] = {}
    with local_dns_server() as server:
        lb = {"name": "dn", "cluster": CLUSTER, "type": "dns", "healthCheck": readyz_check(), "dns": {
            "nodes": {"count": 2}, "zone": "cplb.test.", "hostname": "rollout", "ttl": 30, "server": server["server"],
            "tsig": {"name": "cplb-update", "secret": "cGxhY2Vob2xkZXI="},
            "roles": [{"name": "api", "port": 6443, "targetPort": 6443}]}}
        with pulumi_stack(base_config(controlPlanes=[cp], loadBalancers=[lb]), prefix="brd") as (_p, name, stack):
            stack.set_config("cplb:loadBalancers[0].dns.tsig.secret", ConfigValue(server["secret"], secret=True),
                             path=True)
            result = stack.up(on_output=quiet)
            kubeconfig = result.outputs["clusters"].value[CLUSTER]["kubeconfig"]
            out = result.outputs["loadBalancers"].value["dn"]
            fqdn = out["endpoint"].rsplit(":", 1)[0].rstrip(".")
            endpoints = {f"node {n}": (address, 6443, fqdn) for n, address in enumerate(sorted(out["published"]), 1)}
            # Beside the clients pinned to a node: one that resolves the name again when its answer's TTL is out.
            endpoints["resolver"] = (fqdn, 6443, fqdn, server["server"])
            for n in range(args.runs):
                found = one_rollout(stack, kubeconfig, endpoints, "nginx-proxy", f"bench-{name}-{n}", args.timeout)
                for label, figures in found.items():
                    runs.setdefault(label, []).append(figures)
                    print(f"run {n + 1} nginx-proxy via dns {label}: gap {figures['outage']:.3f} s, "
                          f"{figures['failed']} failed probes, {figures['api_failed']} failed API requests, "
                          f"up {figures['up']:.1f} s", flush=True)
    build_image_version("nginx-proxy")  # back to the checkout's recipe
    return [(f"`cplb/nginx-proxy` upgrade, dns proxy nodes (2, TTL 30 s), " +
             ("a client resolving the name for its TTL" if label == "resolver" else
              f"a client holding {label}'s address"), cell(found)) for label, found in sorted(runs.items())]


DEFAULT_IMAGES = "control-plane,haproxy,worker"


def default_cells(args) -> list[tuple[str, str]]:
    """The embedded default (stacks/Pulumi.dev.yaml under its own names: a real 3-member control plane, 2 workers, the
    API balancer a VRRP pair, publishing on) after a Debian update changed every image it runs: one `make upgrade`
    rolls the control plane, the pair and the workers, each one member at a time; seen through the API endpoint."""
    import random

    from tests.integration.test_make_up import dev_config

    cluster = f"bu{random.randrange(16**4):04x}"
    found = []
    with pulumi_stack(dev_config(cluster), prefix="bu") as (_project, name, stack):
        result = stack.up(on_output=quiet)
        kubeconfig = result.outputs["clusters"].value[cluster]["kubeconfig"]
        host, port = result.outputs["loadBalancers"].value[f"{cluster}-api"]["endpoint"].rsplit(":", 1)
        for n in range(args.runs):
            figures = one_rollout(stack, kubeconfig, {"api": (host, int(port))}, DEFAULT_IMAGES, f"bench-{name}-{n}",
                                  args.timeout)["api"]
            found.append(figures)
            print(f"run {n + 1} {DEFAULT_IMAGES} on the embedded default: gap {figures['outage']:.3f} s, "
                  f"{figures['failed']} failed probes, {figures['api_failed']} failed API requests, "
                  f"up {figures['up']:.1f} s", flush=True)
    for image in DEFAULT_IMAGES.split(","):
        build_image_version(image)  # back to the checkout's recipes
    return [("the embedded default's upgrade after every image changed (control plane, API pair, workers)",
             cell(found))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--only", choices=["lxc", "members", "dns", "default"],
                    help="the lxc balancers, the VIPs on the members, the dns strategy's proxy nodes, or the embedded "
                         "default with every image changed")
    ap.add_argument("--member-vip", choices=list(VIP_ON_MEMBERS), help="with the members: this VIP's cell only")
    # A 2-core machine running two 3-member control planes is saturated while an image unpacks: with 200 ms, probes
    # fail that a slow CPU, not the endpoint, kept waiting (tests/integration/test_rollout.py PROBE_TIMEOUT).
    ap.add_argument("--timeout", type=float, default=1.0, help="a probe's patience in seconds")
    args = ap.parse_args()
    rows: list[tuple[str, str]] = []
    if args.only in (None, "lxc"):
        rows += lxc_cells(args)
    if args.only in (None, "default"):
        rows += default_cells(args)
    if args.only in (None, "dns"):
        rows += dns_cells(args)
    if args.only in (None, "members"):
        for label in [args.member_vip] if args.member_vip else VIP_ON_MEMBERS:
            rows.append((f"`cplb/control-plane-kube-vip` upgrade (3 members, one at a time), through the {label} VIP "
                         "on the members", cell(vip_on_members(label, args.runs, args.timeout))))
    emit(f"rolling image upgrades as a client sees them ({args.runs} runs per cell; a new TLS connection every 10 ms, "
         f"{args.timeout:g} s timeout, plus an API load)", rows, args.record)
    return 0


def lxc_cells(args) -> list[tuple[str, str]]:
    results: dict = {}
    with pulumi_stack(values(), prefix="brl") as (_project, name, stack):
        result = stack.up(on_output=quiet)
        kubeconfig = result.outputs["clusters"].value[CLUSTER]["kubeconfig"]
        lbs = result.outputs["loadBalancers"].value
        endpoints = {label: (lbs[label]["endpoint"].rsplit(":", 1)[0], 6443) for label in ("pair", "single")}
        for n in range(args.runs):
            # The pair's handover with its connections taken over by the new holder, and without (CPLB_TAKEOVER=0,
            # as before 2026-12-07's evening), then the control plane.
            for image, mode, env in (("haproxy", "", {}), ("haproxy", "no takeover", {"CPLB_TAKEOVER": "0"}),
                                     ("control-plane", "", {})):
                found = one_rollout(stack, kubeconfig, endpoints if not mode else {"pair": endpoints["pair"]},
                                    image, f"bench-{name}-{n}{'-b' if mode else ''}", args.timeout, env)
                for label, figures in found.items():
                    key = f"{label}, {mode}" if mode else label
                    results.setdefault((image, key), []).append(figures)
                    print(f"run {n + 1} {image} via {key}: gap {figures['outage']:.3f} s, {figures['failed']} "
                          f"failed probes, {figures['api_failed']} failed API requests, up {figures['up']:.1f} s",
                          flush=True)
    for image in ("control-plane", "haproxy"):
        build_image_version(image)  # back to the checkout's recipes
    pair, single = results[("haproxy", "pair")], results[("haproxy", "single")]
    before = results[("haproxy", "pair, no takeover")]
    gap = lambda runs: max(statistics.median(r["outage"] for r in runs), 1e-3)  # noqa: E731
    ratio = gap(single) / gap(pair)
    return [
        ("`cplb/haproxy` upgrade, lxc pair (VIP, advert 0.02 s), connections taken over", cell(pair)),
        ("`cplb/haproxy` upgrade, lxc pair, without the takeover (CPLB_TAKEOVER=0)", cell(before)),
        ("without / with the takeover, longest gap (median)", f"{gap(before) / gap(pair):.1f}x"),
        ("`cplb/haproxy` upgrade, lxc single replica (rebuilt in place)", cell(single)),
        ("single / pair, longest gap (median)", f"{ratio:.0f}x"),
        ("lxc pair, all at once (before rollouts)", ALL_AT_ONCE_PAIR),
        ("`cplb/control-plane` upgrade (3 members, one at a time), through the pair",
         cell(results[("control-plane", "pair")])),
        ("`cplb/control-plane` upgrade, through the single replica", cell(results[("control-plane", "single")])),
    ]


if __name__ == "__main__":
    sys.exit(main())
