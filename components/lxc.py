"""The `lxc` strategy: haproxy in Incus system containers (the project's cplb/haproxy image), optionally a VRRP pair
(or more) sharing a VIP. The instances, files and status are components/haproxy_balancer.py's; this module says
what the instances are made from and what is checked before anything is created.
"""

from __future__ import annotations

from components.common import LoadBalancerArgs
from components.haproxy_balancer import HaproxyBalancer, read_status

__all__ = ["LxcLoadBalancer", "read_status"]


class LxcLoadBalancer(HaproxyBalancer):
    TYPE = "cplb:lb:LxcLoadBalancer"
    STRATEGY = "lxc"

    @staticmethod
    def preflight(ctx, lb, field: str, facts) -> None:
        """Before anything is created: the instance names fit, the image is there, and a pair's VIP is a free
        address of the bridge's subnet."""
        ctx.object_name(lb.name, "haproxy", str(lb.lxc_spec.replicas))
        facts.image_fingerprint(f"{field}.lxc.instanceSpec.image", lb.lxc_spec.instance.image)
        if lb.lxc_spec.replicas > 1:
            facts.check_vip(f"{field}.lxc.vip", lb.lxc_spec.vip, ctx.incus.network)

    def instance_source(self, args: LoadBalancerArgs) -> dict:
        spec = args.spec.lxc_spec.instance
        return {"image": spec.image, "profiles": spec.profiles, "instance_type": spec.instance_type,
                "target": spec.target}
