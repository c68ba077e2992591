"""The `oci` strategy: haproxy as an OCI application container (Incus `instance_oci` extension).

The same component as `lxc`, with the instance made from a registry image. haproxy runs as PID 1 in
master-worker mode (the official image's entrypoint adds `-W -db`), so a reload is SIGUSR2 to PID 1.
Not yet run against a server with `instance_oci` (Debian's Incus 6.0 lacks it): preview fails there with
the missing extension named, and the create request is covered by unit tests.
"""

from __future__ import annotations

from components.common import LoadBalancerArgs
from components.lxc import HaproxyLoadBalancer

REQUIRED_EXTENSIONS = ("instance_oci",)


class OciLoadBalancer(HaproxyLoadBalancer):
    TYPE = "cplb:lb:OciLoadBalancer"

    @staticmethod
    def preflight(ctx, lb, field: str, facts) -> None:
        """Before anything is created: the instance names fit, and the server runs OCI containers."""
        ctx.object_name(lb.name, "haproxy", str(lb.lxc_spec.replicas))
        facts.require_extensions(f"{field}.type (oci)", *REQUIRED_EXTENSIONS)
    CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
    RELOAD = ["kill", "-USR2", "1"]

    def instance_source(self, args: LoadBalancerArgs) -> dict:
        oci = args.spec.oci
        return {"image": f"oci:{oci.image}", "oci": {"registry": oci.registry, "image": oci.image},
                "profiles": oci.profiles}
