"""Which component builds which `type`, and the checks each strategy makes before anything is created."""

from __future__ import annotations

from components import oci as oci_strategy
from components import ovn as ovn_strategy
from components.common import StackContext
from components.external import ExternalLoadBalancer
from components.dns import DnsLoadBalancer
from components.keepalived import KeepalivedLoadBalancer
from components.common import LoadBalancerArgs
from components.lxc import HaproxyLoadBalancer
from components.oci import OciLoadBalancer
from components.ovn import OvnLoadBalancer
from facts import Facts
from spec import LoadBalancerSpec, StackSpec

COMPONENTS = {
    "lxc": HaproxyLoadBalancer,
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
        facts.image_fingerprint(f"cplb:controlPlanes[{i}].instance.image", c.instance.image)
    for i, lb in enumerate(stack.load_balancers):
        field = f"cplb:loadBalancers[{i}]"
        if lb.type in ("lxc", "oci"):
            ctx.object_name(lb.name, "haproxy", str(lb.lxc_spec.replicas))
        if lb.type == "lxc":
            facts.image_fingerprint(f"{field}.lxc.instanceSpec.image", lb.lxc_spec.instance.image)
            if lb.lxc_spec.replicas > 1:
                facts.check_vip(f"{field}.lxc.vip", lb.lxc_spec.vip, ctx.incus.network)
        elif lb.type == "oci":
            facts.require_extensions(f"{field}.type (oci)", *oci_strategy.REQUIRED_EXTENSIONS)
        elif lb.type == "ovn":
            facts.require_extensions(f"{field}.type (ovn)", *ovn_strategy.REQUIRED_EXTENSIONS)
            facts.check_ovn_listen_address(field, lb.ovn.network_name, lb.ovn.listen_address)
        elif lb.type == "keepalived":
            for j, vi in enumerate(lb.keepalived.vrrp_instances):
                for k, vip in enumerate(vi.virtual_ips):
                    facts.check_vip(f"{field}.keepalived.vrrpInstances[{j}].virtualIPs[{k}]", vip.split("/")[0],
                                    ctx.incus.network, prefix=int(vip.split("/")[1]))
        elif lb.type == "dns":
            ctx.object_name(lb.name, "proxy", str(lb.dns.nodes.count))
            facts.image_fingerprint(f"{field}.dns.nodes.instanceSpec.image", lb.dns.nodes.instance.image)


def build(name: str, ctx: StackContext, lb: LoadBalancerSpec, field: str, facts: Facts, backends,
          stack_instances: dict, cluster_ca=None, ready_after=None):
    component = COMPONENTS[lb.type]
    return component(name, LoadBalancerArgs(ctx=ctx, spec=lb, field=field, facts=facts, backends=backends,
                                            stack_instances=stack_instances, cluster_ca=cluster_ca,
                                            ready_after=ready_after))
