"""One or more haproxy instances in front of the backends, the part `lxc` and `oci` share: the instances, haproxy.cfg
pushed, validated and reloaded (master-worker, SIGUSR2: the instances stay), a VRRP pair when there are replicas,
and the balancer's status. A strategy module says what the instances are made from and what it checks first.
"""

from __future__ import annotations

import time
from typing import Optional

import pulumi

from components.common import LoadBalancerArgs, instance_config
from components.members import Members, build_members
from components.haproxy import (
    CLUSTER_CA, HAPROXY_CFG, HAPROXY_RELOAD, HAPROXY_VALIDATE, KEEPALIVED_CONF,
    KEEPALIVED_RELOAD, KEEPALIVED_VALIDATE, MONITOR_PORT, backends_settle_seconds, haproxy_drain, render_haproxy,
    rendered_backends,
)
import health
from components.render import render
from components.status import backends_condition, balancer_status, condition, ready_condition
from components.targets import port_pairs, routing
from providers.instance import Instance
from providers.instance_file import InstanceFile
from spec import LoadBalancerSpec


# Every replica has the same priority: a backup takes the VIP only from a holder whose priority is lower (its check
# failing, -100) or that leaves (priority 0), never from a healthy one. With distinct priorities, the highest took
# the VIP back as soon as it was up again after a rollout's rebuild or a crash: a second move, abrupt for every
# connection the other had taken (keepalived's own preemption, which neither drains nor hands connections over).
VRRP_PRIORITY = 150


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


def read_status(probe: dict, client) -> dict:
    """The balancer as it is now: its instances running, the endpoint answering, and every backend as haproxy's
    own checks see it (the runtime API of the first running replica)."""
    incus = client()
    names = probe["instances"]
    states = {n: (incus.get_instance(n) or {}).get("status", "Missing") for n in names}
    running = [n for n in names if states[n] == "Running"]
    wanted = set(probe["backends"])
    servers: dict = {}
    # A server that just became ready is seen by haproxy's next check: wait a little (bounded) for it.
    settle = backends_settle_seconds()
    deadline = time.monotonic() + settle
    while running:
        servers = health.haproxy_servers(incus, running[0], settle_seconds=min(5.0, settle))
        if all(servers.get(n) for n in wanted) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return {"conditions": [
        condition("Exists", len(running) == len(names), "InstancesRunning" if len(running) == len(names)
                  else "InstancesNotRunning", f"{len(running)} of {len(names)} haproxy instances running"),
        ready_condition(probe["endpoints"], health.endpoint_answers),
        backends_condition(sum(bool(servers.get(n)) for n in wanted), len(wanted),
                           f"haproxy runtime API of {running[0] if running else names[0]}"),
    ]}


HAPROXY_TYPES = ("cplb:lb:LxcLoadBalancer", "cplb:lb:OciLoadBalancer")


class HaproxyBalancer(pulumi.ComponentResource):
    """haproxy instances of one balancer. A strategy subclass sets TYPE, STRATEGY (its module reads the status),
    where haproxy.cfg goes and how haproxy reloads, and what the instances are made from."""

    TYPE = ""
    STRATEGY = ""
    CONFIG_PATH = HAPROXY_CFG
    RELOAD = HAPROXY_RELOAD

    def instance_source(self, args: LoadBalancerArgs) -> dict:
        """Instance keyword arguments that say what the instance is made from."""
        raise NotImplementedError

    def instance_config(self, args: LoadBalancerArgs, labels: dict) -> dict:
        return instance_config(args.spec.lxc_spec.instance, labels)

    def __init__(self, name: str, args: LoadBalancerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        # `lxc` and `oci` name their instances alike: a balancer that changes between them stays one resource
        # (aliases), so its instance is replaced delete-first, instead of a new one being made beside it and then
        # deleted by name with the old one.
        aliases = [pulumi.Alias(type_=t) for t in HAPROXY_TYPES if t != self.TYPE]
        super().__init__(self.TYPE, name, None, pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(aliases=aliases)))
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
        source = dict(self.instance_source(args))
        image, target = source.pop("image"), source.pop("target", None)
        # Replicas roll one at a time, the VIP's holder last: a standby is rebuilt while the holder serves, then the
        # holder stops gracefully (keepalived advertises priority 0, so a rebuilt standby takes the VIP at once).
        holder = facts.vip_holders([lxc.vip]).get(lxc.vip) if ha else None
        order = sorted(range(len(names)), key=lambda i: (names[i] == holder, -i))
        self.instances: list[Instance] = build_members(self, ctx, facts, Members(
            resource_names=[f"{name}-haproxy-{n}" for n in range(1, lxc.replicas + 1)], names=names,
            image=image, image_field=f"{args.field}.lxc.instanceSpec.image", owner_id=f"lb/{lb.name}",
            config=self.instance_config(args, labels), devices=ctx.devices(lxc.instance.network),
            health={"kind": "haproxy", "port": port, "vrrp": ha, "monitorPort": MONITOR_PORT},
            order=order, wait_seconds=300, common=source,
            per_member=lambda n: {"target": ctx.placement(target, n), "ignore_addresses": [lxc.vip] if ha else []},
            singleton_note="rolling it to a new image takes the endpoint down while it is rebuilt (a stop, a "
                           "rebuild and a start: about 14 s measured on a 2-core machine, docs/benchmarks.md, "
                           "rollout); with `replicas: 2` and a VIP, about 0.1 s",
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
                conf = render_vrrp_pair(ctx.stack, lb, names[n - 1], VRRP_PRIORITY, prefix_len)
                # The file holds the VRRP password: keep it a secret in state, diffs and previews.
                conf = pulumi.Output.secret(conf) if lxc.auth_pass else conf
                self.files.append(InstanceFile(
                    f"{name}-keepalived-conf-{n}",
                    instance=inst.name, instance_uuid=inst.uuid, path=KEEPALIVED_CONF, content=conf,
                    connection=ctx.connection, credentials=ctx.credentials,
                    validate_command=KEEPALIVED_VALIDATE, reload_command=KEEPALIVED_RELOAD, opts=child, mode="0600",
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
        probe = pulumi.Output.all(self.endpoints, resolved).apply(lambda v: {
            "strategy": self.STRATEGY, "balancer": lb.name, "instances": names, "endpoints": v[0],
            "backends": sorted(b.name for b in v[1])})
        self.status, _ = balancer_status(name, self, ctx, probe, trigger=files_done, after=args.ready_after,
                                         instances=(*self.instances, *[b.resource for b in backends]))
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
        # The routing table is a stack output already; a second copy in the component would be serialized and
        # stored again on every run (at 20 balancers x 50 targets, a tenth of a preview).
        self.register_outputs({"endpoint": self.endpoint})
