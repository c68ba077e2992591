"""The `lxc` strategy: haproxy in Incus system containers, optionally a VRRP pair (or more) sharing a VIP.

Built from Instance (one per replica) and InstanceFile (haproxy.cfg, and keepalived.conf when HA).
A backend change rewrites haproxy.cfg and reloads haproxy (master-worker, SIGUSR2): the instances stay.
"""

from __future__ import annotations

from typing import Optional

import pulumi

from components.common import LoadBalancerArgs, instance_config
from components.render import render
from components.targets import routing
from providers.instance import Instance
from providers.instance_file import InstanceFile
from spec import LoadBalancerSpec

HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
MONITOR_PORT = 8405
HAPROXY_VALIDATE = ["haproxy", "-c", "-q", "-f", "{path}"]
# Reload only when haproxy is already up; on first push the service starts by itself once the file exists.
HAPROXY_RELOAD = ["sh", "-c", "if [ -s /run/haproxy.pid ]; then kill -USR2 $(cat /run/haproxy.pid); fi"]
KEEPALIVED_VALIDATE = ["keepalived", "-t", "-f", "{path}"]
KEEPALIVED_RELOAD = ["sh", "-c", "if [ -s /run/keepalived.pid ]; then kill -HUP $(cat /run/keepalived.pid); fi"]


class RenderedBackend:
    def __init__(self, name: str, address: str):
        self.name, self.address = name, address

    def address_port(self, port: int) -> str:
        return f"[{self.address}]:{port}" if ":" in self.address else f"{self.address}:{port}"


def render_haproxy(stack: str, lb: LoadBalancerSpec, backends: list[RenderedBackend]) -> str:
    return render(
        "haproxy.cfg.j2",
        stack=stack, lb=lb, hc=lb.health_check, ports=lb.ports, backends=backends,
        # Bind on every address: the VIP comes and goes with VRRP, and the instance's own address works too.
        bind_addresses=["::"] if "IPv6" in lb.ip_families else ["0.0.0.0"],
        bind_opts=" v4v6" if "IPv6" in lb.ip_families else "",
        monitor_port=MONITOR_PORT, drain_seconds=max(lb.drain.timeout_seconds, 1),
    )


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
        self.instances: list[Instance] = []
        for n in range(1, lxc.replicas + 1):
            self.instances.append(Instance(
                f"{name}-haproxy-{n}",
                name=ctx.object_name(lb.name, "haproxy", str(n)),
                connection=ctx.connection,
                credentials=ctx.credentials,
                owner_stack=ctx.stack,
                owner_id=f"lb/{lb.name}",
                config=instance_config(lxc.instance, labels),
                devices=ctx.devices(lxc.instance.network),
                ignore_addresses=[lxc.vip] if ha else [],
                opts=child,
                **self.instance_source(args),
            ))

        backends = args.backends
        names = [b.name for b in backends]
        resolved = pulumi.Output.all(*[b.address for b in backends]).apply(
            lambda addrs: [RenderedBackend(n, a) for n, a in zip(names, addrs) if a]
        )
        haproxy_cfg = resolved.apply(lambda bs: render_haproxy(ctx.stack, lb, bs))
        self.files: list[InstanceFile] = []
        for n, inst in enumerate(self.instances, start=1):
            self.files.append(InstanceFile(
                f"{name}-haproxy-cfg-{n}",
                instance=inst.name, instance_uuid=inst.uuid, path=self.CONFIG_PATH, content=haproxy_cfg,
                connection=ctx.connection, credentials=ctx.credentials,
                validate_command=HAPROXY_VALIDATE, reload_command=self.RELOAD, opts=child,
            ))
            if ha:
                conf = render(
                    "keepalived-haproxy.conf.j2",
                    stack=ctx.stack, lb_name=lb.name, router_id=ctx.object_name(lb.name, "haproxy", str(n)),
                    monitor_port=MONITOR_PORT, instance_name=f"VI_{lb.name.replace('-', '_')}",
                    interface="eth0", virtual_router_id=lxc.virtual_router_id,
                    priority=200 - 10 * n, auth_pass=lxc.auth_pass, vip=lxc.vip, prefix_len=prefix_len,
                )
                # The file holds the VRRP password: keep it a secret in state, diffs and previews.
                conf = pulumi.Output.secret(conf) if lxc.auth_pass else conf
                self.files.append(InstanceFile(
                    f"{name}-keepalived-conf-{n}",
                    instance=inst.name, instance_uuid=inst.uuid, path=KEEPALIVED_CONF, content=conf,
                    connection=ctx.connection, credentials=ctx.credentials,
                    validate_command=KEEPALIVED_VALIDATE, reload_command=KEEPALIVED_RELOAD, opts=child,
                ))

        addresses = pulumi.Output.all(*[i.address for i in self.instances])
        if ha:
            self.endpoint = pulumi.Output.from_input(f"{lxc.vip}:{port}")
        else:
            self.endpoint = self.instances[0].address.apply(lambda a: f"{a}:{port}")
        # Outputs wait for the config files, so `endpoint` is only reported once it serves.
        files_done = pulumi.Output.all(*[f.content_hash for f in self.files])
        self.outputs = pulumi.Output.all(self.endpoint, addresses, resolved, files_done).apply(
            lambda v: {
                "type": lb.type,
                "endpoint": v[0],
                "addresses": v[1],
                "mode": "vrrp" if ha else "single",
                "vip": lxc.vip,
                "backends": [
                    {"name": b.name, "address": b.address, "port": p.backend_port, "portName": p.name}
                    for p in lb.ports for b in v[2]
                ],
            }
        )
        self.routing = routing(backends)
        self.register_outputs({"endpoint": self.endpoint, "routing": self.routing})
