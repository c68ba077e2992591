"""The `oci` strategy: haproxy as an OCI application container (Incus `instance_oci` extension, Incus 6.5 and later),
the way the Cluster API provider for Incus runs its balancer.

haproxy is PID 1 in master-worker mode (the image's entrypoint is `haproxy -W -db -f <CONFIG_PATH>`), so a pushed
config is checked with `haproxy -c` and loaded by SIGUSR2 to PID 1: the old workers finish their connections. The
image is expected to carry busybox beside haproxy (the project's own does: scripts/incus7-up builds it), which the
drain and the status read use to reach haproxy's runtime API, as in `lxc`.
"""

from __future__ import annotations

from components.common import LoadBalancerArgs, instance_config
from components.haproxy_balancer import HaproxyBalancer, read_status

__all__ = ["OciLoadBalancer", "read_status"]

REQUIRED_EXTENSIONS = ("instance_oci",)


class OciLoadBalancer(HaproxyBalancer):
    TYPE = "cplb:lb:OciLoadBalancer"
    STRATEGY = "oci"
    CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
    RELOAD = ["kill", "-USR2", "1"]

    @staticmethod
    def preflight(ctx, lb, field: str, facts) -> None:
        """Before anything is created: the instance name fits, and the server runs OCI containers. (One replica:
        the schema has no `lxc` section for `oci`, since there is no keepalived beside haproxy as PID 1.)"""
        ctx.object_name(lb.name, "haproxy", "1")
        facts.require_extensions(f"{field}.type (oci)", *REQUIRED_EXTENSIONS)

    def instance_source(self, args: LoadBalancerArgs) -> dict:
        oci = args.spec.oci
        return {"image": f"oci:{oci.image}", "oci": {"registry": oci.registry, "image": oci.image},
                "profiles": oci.profiles}

    def instance_config(self, args: LoadBalancerArgs, labels: dict) -> dict:
        return instance_config(args.spec.oci, labels)
