"""The `oci` strategy: haproxy as an OCI application container (Incus `instance_oci` extension, Incus 6.5 and later),
the way the Cluster API provider for Incus runs its balancer.

The image's entrypoint is haproxy in master-worker mode (`haproxy -W -db -f <CONFIG_PATH> -p /run/haproxy.pid`).
Incus starts an application container's entrypoint under an init of its own (PID 1), so a pushed config is checked
with `haproxy -c` and loaded by SIGUSR2 to the master named in the pidfile, as in `lxc`: the master stays, the old
workers finish their connections. The image carries busybox beside haproxy (the project's own does:
scripts/incus7-up builds it), which the drain and the status read use to reach haproxy's runtime API.
"""

from __future__ import annotations

from components.common import LoadBalancerArgs, instance_config
from components.haproxy import HAPROXY_RELOAD
from components.haproxy_balancer import HaproxyBalancer, read_status

__all__ = ["OciLoadBalancer", "read_status"]

REQUIRED_EXTENSIONS = ("instance_oci",)


class OciLoadBalancer(HaproxyBalancer):
    TYPE = "cplb:lb:OciLoadBalancer"
    STRATEGY = "oci"
    CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
    RELOAD = HAPROXY_RELOAD  # SIGUSR2 to the master named in /run/haproxy.pid

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
