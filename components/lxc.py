"""The `lxc` strategy: haproxy in Incus system containers, optionally a VRRP pair (or more) sharing a VIP.

Built from Instance (one per replica) and InstanceFile (haproxy.cfg, and keepalived.conf when HA).
A backend change rewrites haproxy.cfg and reloads haproxy (master-worker, SIGUSR2): the instances stay.
"""

from __future__ import annotations

import time
from typing import Optional

import pulumi

from components.common import LoadBalancerArgs, instance_config
import health
from components.render import render
from components.status import at_up, backends_condition, condition, ready_condition
from components.targets import port_pairs, routing
from providers.haproxy_runtime import RUNTIME_PORT
from providers.instance import Instance
from providers.instance_file import InstanceFile
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


def render_vrrp_pair(stack: str, lb: LoadBalancerSpec, router_id: str, priority: int, prefix_len: int) -> str:
    """keepalived.conf of one haproxy replica: the VIP follows a replica whose haproxy has a live backend."""
    lxc = lb.lxc_spec
    return render(
        "keepalived-haproxy.conf.j2",
        stack=stack, lb_name=lb.name, router_id=router_id,
        monitor_port=MONITOR_PORT, instance_name=f"VI_{lb.name.replace('-', '_')}",
        interface="eth0", virtual_router_id=lxc.virtual_router_id,
        priority=priority, auth_pass=lxc.auth_pass, advert_int=lxc.advert_int_text, version3=lxc.needs_v3, vip=lxc.vip, prefix_len=prefix_len,
    )


def haproxy_drain(lb: LoadBalancerSpec) -> dict:
    """How InstanceFile applies a haproxy.cfg that drops servers (see providers/haproxy_runtime.py)."""
    return {"kind": "haproxy", "timeoutSeconds": lb.drain.timeout_seconds}


def rendered_backends(backends) -> "pulumi.Output[list[RenderedBackend]]":
    rows = [pulumi.Output.all(b.name, b.address, b.address6) for b in backends]
    return pulumi.Output.all(*rows).apply(
        lambda rows: [RenderedBackend(n, a or "", a6 or "") for n, a, a6 in rows if a or a6])


class HaproxyLoadBalancer(pulumi.ComponentResource):
    """The `lxc` strategy. Subclasses change how the haproxy instance is made (see `oci`)."""

    TYPE = "cplb:lb:LxcLoadBalancer"
    CONFIG_PATH = HAPROXY_CFG
    RELOAD = HAPROXY_RELOAD

    def instance_source(self, args: LoadBalancerArgs) -> dict:
        """Instance keyword arguments that say what the instance is made from."""
        spec = args.spec.lxc_spec.instance
        return {
            "image": spec.image,
            "image_fingerprint": args.facts.image_fingerprint(f"{args.field}.lxc.instanceSpec.image", spec.image),
            "profiles": spec.profiles, "instance_type": spec.instance_type, "target": spec.target,
        }

    def __init__(self, name: str, args: LoadBalancerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(self.TYPE, name, None, opts)
        ctx, lb, facts = args.ctx, args.spec, args.facts
        lxc = lb.lxc_spec
        ha = lxc.replicas > 1
        prefix_len = facts.check_vip(f"{args.field}.lxc.vip", lxc.vip, ctx.incus.network) if ha else None
        port = lb.ports[0].port
        child = pulumi.ResourceOptions(parent=self)

        labels = {
            "user.cluster-name": lb.cluster,
            "user.cluster-role": "loadbalancer",
            "user.cplb.balancer": lb.name,
        }
        names = [ctx.object_name(lb.name, "haproxy", str(n)) for n in range(1, lxc.replicas + 1)]
        self.instances: list[Instance] = []
        for n in range(1, lxc.replicas + 1):
            self.instances.append(Instance(
                f"{name}-haproxy-{n}",
                name=names[n - 1],
                connection=ctx.connection,
                credentials=ctx.credentials,
                address_families=ctx.address_families,
                owner_stack=ctx.stack,
                owner_id=f"lb/{lb.name}",
                config=instance_config(lxc.instance, labels),
                devices=ctx.devices(lxc.instance.network),
                ignore_addresses=[lxc.vip] if ha else [],
                opts=child,
                **self.instance_source(args),
            ))

        backends = args.backends
        resolved = rendered_backends(backends)
        verify = lb.health_check.scheme == "https" and args.cluster_ca is not None
        haproxy_cfg = resolved.apply(lambda bs: render_haproxy(ctx.stack, lb, bs, ca_file=CLUSTER_CA if verify else ""))
        self.files: list[InstanceFile] = []
        for n, inst in enumerate(self.instances, start=1):
            ca_files = [InstanceFile(
                f"{name}-cluster-ca-{n}", instance=inst.name, instance_uuid=inst.uuid, path=CLUSTER_CA,
                content=args.cluster_ca, connection=ctx.connection, credentials=ctx.credentials, opts=child,
            )] if verify else []
            self.files += ca_files
            self.files.append(InstanceFile(
                f"{name}-haproxy-cfg-{n}",
                instance=inst.name, instance_uuid=inst.uuid, path=self.CONFIG_PATH, content=haproxy_cfg,
                connection=ctx.connection, credentials=ctx.credentials,
                validate_command=HAPROXY_VALIDATE, reload_command=self.RELOAD, drain=haproxy_drain(lb),
                opts=pulumi.ResourceOptions(parent=self, depends_on=ca_files),
            ))
            if ha:
                conf = render_vrrp_pair(ctx.stack, lb, names[n - 1], 200 - 10 * n, prefix_len)
                # The file holds the VRRP password: keep it a secret in state, diffs and previews.
                conf = pulumi.Output.secret(conf) if lxc.auth_pass else conf
                self.files.append(InstanceFile(
                    f"{name}-keepalived-conf-{n}",
                    instance=inst.name, instance_uuid=inst.uuid, path=KEEPALIVED_CONF, content=conf,
                    connection=ctx.connection, credentials=ctx.credentials,
                    validate_command=KEEPALIVED_VALIDATE, reload_command=KEEPALIVED_RELOAD, opts=child,
                    redact=[lxc.auth_pass] if lxc.auth_pass else None,
                ))

        addresses = pulumi.Output.all(*[i.address for i in self.instances])
        first = self.instances[0]
        families = lb.ip_families

        def endpoints(v4: str, v6: list) -> list[str]:
            out = []
            if "IPv4" in families:
                out.append(f"{lxc.vip if ha else v4}:{port}")
            if "IPv6" in families and v6:
                out.append(f"[{v6[0]}]:{port}")
            return out

        self.endpoints = pulumi.Output.all(first.address, first.ipv6).apply(lambda v: endpoints(v[0], v[1]))
        self.endpoint = self.endpoints.apply(lambda e: e[0] if e else "")
        # Outputs wait for the config files, so `endpoint` is only reported once it serves.
        files_done = pulumi.Output.all(*[f.content_hash for f in self.files])
        statuses = pulumi.Output.all(*[i.status for i in self.instances])

        def conditions(v) -> list[dict]:
            eps, states, rendered = v[0], v[1], v[2]
            running = sum(s == "Running" for s in states)
            wanted = {b.name for b in rendered}
            servers: dict = {}
            # A server that just became ready is seen by haproxy's next check: wait a little (bounded) for it.
            deadline = time.monotonic() + BACKENDS_SETTLE_SECONDS
            while running:
                servers = health.haproxy_servers(facts.client, names[0], settle_seconds=5.0)
                if all(servers.get(n) for n in wanted) or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
            return [
                condition("Exists", running == len(states), "InstancesRunning" if running == len(states)
                          else "InstancesNotRunning", f"{running} of {len(states)} haproxy instances running"),
                ready_condition(eps, health.endpoint_answers),
                backends_condition(sum(bool(servers.get(n)) for n in wanted), len(wanted),
                                   f"haproxy runtime API of {names[0]}"),
            ]

        self.status = at_up(pulumi.Output.all(self.endpoints, statuses, resolved, files_done), conditions,
                            after=args.ready_after)
        self.endpoint_hosts = pulumi.Output.all(self.endpoints, addresses).apply(lambda v: [*v[0], *v[1]])
        self.outputs = pulumi.Output.all(self.endpoints, addresses, resolved, files_done, self.status).apply(
            lambda v: {
                "type": lb.type,
                "endpoint": v[0][0] if v[0] else "",
                "endpoints": v[0],
                "ipFamilies": families,
                "addresses": v[1],
                "mode": "vrrp" if ha else "single",
                "vip": lxc.vip,
                "backends": [
                    {"name": b.name, "address": b.address, "address6": b.address6, "port": p.backend_port,
                     "portName": p.name}
                    for p in lb.ports for b in v[2]
                ],
                "status": v[4],
            }
        )
        self.routing = routing(port_pairs(backends, lb.ports), lb.ip_families)
        self.register_outputs({"endpoint": self.endpoint, "routing": self.routing})
