"""What every haproxy-based strategy shares (`lxc`, `oci`, and `keepalived` in userspace mode): where the files go,
how they are checked and reloaded, and haproxy.cfg itself, rendered from one template."""

from __future__ import annotations

import shlex
from typing import Optional

import pulumi

from components.render import render
from providers.haproxy_runtime import FAIL_OPEN_SUFFIX, RUNTIME_PORT
from spec import HAPROXY_MONITOR_PORT, LoadBalancerSpec

HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
MONITOR_PORT = HAPROXY_MONITOR_PORT
HAPROXY_VALIDATE = ["haproxy", "-c", "-q", "-f", "{path}"]
# A reload starts a new worker, and haproxy 2.6 (no `init-state`) starts every server of it up, down only at its
# first failed check: a server that was down, or an API server in its shutdown delay, would get new connections for
# up to a check interval (seen: a TLS handshake cut short while etcd moved to its own CA). So the old worker's server
# states are saved for the new one (server-state-file), for the servers whose line is unchanged only: haproxy puts a
# saved address and port over the config's (haproxy issues #1412, #3296), so a row is kept only when its backend,
# name, address and port (or check port, for a range) are those of a `server` line of the new haproxy.cfg.
SERVER_STATE_FILE = "/run/haproxy/server-state"
_KEEP_UNCHANGED_SERVERS = r"""
NR == FNR {
    if ($1 == "backend") backend = $2
    else if ($1 == "server") keep[backend " " $2 " " $3 ($4 == "port" ? " port " $5 : "")] = 1
    next
}
FNR == 1 || /^#/ { print; next }
NF >= 22 {
    address = ($5 ~ /:/) ? "[" $5 "]" : $5
    if ((($2 " " $4 " " address ":" $19) in keep) || ($19 == 0 && (($2 " " $4 " " address " port " $22) in keep)))
        print
}
"""


def haproxy_reload_command(config: str = HAPROXY_CFG, pid_file: str = "/run/haproxy.pid",
                           state_file: str = SERVER_STATE_FILE, runtime_port: int = RUNTIME_PORT) -> list[str]:
    """Reload only when haproxy is already up (on first push the service starts by itself once the file exists),
    with the servers' states carried over. If the states cannot be read, the reload goes on without them."""
    dump = f"{state_file}.dump"
    return ["sh", "-c", (
        f"[ -s {pid_file} ] || exit 0; "
        f"if echo 'show servers state' | nc 127.0.0.1 {runtime_port} > {dump} && [ \"$(head -n 1 {dump})\" = 1 ] "
        f"&& awk {shlex.quote(_KEEP_UNCHANGED_SERVERS)} {config} {dump} > {state_file}.new; "
        f"then mv {state_file}.new {state_file}; else rm -f {state_file} {state_file}.new; fi; rm -f {dump}; "
        f"kill -USR2 $(cat {pid_file})")]


HAPROXY_RELOAD = haproxy_reload_command()
KEEPALIVED_VALIDATE = ["keepalived", "-t", "-f", "{path}"]
KEEPALIVED_RELOAD = ["sh", "-c", "if [ -s /run/keepalived.pid ]; then kill -HUP $(cat /run/keepalived.pid); fi"]


class RenderedBackend:
    """A backend as the template sees it: addresses already resolved and checked."""

    def __init__(self, name: str, address: str, address6: str = "", verify_name: str = ""):
        self.name, self.address, self.address6 = name, address, address6
        # An instance's name, which its serving certificate carries (providers/pki.py): `https` checks against the
        # cluster CA also verify it, so a certificate of another member, or of nobody, never makes it healthy.
        self.verify_name = verify_name

    def __getitem__(self, attr: str) -> str:
        return getattr(self, attr)

    def address_port(self, attr: str, port: Optional[int]) -> str:
        address = getattr(self, attr)
        host = f"[{address}]" if ":" in address else address
        return f"{host}:{port}" if port else host


def haproxy_families(families, ipv4_binds=("0.0.0.0",)) -> list[dict]:
    """One frontend/backend pair per address family: IPv4 clients reach IPv4 backends, IPv6 clients IPv6
    backends (so a dual-stack endpoint really reaches the backends over both families)."""
    out = []
    if "IPv4" in families:
        out.append({"suffix": "", "binds": list(ipv4_binds), "opts": "", "attr": "address"})
    if "IPv6" in families:
        out.append({"suffix": "_v6", "binds": ["::"], "opts": "v6only", "attr": "address6"})
    return out


CLUSTER_CA = "/etc/haproxy/cluster-ca.crt"
BACKENDS_SETTLE_SECONDS = 10.0
# `make watch` sets it to 0: its `up` reads the status as it is at once (never holding the stack for a backend's first
# checks, which would delay the next event's reload) and re-reads it a moment later (reconcile.py).
SETTLE_ENV = "CPLB_STATUS_SETTLE_SECONDS"


def backends_settle_seconds() -> float:
    """How long a status read waits for new backends' first checks: BACKENDS_SETTLE_SECONDS, or the watch's 0."""
    import os

    try:
        return max(0.0, float(os.environ.get(SETTLE_ENV, BACKENDS_SETTLE_SECONDS)))
    except ValueError:
        return BACKENDS_SETTLE_SECONDS


def fastinter_milliseconds(hc) -> int:
    """The check interval while a check is failing: a quarter of `intervalSeconds`, at least 100 ms, so a server
    that stopped answering is down after about `inter + (fall - 1) * fastinter` instead of `fall * inter`."""
    return max(100, hc.interval_seconds * 250)


def render_haproxy(stack: str, lb: LoadBalancerSpec, backends: list[RenderedBackend],
                   ipv4_binds=("0.0.0.0",), ca_file: str = "") -> str:
    """`ca_file`: where the cluster CA is in the instance; `https` checks verify the API servers against it."""
    return render(
        "haproxy.cfg.j2", ca_file=ca_file,
        stack=stack, lb=lb, hc=lb.health_check, ports=lb.ports, backends=backends,
        # Bind on every address: the VIP comes and goes with VRRP, and the instance's own address works too.
        families=haproxy_families(lb.ip_families, ipv4_binds),
        fastinter_ms=fastinter_milliseconds(lb.health_check),
        monitor_port=MONITOR_PORT, server_state_file=SERVER_STATE_FILE, drain_seconds=max(lb.drain.timeout_seconds, 1), runtime_port=RUNTIME_PORT,
        fail_open=bool(lb.health_check.scheme and lb.health_check.fail_open), fail_open_suffix=FAIL_OPEN_SUFFIX,
    )


def haproxy_drain(lb: LoadBalancerSpec) -> dict:
    """How InstanceFile applies a haproxy.cfg that drops servers (see providers/haproxy_runtime.py)."""
    return {"kind": "haproxy", "timeoutSeconds": lb.drain.timeout_seconds}


def rendered_backends(backends) -> "pulumi.Output[list[RenderedBackend]]":
    from components.targets import rows_of

    instances = {b.name for b in backends if b.source != "address"}
    return rows_of([(b.name, b.address, b.address6) for b in backends]).apply(
        lambda rows: [RenderedBackend(n, a or "", a6 or "", n if n in instances else "") for n, a, a6 in rows
                      if a or a6])
