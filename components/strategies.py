"""Which component builds which `type`, and the checks each strategy makes before anything is created."""

from __future__ import annotations

from components.common import StackContext
from components.external import ExternalLoadBalancer
from components.dns import DnsLoadBalancer
from components.keepalived import KeepalivedLoadBalancer
from components.common import LoadBalancerArgs
from components.lxc import LxcLoadBalancer
from components.oci import OciLoadBalancer
from components.ovn import OvnLoadBalancer
from facts import Facts
from spec import LoadBalancerSpec, StackSpec

COMPONENTS = {
    "lxc": LxcLoadBalancer,
    "oci": OciLoadBalancer,
    "ovn": OvnLoadBalancer,
    "external": ExternalLoadBalancer,
    "keepalived": KeepalivedLoadBalancer,
    "dns": DnsLoadBalancer,
}


def check_all(ctx: StackContext, stack: StackSpec, facts: Facts) -> None:
    """Everything that can be known before registering resources; raises with the key path."""
    for i, g in enumerate(stack.instance_groups):
        ctx.object_name(g.name, str(max(g.count, 1)))
        facts.image_fingerprint(f"cplb:instanceGroups[{i}].instance.image", g.instance.image)
    for i, c in enumerate(stack.control_planes):
        facts.check_cluster_ranges(f"cplb:controlPlanes[{i}]", c, c.instance.network or ctx.incus.network)
        field = f"cplb:controlPlanes[{i}].instance.image"
        facts.image_fingerprint(field, c.instance.image)
        # What a balancer runs on the cluster's members must be in their image (kube-vip, for `external`).
        for lb in stack.load_balancers:
            if lb.cluster != c.cluster:
                continue
            needs = getattr(COMPONENTS[lb.type], "control_plane_tools", None)  # only strategies that run something
            for tool, image in (needs(lb) if needs else {}).items():
                tools = facts.image_tools(field, c.instance.image)
                if tools is not None and tool not in tools:
                    raise ValueError(
                        f"{field}: {c.instance.image!r} has no {tool}, which balancer {lb.name!r} runs on the "
                        f"cluster's members; use image {image!r} (built by `make setup KUBE_VIP=1`)")
    for i, lb in enumerate(stack.load_balancers):
        # Each strategy's own checks live beside its component (one module per type).
        COMPONENTS[lb.type].preflight(ctx, lb, f"cplb:loadBalancers[{i}]", facts)


def build(name: str, ctx: StackContext, lb: LoadBalancerSpec, field: str, facts: Facts, backends,
          stack_instances: dict, cluster_ca=None, ready_after=None):
    component = COMPONENTS[lb.type]
    return component(name, LoadBalancerArgs(ctx=ctx, spec=lb, field=field, facts=facts, backends=backends,
                                            stack_instances=stack_instances, cluster_ca=cluster_ca,
                                            ready_after=ready_after))
