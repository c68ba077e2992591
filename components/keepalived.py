"""The `keepalived` strategy (the k0s CPLB model): VRRP VIPs on the control-plane nodes themselves.

Each node selected by the targets gets `/etc/keepalived/keepalived.conf` (validated with `keepalived -t`,
reloaded with SIGHUP). A `track_script` asks the node's own API server, so a VIP leaves a node whose API
server is down. Virtual servers need the kernel's IPVS: where the nodes have it (`mode: ipvs`) they are
rendered as keepalived `virtual_server`s; where they do not (`mode: userspace`, these machines), keepalived
does VRRP only and haproxy on every node listens on VIP:port and balances to all the nodes' API servers.
"""

from __future__ import annotations

import time
from typing import Optional

import pulumi

from components.common import LoadBalancerArgs
from components.haproxy import (
    CLUSTER_CA, HAPROXY_CFG, HAPROXY_RELOAD, HAPROXY_VALIDATE, KEEPALIVED_CONF, KEEPALIVED_RELOAD, KEEPALIVED_VALIDATE,
    RenderedBackend, haproxy_drain, render_haproxy,
)
from components.render import Quoted, render
import health
from components.status import backends_condition, balancer_status, condition, ready_condition
from components.targets import port_pairs, routing
from facts import tcp_probe
from providers.incus_client import addresses_of
from providers.instance_file import InstanceFile

# The node's own API server, at the node's address (a real kube-apiserver binds it only, so that haproxy can bind
# VIP:port beside it). busybox wget does TLS without verifying: the check asks whether this node's server is ready,
# the balancer's haproxy verifies against the cluster CA.
HOLDER_WAIT_SECONDS = 15.0
CHECKS = {
    "tcp": "/bin/nc -w 1 {host} {port}",
    "http": "/bin/wget -q -T 1 -O /dev/null http://{host}:{port}{path}",
    "https": "/bin/wget -q -T 1 --no-check-certificate -O /dev/null https://{host}:{port}{path}",
}


def check_command(lb, host: str) -> str:
    hc = lb.health_check
    return CHECKS[hc.scheme or "tcp"].format(host=host or "127.0.0.1", port=lb.ports[0].backend_port,
                                             path=hc.http_path)


def vrrp_view(lb) -> list[dict]:
    """The VRRP instances as the template needs them (validated values only)."""
    out = []
    for i, vi in enumerate(lb.keepalived.vrrp_instances):
        out.append({
            "name": f"VI_{lb.name.replace('-', '_')}_{i}",
            "interface": vi.interface,
            "virtual_router_id": vi.router_id(i),
            "advert_int": vi.advert_int_text,
            "version3": vi.needs_v3,
            "auth_pass": vi.auth_pass,
            "unicast_peers": list(vi.unicast_peers),
            "unicast_source_ip": vi.unicast_source_ip,
            "virtual_ips": list(vi.virtual_ips),
        })
    return out


# The same priority on every node, for the reason given in components/haproxy_balancer.py (VRRP_PRIORITY): a node
# that comes back (rebuilt, restarted, its API server ready again) does not take the VIP back from a healthy holder.
NODE_PRIORITY = 200


def render_node_conf(stack: str, lb, node: str, index: int, addresses: list[str], mode: str,
                     check: Optional[str] = None) -> str:
    """keepalived.conf of one control-plane node (`addresses`: every node's address, in node order)."""
    port = lb.ports[0]
    return render(
        "keepalived-node.conf.j2", stack=stack, lb_name=lb.name, node=node,
        check_script=Quoted(check or check_command(lb, addresses[index] if index < len(addresses) else "")),
        priority=NODE_PRIORITY, vrrp_instances=vrrp_view(lb),
        virtual_servers=[vs.view(port.port) for vs in lb.keepalived.virtual_servers] if mode == "ipvs" else [],
        real_servers=[a for a in addresses if a],
    )


def detect_mode(lb, facts, node_names: list[str]) -> str:
    wanted = lb.keepalived.mode
    if wanted != "auto":
        return wanted
    return "ipvs" if facts.nodes_have_ipvs(node_names) else "userspace"


def vip_holders(incus, nodes: list[str], vips: list[str]) -> dict[str, str]:
    """VIP -> the node that has it on an interface now (read from Incus)."""
    held: dict[str, str] = {}
    for node in nodes:
        inst = incus.get_instance(node) or {}
        for family in addresses_of(inst).values():
            for address in family:
                if address in vips:
                    held.setdefault(address, node)
    return held


def read_status(probe: dict, client) -> dict:
    """The VIPs held, the endpoint answering, and each node's API server by a TCP probe (keepalived has no API
    that says how its checks see them)."""
    incus, vips, nodes = client(), probe["vips"], probe["nodes"]
    alive = sum(tcp_probe(a, probe["backendPort"]) == "ok" for a in probe["addresses"])
    # Right after a config push, VRRP needs the track script to rise and a few adverts to elect a holder.
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    held = vip_holders(incus, nodes, vips)
    while len(held) < len(vips) and time.monotonic() < deadline:
        time.sleep(0.5)
        held = vip_holders(incus, nodes, vips)
    return {"observed": {"holders": held}, "conditions": [
        condition("Exists", len(held) == len(vips), "VIPsHeld" if len(held) == len(vips) else "VIPNotHeld",
                  ", ".join(f"{vip} on {held.get(vip, 'nobody')}" for vip in vips)),
        ready_condition([f"{vip}:{probe['port']}" for vip in vips], health.endpoint_answers),
        backends_condition(alive, len(probe["addresses"]), "TCP probes of the nodes' API servers"),
    ]}


class KeepalivedLoadBalancer(pulumi.ComponentResource):
    @staticmethod
    def preflight(ctx, lb, field: str, facts) -> None:
        """Before anything is created: every VIP is a free address of the bridge's subnet."""
        for j, vi in enumerate(lb.keepalived.vrrp_instances):
            for k, vip in enumerate(vi.virtual_ips):
                address, prefix = vip.split("/")
                facts.check_vip(f"{field}.keepalived.vrrpInstances[{j}].virtualIPs[{k}]", address, ctx.incus.network,
                                prefix=int(prefix))

    def __init__(self, name: str, args: LoadBalancerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("cplb:lb:KeepalivedLoadBalancer", name, None, opts)
        ctx, lb, facts = args.ctx, args.spec, args.facts
        ka = lb.keepalived
        nodes = args.backends
        names = [n.name for n in nodes]
        mode = detect_mode(lb, facts, names)
        port = lb.ports[0]
        vips = [v.split("/")[0] for vi in ka.vrrp_instances for v in vi.virtual_ips]
        has_secret = any(vi.auth_pass for vi in ka.vrrp_instances)

        addresses = pulumi.Output.all(*[n.address for n in nodes])
        self.files: list[InstanceFile] = []
        verify = lb.health_check.scheme == "https" and args.cluster_ca is not None
        # keepalived.conf holds the VRRP password and makes its node a VIP holder: with a password it goes only to
        # the stack's own instances and those the config names. Labels anyone in the project can set earn neither.
        untrusted = {n.name for n in nodes if has_secret and n.resource is None and n.name not in ka.trusted_nodes}
        if untrusted:
            pulumi.log.warn(f"{args.field}: {', '.join(sorted(untrusted))} match the targets but are neither this "
                            f"stack's instances nor in {args.field}.keepalived.trustedNodes: they get no "
                            "keepalived.conf (it holds the VRRP password) and never hold the VIP")
        for i, node in enumerate(nodes):
            if node.name in untrusted:
                continue
            content = addresses.apply(lambda addrs, i=i, node=node: render_node_conf(
                ctx.stack, lb, node.name, i, list(addrs), mode))
            deps = [node.resource] if node.resource else []
            self.files.append(InstanceFile(
                f"{name}-keepalived-{node.name}",
                instance=node.name, instance_uuid=node.uuid, path=KEEPALIVED_CONF,
                content=pulumi.Output.secret(content) if has_secret else content, mode="0600",
                connection=ctx.connection, credentials=ctx.credentials,
                validate_command=KEEPALIVED_VALIDATE, reload_command=KEEPALIVED_RELOAD,
                redact=[vi.auth_pass for vi in ka.vrrp_instances if vi.auth_pass] or None,
                opts=pulumi.ResourceOptions(parent=self, depends_on=deps),
            ))
            if mode == "userspace":
                if verify:
                    deps = deps + [InstanceFile(
                        f"{name}-cluster-ca-{node.name}", instance=node.name, instance_uuid=node.uuid, path=CLUSTER_CA,
                        content=args.cluster_ca, connection=ctx.connection, credentials=ctx.credentials,
                        opts=pulumi.ResourceOptions(parent=self, depends_on=deps))]
                    self.files.append(deps[-1])
                haproxy_cfg = addresses.apply(lambda addrs: render_haproxy(
                    ctx.stack, lb, [RenderedBackend(n, a, verify_name=n) for n, a in zip(names, addrs) if a], ipv4_binds=vips,
                    ca_file=CLUSTER_CA if verify else ""))
                self.files.append(InstanceFile(
                    f"{name}-haproxy-{node.name}",
                    instance=node.name, instance_uuid=node.uuid, path=HAPROXY_CFG, content=haproxy_cfg,
                    connection=ctx.connection, credentials=ctx.credentials,
                    validate_command=HAPROXY_VALIDATE, reload_command=HAPROXY_RELOAD, drain=haproxy_drain(lb),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=deps),
                ))

        self.endpoint = pulumi.Output.from_input(f"{vips[0]}:{port.port}")
        done = pulumi.Output.all(*[f.content_hash for f in self.files])
        probe = addresses.apply(lambda addrs: {
            "strategy": "keepalived", "balancer": lb.name, "nodes": names, "vips": vips, "port": port.port,
            "addresses": [a for a in addrs if a], "backendPort": port.backend_port})
        self.status, observed = balancer_status(name, self, ctx, probe, trigger=done, after=args.ready_after,
                                                instances=[n.resource for n in nodes])
        self.endpoint_hosts = pulumi.Output.from_input([f"{vip}:{port.port}" for vip in vips])
        self.outputs = pulumi.Output.all(addresses, done, self.status, observed).apply(lambda v: {
            "type": "keepalived",
            "endpoint": f"{vips[0]}:{port.port}",
            "mode": mode,
            "vips": vips,
            # Read with the conditions (at `up` when the balancer changed, and at every refresh).
            "holders": {vip: (v[3].get("holders") or {}).get(vip) for vip in vips},
            "addresses": [a for a in v[0] if a],
            "backends": [{"name": n, "address": a, "port": port.backend_port} for n, a in zip(names, v[0]) if a],
            "status": v[2],
        })
        self.routing = routing(port_pairs(nodes, lb.ports))
        # `routing` is a stack output; not stored a second time (see haproxy_balancer.py).
        self.register_outputs({"endpoint": self.endpoint})
