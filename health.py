"""Reading how a balancer is doing right now: endpoint probes, haproxy server states, DNS answers.

Like facts.py this never changes anything. The status outputs (components/status.py) call it at `up`, after the
config files are in place; `scripts/status` reads the same things for its table. Probes go only to the stack's
own instances, VIPs and listen addresses, and to the stack's DNS server.
"""

from __future__ import annotations

import time

from providers.probes import https_probe, tcp_probe
from spec import split_host_port
from providers import haproxy_runtime


def split_endpoint(endpoint: str) -> tuple[str, int]:
    return split_host_port(endpoint)


def endpoint_answers(endpoint: str, wait_seconds: float = 8.0) -> bool:
    """A TCP connection to the endpoint succeeds. Right after `up` made the balancer, the service may still be
    starting (refused) or a new IPv6 address still in duplicate address detection (no answer): both get
    `wait_seconds` before the answer is no."""
    host, port = split_endpoint(endpoint)
    deadline = time.monotonic() + wait_seconds
    while True:
        result = tcp_probe(host, port, timeout=2.0)
        if result == "ok" or time.monotonic() >= deadline:
            return result == "ok"
        time.sleep(0.25)


def haproxy_servers(client, instance: str, settle_seconds: float = 5.0) -> dict[str, bool]:
    """Server name -> up, from the runtime API (`show stat`) of one balancer instance. A server is up when all
    of its rows (one per port and family) are UP. Waits up to `settle_seconds` while first checks are pending."""
    deadline = time.monotonic() + settle_seconds
    while True:
        rows = haproxy_runtime.show_stat(client, instance)
        pending = any(r.get("check_status", "").startswith("INI") for r in rows)
        if rows and not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    servers: dict[str, bool] = {}
    for r in rows:
        up = r.get("status", "").startswith("UP")
        servers[r["svname"]] = servers.get(r["svname"], True) and up
    return servers


def dns_answers(server: str, fqdn: str) -> list[str]:
    """A and AAAA records of `fqdn`, asked of the stack's own DNS server (not a resolver)."""
    import dns.message
    import dns.query
    import dns.rdatatype

    host, port = split_endpoint(server)
    found: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            reply = dns.query.udp(dns.message.make_query(fqdn, rdtype), host, port=port, timeout=2.0)
        except Exception:  # noqa: BLE001 - an unreachable server is what the condition reports
            continue
        for rrset in reply.answer:
            found += [r.to_text() for r in rrset]
    return sorted(found)


def node_probe(settings: dict | None):
    """The probe of a `dns` proxy node as `up` and scripts/watch both use it: a TCP connect, or with `https`
    settings ({path, caCert, serverName}) the API server's readiness through the node, TLS verified."""
    if not settings or not settings.get("caCert"):
        return None  # the caller's TCP probe
    return lambda address, port: https_probe(address, port, settings["path"], settings["caCert"],
                                             settings.get("serverName", ""))
