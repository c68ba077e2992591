"""The `ovn` strategy: an Incus network load balancer on an OVN network, health-checked by OVN itself.

No balancer instance: OVN balances in the datapath of every chassis. One backend per target (and per port
when ports use different target ports); backend changes update the balancer in place.
"""

from __future__ import annotations

from typing import Optional

import pulumi

from components.common import LoadBalancerArgs
import health
from components.status import backends_condition, balancer_status, condition, ready_condition
from components.targets import port_pairs, routing
from providers.network_lb import NetworkLoadBalancer, backend_health

REQUIRED_EXTENSIONS = ("network_load_balancer", "network_load_balancer_health_check")


def health_config(hc) -> dict:
    return {
        "healthcheck": "true",
        "healthcheck.interval": str(hc.interval_seconds),
        "healthcheck.timeout": str(hc.timeout_seconds),
        "healthcheck.failure_count": str(hc.fall),
        "healthcheck.success_count": str(hc.rise),
    }


def read_status(probe: dict, client) -> dict:
    """The balancer present, its listen address answering, and each backend as OVN's own health check sees it
    (the state endpoint)."""
    state = backend_health(client(), probe["network"], probe["listenAddress"])
    online = sum((state or {}).get(n) == "online" for n in probe["backends"])
    exists = state is not None
    return {"observed": {"health": state or {}}, "conditions": [
        condition("Exists", exists, "BalancerPresent" if exists else "BalancerMissing",
                  f"network load balancer {probe['listenAddress']} on {probe['network']}"),
        ready_condition([probe["endpoint"]], health.endpoint_answers),
        backends_condition(online, len(probe["backends"]), "OVN state endpoint"),
    ]}


class OvnLoadBalancer(pulumi.ComponentResource):
    @staticmethod
    def preflight(ctx, lb, field: str, facts) -> None:
        """Before anything is created: the server has network load balancers with health checks, and the listen
        address is usable on the OVN network."""
        facts.require_extensions(f"{field}.type (ovn)", *REQUIRED_EXTENSIONS)
        facts.check_ovn_listen_address(field, lb.ovn.network_name, lb.ovn.listen_address)

    def __init__(self, name: str, args: LoadBalancerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("cplb:lb:OvnLoadBalancer", name, None, opts)
        ctx, lb = args.ctx, args.spec
        ovn = lb.ovn
        per_port = len({p.backend_port for p in lb.ports}) > 1
        targets = args.backends
        names = [b.name for b in targets]

        def backend_rows(addresses):
            rows = []
            for port in lb.ports:
                for n, a in zip(names, addresses):
                    if a:
                        rows.append({"name": f"{n}-{port.name}" if per_port else n, "address": a,
                                     "port": port.backend_port, "portName": port.name})
            # One backend per name (ports sharing a target port share the backend).
            return list({r["name"]: r for r in rows}.values())

        backends = pulumi.Output.all(*[b.address for b in targets]).apply(backend_rows)
        ports = [{"protocol": p.protocol, "listenPort": p.port,
                  "targetBackends": [f"{n}-{p.name}" if per_port else n for n in names]} for p in lb.ports]
        self.balancer = NetworkLoadBalancer(
            f"{name}-nlb",
            network=ovn.network_name, listen_address=ovn.listen_address,
            backends=backends.apply(lambda rows: [{k: r[k] for k in ("name", "address", "port")} for r in rows]),
            ports=ports, config=health_config(lb.health_check),
            connection=ctx.connection, credentials=ctx.credentials,
            owner_stack=ctx.stack, owner_id=f"lb/{lb.name}",
            description=f"incus-cplb {ctx.stack}/{lb.name}",
            opts=pulumi.ResourceOptions(parent=self),
        )
        host = f"[{ovn.listen_address}]" if ":" in ovn.listen_address else ovn.listen_address
        self.endpoint = pulumi.Output.from_input(f"{host}:{lb.ports[0].port}")
        endpoint = f"{host}:{lb.ports[0].port}"

        probe = backends.apply(lambda rows: {
            "strategy": "ovn", "balancer": lb.name, "network": ovn.network_name, "listenAddress": ovn.listen_address,
            "endpoint": endpoint, "backends": sorted(r["name"] for r in rows)})
        self.status, observed = balancer_status(name, self, ctx, probe, trigger=backends,
                                                after=args.ready_after, instances=[t.resource for t in targets])
        self.outputs = pulumi.Output.all(backends, observed, self.status).apply(lambda v: {
            "type": "ovn",
            "endpoint": f"{host}:{lb.ports[0].port}",
            "addresses": [ovn.listen_address],
            "backends": [{**r, "health": (v[1].get("health") or {}).get(r["name"], "unknown")} for r in v[0]],
            "status": v[2],
        })
        self.routing = routing(port_pairs(targets, lb.ports))
        # `routing` is a stack output; not stored a second time (see haproxy_balancer.py).
        self.register_outputs({"endpoint": self.endpoint})
