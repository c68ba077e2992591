"""When a member of a group (a control-plane node, a haproxy replica, a proxy node) may go down for an image upgrade,
and when it is back: what a rolling rebuild in providers/instance.py waits on.

The component says what healthy means for its members (`health`, plain data):
- {"kind": "https", "port": 6443, "path": "/readyz", "caCert": PEM}: the API server is ready, its certificate
  verified against the cluster CA (its /readyz includes its etcd member);
- {"kind": "haproxy", "port": P, "vrrp": bool}: haproxy answers on the member's own address, its runtime API has a
  server UP, and with VRRP keepalived runs and its check passes (so the member can take the VIP);
- {"kind": "tcp", "port": P}: something answers on the port;
- {"kind": "kubelet"}: a worker's kubelet answers its /healthz (on the node's loopback, asked inside it);
- {} or no kind: the member runs and has its address.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Optional

from providers import haproxy_runtime
from providers.incus_client import addresses_of
from providers.probes import https_probe, tcp_probe

POLL_SECONDS = 0.5


def member_health(client, name: str, health: dict) -> tuple[bool, str]:
    """(healthy, why not) of one member, read now."""
    inst = client.get_instance(name)
    if inst is None:
        return False, "missing"
    if inst.get("status") != "Running":
        return False, inst.get("status", "not running").lower()
    address = (addresses_of(inst).get("inet") or addresses_of(inst).get("inet6") or [""])[0]
    if not address:
        return False, "no address yet"
    kind, port = health.get("kind"), int(health.get("port") or 0)
    if kind == "kubelet":
        rc, _, _ = client.exec(name, ["sh", "-c", "printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | "
                                                  "nc -w 2 127.0.0.1 10248 | head -n 1 | grep -q ' 200 '"])
        return rc == 0, "healthy" if rc == 0 else "kubelet's /healthz does not answer 200"
    if kind == "https":
        found = https_probe(address, port, health.get("path") or "/readyz", health.get("caCert") or "")
        return found == "ok", f"{health.get('path')} on {address}:{port}: {found}"
    if kind in ("tcp", "haproxy"):
        found = tcp_probe(address, port, timeout=1.0)
        if found != "ok":
            return False, f"{address}:{port}: {found}"
    if kind == "haproxy":
        rows = haproxy_runtime.show_stat(client, name)
        if not any(r.get("status", "").startswith("UP") for r in rows):
            return False, "haproxy has no server UP yet"
        if health.get("vrrp"):
            # The check keepalived itself tracks (haproxy's monitor on loopback), asked with busybox nc: busybox wget
            # segfaults when run through `incus exec` (seen with Debian 12's 1.35, for a 200 as for a refusal).
            monitor = int(health.get("monitorPort") or 0)
            rc, _, _ = client.exec(name, ["sh", "-c", "pidof keepalived >/dev/null && printf 'GET /healthz HTTP/1.0"
                                                      f"\\r\\n\\r\\n' | nc -w 2 127.0.0.1 {monitor} | head -n 1 "
                                                      "| grep -q ' 200 '"])
            if rc != 0:
                return False, "keepalived is not running, or its haproxy check fails"
    return True, "healthy"


def wait_healthy(client, names: list[str], health: dict, seconds: float) -> Optional[str]:
    """Wait (bounded) until every member named is healthy; None when they are, else what the last look found."""
    deadline = time.monotonic() + seconds
    while True:
        problems = []
        for name in names:
            ok, why = member_health(client, name, health)
            if not ok:
                problems.append(f"{name}: {why}")
        if not problems:
            return None
        if time.monotonic() >= deadline:
            return "; ".join(problems)
        time.sleep(POLL_SECONDS)


# How long a peer sends a leaving holder's connections on at most (cplb-takeover's element timeout): the holder's
# drain (keepalived 3 s, haproxy's soft stop 10 s, images/common/usr/local/bin/cplb-shutdown) and some margin.
TAKEOVER_SECONDS = 30
TAKEOVER = "/usr/local/bin/cplb-takeover"


@contextlib.contextmanager
def connections_handed_over(client, name: str, inst: dict, peers: list[str], health: dict,
                            vips: Optional[list[str]] = None) -> Iterator[None]:
    """While a VRRP replica that holds the VIP is stopped for its rebuild, its peers send the packets of the
    connections it still serves on to it (images/haproxy/usr/local/bin/cplb-takeover) instead of resetting them once
    the VIP has moved: the connections open at the handover finish on the old holder. A standby (no VIP on its eth0)
    serves nothing through the VIP: its peers are not asked. Best effort: a peer on an image without the command
    resets them, as before."""
    vips = list(vips or [])
    on_eth0 = addresses_of(inst).get("inet") or []
    address = (addresses_of(inst, frozenset(vips)).get("inet") or [""])[0]
    holds_vip = not vips or any(v in on_eth0 for v in vips)
    helpers = []
    # CPLB_TAKEOVER=0: the handover as it was before (bench/rollout.py measures both in one run).
    if health.get("kind") == "haproxy" and health.get("vrrp") and address and holds_vip and \
            os.environ.get("CPLB_TAKEOVER") != "0":
        for peer in peers:
            try:
                rc, _, _ = client.exec(peer, [TAKEOVER, "accept", address, str(TAKEOVER_SECONDS)], timeout=10)
            except Exception:  # noqa: BLE001 - a peer that cannot help leaves the handover as it was before
                continue
            if rc == 0:
                helpers.append(peer)
    try:
        yield
    finally:
        for peer in helpers:
            try:
                client.exec(peer, [TAKEOVER, "release", address], timeout=10)
            except Exception:  # noqa: BLE001 - the element's own timeout ends it
                pass


# The longest a rollout waits for clients to forget a withdrawn proxy node (its name's TTL, at most this): a name with
# a TTL of hours is not worth hours per node; such clients see the node's stop as before.
WITHDRAW_WAIT_MAX_SECONDS = 300.0


@contextlib.contextmanager
def withdrawn_from_dns(name: str, inst: dict, withdraw: Optional[dict]) -> Iterator[None]:
    """A dns strategy's proxy node leaves the records of its name before it goes down for a rollout, and the rollout
    waits the name's TTL, so that clients that resolve the name again stop connecting to it before it stops; the
    address is published again once the node is back and healthy (the end of the block without an error). A node
    that comes back unhealthy stays out: the balancer's record set publishes healthy nodes only, and reads the server
    at its next diff. Nothing is withdrawn when it would leave the name without an address (a single node), or when
    the server cannot be asked (the rollout goes on as it did before)."""
    from providers import dns_records

    if not withdraw or withdraw.get("kind") != "dns":
        yield
        return
    found = addresses_of(inst)
    mine_all = set(found.get("inet", []) + found.get("inet6", []))
    try:
        current = dns_records.published(withdraw)
        mine = sorted(a for a in current if a in mine_all)
        if not mine or not [a for a in current if a not in mine_all]:
            mine = []
        if mine:
            dns_records.withdraw(withdraw, mine)
    except dns_records.DnsError:
        mine = []
    if mine:
        time.sleep(min(float(withdraw.get("ttl") or 0), WITHDRAW_WAIT_MAX_SECONDS))
    yield
    if mine:
        dns_records.restore(withdraw, mine)
