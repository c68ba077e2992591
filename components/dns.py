"""The `dns` strategy (the Claudie model): a pool of L4 proxy nodes (nginx stream) and one DNS name with an
A record per node that passes a health check when `up` runs.

Nodes `<stack>-<lb>-proxy-<n>` get `/etc/nginx/nginx.conf` (validated with `nginx -t`, reloaded with
`nginx -s reload`), one upstream and listener per role. The record set is published with a TSIG-signed
RFC 2136 UPDATE (`DnsRecordSet`). A node that dies keeps its record until the next `up`; `scripts/watch`
runs that `up` by itself when the healthy set changes, so a dead node's record goes away without a person.
"""

from __future__ import annotations

import time
from typing import Optional

import pulumi

from components.common import LoadBalancerArgs, instance_config
from components.members import Members, build_members
from components.render import render
from components.targets import resolve_targets, routing
import health
from components.status import backends_condition, balancer_status, condition, ready_condition
from facts import tcp_probe
from providers.dns_records import DnsRecordSet
from providers.instance import Instance
from providers.instance_file import InstanceFile

NGINX_CONF = "/etc/nginx/nginx.conf"
NGINX_VALIDATE = ["nginx", "-t", "-q", "-c", "{path}"]
NGINX_RELOAD = ["sh", "-c", "if [ -s /run/nginx.pid ]; then nginx -s reload; fi"]


def health_port(dns) -> int:
    api = [r for r in dns.roles if r.is_api_server]
    role = api[0] if api else dns.roles[0]
    return role.port if role.protocol == "tcp" else next((r.port for r in dns.roles if r.protocol == "tcp"), 0)


def healthy(addresses: list[str], port: int, *, wait_seconds: float,
            siblings: Optional[dict[str, str]] = None, probe=None) -> list[str]:
    """The node addresses that accept a TCP connection on `port`. At `up`, a node that refuses (it is there, its
    nginx is only starting after the config push) gets a few seconds; a node that does not answer at all is dead.
    `siblings` maps a node's IPv6 address to its IPv4 address."""
    siblings = siblings or {}
    pending = [a for a in addresses if a]
    if not port:
        return sorted(pending)
    ok: list[str] = []
    last: dict[str, str] = {}
    deadline = time.monotonic() + wait_seconds
    while pending:
        probes = {a: (probe or tcp_probe)(a, port) for a in pending}
        last.update(probes)
        ok += [a for a, r in probes.items() if r == "ok"]
        # A node whose IPv4 address answers (or refuses: nginx is starting) is alive: if its IPv6 address does not
        # answer yet, the address is new, so it is asked again rather than dropped. It is dropped with its IPv4
        # address when that one stops answering at all.
        refused = [a for a, r in probes.items() if r in ("refused", "failing")]
        alive = set(ok) | set(refused)
        pending = refused + [a for a, r in probes.items() if r == "unreachable" and siblings.get(a) in alive]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    for address in sorted(set(last) - set(ok)):
        pulumi.log.info(f"proxy node address {address} is not published: port {port} does not answer "
                        f"({last[address]})")
    return sorted(ok)


def render_nginx(stack: str, lb, rows: list[tuple[str, str, str]]) -> str:
    """nginx.conf of a proxy node. `rows`: (role name, IPv4 address, IPv6 address) of every role target."""
    dns, families = lb.dns, lb.ip_families
    by_role: dict[str, dict[str, set]] = {r.name: {"IPv4": set(), "IPv6": set()} for r in dns.roles}
    for role_name, v4, v6 in rows:
        if v4:
            by_role[role_name]["IPv4"].add(v4)
        if v6:
            by_role[role_name]["IPv6"].add(f"[{v6}]")
    roles = []
    for r in dns.roles:
        # One listener and upstream per family: IPv6 clients reach the targets over IPv6.
        fams = []
        if "IPv4" in families:
            fams.append({"suffix": "", "listen": "", "opts": "",
                         "targets": [f"{a}:{r.target_port}" for a in sorted(by_role[r.name]["IPv4"])]})
        if "IPv6" in families:
            fams.append({"suffix": "_v6", "listen": "[::]:", "opts": "ipv6only=on",
                         "targets": [f"{a}:{r.target_port}" for a in sorted(by_role[r.name]["IPv6"])]})
        roles.append({
            "name": r.name, "protocol": r.protocol, "port": r.port, "families": fams,
            "proxy_protocol": r.settings.proxy_protocol, "sticky": r.settings.sticky_sessions,
        })
    return render("nginx-stream.conf.j2", stack=stack, lb_name=lb.name, roles=roles,
                  connect_timeout_ms=lb.health_check.connect_timeout_milliseconds,
                  max_fails=lb.health_check.fall, fail_timeout=max(lb.health_check.interval_seconds, 1) * 5)


def read_status(probe: dict, client) -> dict:
    """The proxy nodes running, the name answered by the stack's DNS server with exactly what was published, the
    endpoint answering at each answer, and every role target by a TCP probe (nginx stream has no health API)."""
    incus = client()
    states = [(incus.get_instance(n) or {}).get("status", "Missing") for n in probe["nodes"]]
    running = sum(s == "Running" for s in states)
    answers = health.dns_answers(probe["server"], probe["fqdn"])
    published = sorted(probe["published"])
    targets = {(a, int(p)) for a, p in probe["targets"]}
    alive = sum(tcp_probe(a, p) == "ok" for a, p in targets)
    host = lambda a: f"[{a}]" if ":" in a else a  # noqa: E731
    return {"conditions": [
        condition("Exists", running == len(states), "NodesRunning" if running == len(states)
                  else "NodesNotRunning", f"{running} of {len(states)} proxy nodes running"),
        ready_condition([f"{host(a)}:{probe['apiPort']}" for a in answers], health.endpoint_answers),
        backends_condition(alive, len(targets), "TCP probes of the role targets; nginx stream has no health API"),
        condition("DNSResolvable", bool(answers) and answers == published,
                  "Published" if answers == published and answers else "Mismatch",
                  f"{probe['fqdn']} -> {', '.join(answers) or 'nothing'} at {probe['server']}"),
    ]}


class DnsLoadBalancer(pulumi.ComponentResource):
    @staticmethod
    def preflight(ctx, lb, field: str, facts) -> None:
        """Before anything is created: the proxy nodes' names fit, and their image is there."""
        ctx.object_name(lb.name, "proxy", str(lb.dns.nodes.count))
        facts.image_fingerprint(f"{field}.dns.nodes.instanceSpec.image", lb.dns.nodes.instance.image)

    def __init__(self, name: str, args: LoadBalancerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("cplb:lb:DnsLoadBalancer", name, None, opts)
        ctx, lb, facts = args.ctx, args.spec, args.facts
        dns = lb.dns
        child = pulumi.ResourceOptions(parent=self)

        # Targets per role (a role without its own targets uses the balancer's).
        role_targets = {
            role.name: resolve_targets(role.targets or lb.effective_targets(), f"{args.field}.dns.roles[{i}]",
                                       facts, ctx.stack, args.stack_instances)
            for i, role in enumerate(dns.roles)
        }
        flat = [(role.name, b) for role in dns.roles for b in role_targets[role.name]]

        families = lb.ip_families

        conf = pulumi.Output.all(*[pulumi.Output.all(b.address, b.address6) for _, b in flat]).apply(
            lambda addrs: render_nginx(ctx.stack, lb, [(rn, v4, v6) for (rn, _), (v4, v6) in zip(flat, addrs)]))
        spec = dns.nodes.instance
        tsig = pulumi.Output.secret({"name": dns.tsig.name.rstrip(".") + ".", "algorithm": dns.tsig.algorithm,
                                     "secret": dns.tsig.secret})
        labels = {"user.cluster-name": lb.cluster, "user.cluster-role": "loadbalancer", "user.cplb.balancer": lb.name}
        node_names = [ctx.object_name(lb.name, "proxy", str(n)) for n in range(1, dns.nodes.count + 1)]
        # Nodes roll one at a time (the last first); a node's nginx.conf is on its state volume, so a rebuilt node
        # serves again as soon as it starts.
        self.nodes: list[Instance] = build_members(self, ctx, facts, Members(
            resource_names=[f"{name}-proxy-{n}" for n in range(1, dns.nodes.count + 1)], names=node_names,
            image=spec.image, image_field=f"{args.field}.dns.nodes.instanceSpec.image", owner_id=f"lb/{lb.name}",
            config=instance_config(spec, labels), devices=ctx.devices(spec.network),
            health={"kind": "tcp", "port": health_port(dns)}, wait_seconds=300,
            common={"profiles": spec.profiles, "instance_type": spec.instance_type},
            # Spread over an Incus cluster's members like any balancer's replicas (docs/strategies.md).
            per_member=lambda n: {"target": ctx.placement(spec.target, n)},
            singleton_note="its rollout takes the only proxy node (and the record) away while it is rebuilt",
            # Before a node goes down, its address leaves the name and the rollout waits the TTL: clients that
            # resolve again connect to the other nodes (docs/upgrades.md).
            withdraw=tsig.apply(lambda key: {
                "kind": "dns", "server": dns.server, "zone": dns.zone_fqdn, "fqdn": dns.fqdn, "ttl": dns.ttl,
                "tsig": key, "ownerStack": ctx.stack, "ownerId": f"lb/{lb.name}"}),
        ))
        self.files: list[InstanceFile] = []
        for n, node in enumerate(self.nodes, start=1):
            self.files.append(InstanceFile(
                f"{name}-nginx-conf-{n}", instance=node.name, instance_uuid=node.uuid, path=NGINX_CONF,
                content=conf, connection=ctx.connection, credentials=ctx.credentials,
                validate_command=NGINX_VALIDATE, reload_command=NGINX_RELOAD, opts=child,
            ))

        port = health_port(dns)
        def published_families(v4s: list, v6s: list) -> list[str]:
            out = [a for a in v4s if a] if "IPv4" in families else []
            return out + ([v6[0] for v6 in v6s if v6] if "IPv6" in families else [])

        per_node = pulumi.Output.all(pulumi.Output.all(*[n.address for n in self.nodes]),
                                     pulumi.Output.all(*[n.ipv6 for n in self.nodes]))
        node_addresses = per_node.apply(lambda v: published_families(v[0], v[1]))
        siblings = per_node.apply(lambda v: {v6[0]: v4 for v4, v6 in zip(v[0], v[1]) if v4 and v6})
        configured = pulumi.Output.all(*[f.content_hash for f in self.files])
        # Records only for nodes that pass the health check when the program runs. At `up` the check waits for
        # the config files (a node is checked once its nginx is configured); a preview checks the nodes as they
        # are, so a config change alone does not make the records unknown.
        # With an `https` check and the cluster's CA, a node is healthy when the API server answers `path` through it
        # (TLS verified for the published name): the record then means a working endpoint, not an open port.
        verify = lb.health_check.scheme == "https" and args.cluster_ca is not None and \
            any(r.is_api_server for r in dns.roles)
        probe_settings = pulumi.Output.from_input(args.cluster_ca).apply(lambda ca: {
            "path": lb.health_check.http_path, "caCert": ca, "serverName": dns.fqdn.rstrip(".")}) if verify else \
            pulumi.Output.from_input({})
        if pulumi.runtime.is_dry_run():
            healthy_addresses = pulumi.Output.all(node_addresses, probe_settings).apply(
                lambda v: healthy(list(v[0]), port, wait_seconds=0, probe=health.node_probe(v[1])))
        else:
            after = args.ready_after if args.ready_after is not None else True
            healthy_addresses = pulumi.Output.all(node_addresses, configured, siblings, probe_settings, after).apply(
                lambda v: healthy(list(v[0]), port, wait_seconds=8.0, siblings=v[2], probe=health.node_probe(v[3])))
        self.records = DnsRecordSet(
            f"{name}-records", server=dns.server, zone=dns.zone_fqdn, fqdn=dns.fqdn, ttl=dns.ttl,
            addresses=healthy_addresses, tsig=tsig, owner_stack=ctx.stack, owner_id=f"lb/{lb.name}", opts=child,
        )
        api_port = next((r.port for r in dns.roles if r.is_api_server), dns.roles[0].port)
        self_endpoint = f"{dns.fqdn.rstrip('.')}:{api_port}"
        self.endpoint = pulumi.Output.from_input(self_endpoint)
        ports = {r.name: r.target_port for r in dns.roles}
        tcp_targets = [(b, ports[rn]) for rn, b in flat
                       if next(r.protocol for r in dns.roles if r.name == rn) == "tcp"]

        probe = pulumi.Output.all(self.records.published,
                                  pulumi.Output.all(*[pulumi.Output.all(b.address, p) for b, p in tcp_targets])).apply(
            lambda v: {"strategy": "dns", "balancer": lb.name, "nodes": list(node_names),
                       "server": dns.server, "fqdn": dns.fqdn, "apiPort": api_port, "published": sorted(v[0] or []),
                       "targets": [list(t) for t in sorted({(a, p) for a, p in v[1] if a})]})
        self.status, _ = balancer_status(name, self, ctx, probe, trigger=configured, after=args.ready_after,
                                         instances=(*self.nodes, *[b.resource for _, b in flat]))
        self.endpoint_hosts = node_addresses.apply(lambda addrs: [self_endpoint, *addrs])
        self.outputs = pulumi.Output.all(node_addresses, healthy_addresses, self.records.published,
                                         self.status, probe_settings).apply(
            lambda v: {
                "type": "dns",
                "endpoint": f"{dns.fqdn.rstrip('.')}:{api_port}",
                "fqdn": dns.fqdn,
                "server": dns.server,
                "healthPort": port,
                "healthProbe": v[4],
                "addresses": [a for a in v[0] if a],
                "healthy": v[1],
                "published": v[2],
                "roles": [{"name": r.name, "protocol": r.protocol, "port": r.port, "targetPort": r.target_port}
                          for r in dns.roles],
                "backends": [{"role": rn, "name": b.name, "port": next(r.target_port for r in dns.roles
                                                                        if r.name == rn)} for rn, b in flat],
                "ipFamilies": families,
                "status": v[3],
            })
        self.routing = routing([(b, ports[rn]) for rn, b in flat], lb.ip_families)
        # `routing` is a stack output; not stored a second time (see haproxy_balancer.py).
        self.register_outputs({"endpoint": self.endpoint})
