"""The `external` strategy: nothing is provisioned; the user's endpoint is validated and published.

With `external.kubeVip`, a kube-vip static pod manifest (ARP mode) is rendered and pushed to every
control-plane instance picked by the targets, at `kubeVip.path`, so the kubelet there runs kube-vip.
"""

from __future__ import annotations

from typing import Optional

import pulumi

from components.access import KUBE_VIP_KUBECONFIG
from components.common import LoadBalancerArgs
from components.render import render
from components.status import condition
from providers.instance_file import InstanceFile


# The kubeconfig kube-vip reads: on the stack's own control plane, its own (a Lease's rights; pushed by
# components/control_plane.py); on a cluster the stack does not run, the admin's, as kubeadm's nodes have it.
KUBEADM_KUBECONFIG = "/etc/kubernetes/admin.conf"


def render_kube_vip(stack: str, lb, own_cluster: bool = False) -> str:
    """The kube-vip static pod (ARP mode, leader election through a Lease), as users deploy it on kubelet nodes."""
    ext, kv = lb.external, lb.external.kube_vip
    return render(
        "kube-vip.yaml.j2", stack=stack, lb_name=lb.name, vip=kv.vip, interface=kv.interface,
        kubeconfig=KUBE_VIP_KUBECONFIG if own_cluster else KUBEADM_KUBECONFIG,
        cidr="128" if ":" in kv.vip else "32", port=str(ext.port), image=kv.image,
        lease_duration=str(kv.lease_duration_seconds), renew_deadline=str(kv.renew_deadline_seconds),
        retry_period=str(kv.retry_period_seconds),
    )


class ExternalLoadBalancer(pulumi.ComponentResource):
    @staticmethod
    def preflight(ctx, lb, field: str, facts) -> None:
        """Nothing to check against Incus: the endpoint is the user's."""

    @staticmethod
    def control_plane_tools(lb) -> dict[str, str]:
        """The binaries the cluster's own members need, each with the image that has it: kube-vip's static pod
        runs /usr/local/bin/kube-vip there (kube-vip is built only for the stacks and tests that run it)."""
        return {"kube-vip": "cplb/control-plane-kube-vip"} if lb.external.kube_vip else {}

    def __init__(self, name: str, args: LoadBalancerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("cplb:lb:ExternalLoadBalancer", name, None, opts)
        ctx, lb = args.ctx, args.spec
        ext = lb.external
        self.files: list[InstanceFile] = []
        kv = ext.kube_vip
        if kv:
            manifest = render_kube_vip(ctx.stack, lb, own_cluster=args.cluster_ca is not None)
            for target in args.backends:
                self.files.append(InstanceFile(
                    f"{name}-kube-vip-{target.name}",
                    instance=target.name, instance_uuid=target.uuid, path=kv.path, content=manifest,
                    connection=ctx.connection, credentials=ctx.credentials, mode="0600",
                    validate_format="kubernetes-manifest",
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[r for r in [target.resource] if r]),
                ))
        self.endpoint = pulumi.Output.from_input(ext.endpoint)
        pushed = pulumi.Output.all(*[f.content_hash for f in self.files])
        # The endpoint is the user's: incus-cplb never sends traffic to addresses it did not create, so there is
        # nothing live to read and no status resource: the conditions are known, in a preview too.
        conditions = [
            condition("Exists", True, "External", "nothing to provision" + (
                f"; kube-vip manifest on {len(self.files)} instances" if kv else "")),
            condition("Ready", None, "NotProbed", f"{ext.endpoint} is not probed (not an address this stack made)"),
            condition("BackendsHealthy", None, "NotProbed", "the external balancer's backends are not visible"),
        ]
        after = args.ready_after if args.ready_after is not None else True
        self.status = pulumi.Output.all(pushed, after).apply(lambda _: {"conditions": conditions})
        self.outputs = pulumi.Output.all(pushed, self.status).apply(lambda v: {
            "type": "external",
            "endpoint": ext.endpoint,
            "addresses": [ext.host],
            "kubeVip": {"vip": kv.vip, "path": kv.path, "instances": [t.name for t in args.backends]} if kv else None,
            "backends": [],
            "status": v[1],
        })
        self.routing = pulumi.Output.from_input({"destinations": []})
        self.register_outputs({"endpoint": self.endpoint})
