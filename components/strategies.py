"""Which component builds which `type`, and the checks each strategy makes before anything is created."""

from __future__ import annotations

from components.common import StackContext
from components.lxc import HaproxyLoadBalancer, LoadBalancerArgs
from facts import Facts
from spec import LoadBalancerSpec, StackSpec

COMPONENTS = {"lxc": HaproxyLoadBalancer}


def check_all(ctx: StackContext, stack: StackSpec, facts: Facts) -> None:
    """Everything that can be known before registering resources; raises with the key path."""
    for i, g in enumerate(stack.instance_groups):
        ctx.object_name(g.name, str(max(g.count, 1)))
        facts.image_fingerprint(f"cplb:instanceGroups[{i}].instance.image", g.instance.image)
    for i, lb in enumerate(stack.load_balancers):
        field = f"cplb:loadBalancers[{i}]"
        if lb.type == "lxc":
            ctx.object_name(lb.name, "haproxy", str(lb.lxc_spec.replicas))
            facts.image_fingerprint(f"{field}.lxc.instanceSpec.image", lb.lxc_spec.instance.image)
            if lb.lxc_spec.replicas > 1:
                facts.check_vip(f"{field}.lxc.vip", lb.lxc_spec.vip, ctx.incus.network)


def build(name: str, ctx: StackContext, lb: LoadBalancerSpec, field: str, facts: Facts, backends):
    component = COMPONENTS[lb.type]
    return component(name, LoadBalancerArgs(ctx=ctx, spec=lb, field=field, facts=facts, backends=backends))
