"""What every haproxy-based strategy shares (`lxc`, `oci`, and `keepalived` in userspace mode): where the files go,
how they are checked and reloaded, and haproxy.cfg itself, rendered from one template."""

from __future__ import annotations

from typing import Optional

import pulumi

from components.render import render
from providers.haproxy_runtime import RUNTIME_PORT
from spec import HAPROXY_MONITOR_PORT, LoadBalancerSpec

HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
MONITOR_PORT = HAPROXY_MONITOR_PORT
HAPROXY_VALIDATE = ["haproxy", "-c", "-q", "-f", "{path}"]
# Reload only when haproxy is already up; on first push the service starts by itself once the file exists.
HAPROXY_RELOAD = ["sh", "-c", "if [ -s /run/haproxy.pid ]; then kill -USR2 $(cat /run/haproxy.pid); fi"]
KEEPALIVED_VALIDATE = ["keepalived", "-t", "-f", "{path}"]
KEEPALIVED_RELOAD = ["sh", "-c", "if [ -s /run/keepalived.pid ]; then kill -HUP $(cat /run/keepalived.pid); fi"]


class RenderedBackend:
    """A backend as the template sees it: addresses already resolved and checked."""

    def __init__(self, name: str, address: str, address6: str = ""):
        self.name, self.address, self.address6 = name, address, address6

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
        monitor_port=MONITOR_PORT, drain_seconds=max(lb.drain.timeout_seconds, 1), runtime_port=RUNTIME_PORT,
    )


def haproxy_drain(lb: LoadBalancerSpec) -> dict:
    """How InstanceFile applies a haproxy.cfg that drops servers (see providers/haproxy_runtime.py)."""
    return {"kind": "haproxy", "timeoutSeconds": lb.drain.timeout_seconds}


def rendered_backends(backends) -> "pulumi.Output[list[RenderedBackend]]":
    from components.targets import rows_of

    return rows_of([(b.name, b.address, b.address6) for b in backends]).apply(
        lambda rows: [RenderedBackend(n, a or "", a6 or "") for n, a, a6 in rows if a or a6])
