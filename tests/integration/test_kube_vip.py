"""kube-vip for real: the `external` strategy's rendered static-pod manifest, run as rendered on the real control
plane (cplb-static-pods runs what /etc/kubernetes/manifests declares: there is no kubelet in these instances).
ARP mode, leader election through the Lease `plndr-cp-lock` in the real API server; kube-vip v1.2.2 built from Go
modules by scripts/setup."""

from __future__ import annotations

import time

import pytest

from tests.helpers import (
    fresh_vip,
    base_config, clients_reach_only, incus, neighbour_mac, partition, pulumi_stack, vip_holders, wait_for,
)
from tests.k8s import Kubectl, real_control_plane

pytestmark = pytest.mark.integration
CLUSTER = "itkv"
KUBE_VIP_IMAGE = "cplb/control-plane-kube-vip"  # built by `scripts/setup --kube-vip`, which `make test` runs


def quiet(_):
    pass


def single_holder(prefix: str, vip: str, settle: float = 3.0) -> list[str]:
    """The holders, once the same set was seen twice `settle` seconds apart."""
    while True:
        first = vip_holders(prefix, vip)
        time.sleep(settle)
        if vip_holders(prefix, vip) == first:
            return first


def test_kube_vip_holds_the_vip_and_moves_it_when_the_holder_crashes():
    vip = fresh_vip()
    balancer = {"name": "api", "cluster": CLUSTER, "type": "external",
                "external": {"endpoint": f"{vip}:6443", "kubeVip": {
                    "vip": vip, "leaseDurationSeconds": 5, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 1}}}
    config = base_config(controlPlanes=[real_control_plane("cp", CLUSTER, image=KUBE_VIP_IMAGE)], loadBalancers=[balancer])
    with pulumi_stack(config, prefix="kv") as (_project, name, stack):
        up = stack.up(on_output=quiet)
        prefix = f"{name}-cp"
        # The rendered manifest is what runs: it is in place on every node.
        for n in (1, 2, 3):
            rc, out, _ = incus().exec(f"{prefix}-{n}", ["cat", "/etc/kubernetes/manifests/kube-vip.yaml"])
            assert rc == 0 and f'"{vip}"' in out
            # Its own credential (a Lease's rights: components/access.py), not the admin's.
            assert "/etc/kubernetes/kube-vip.conf" in out and "admin.conf" not in out
        assert wait_for(lambda: len(vip_holders(prefix, vip)) == 1, 60), "no node took the VIP"
        first = single_holder(prefix, vip)
        assert len(first) == 1, f"VIP held by {first}"
        kube = Kubectl(up.outputs["clusters"].value[CLUSTER]["kubeconfig"])
        stopped = None
        try:
            assert kube.server == f"https://{vip}:6443"
            kube.becomes_ready(30)
            lease = kube.ok("get", "lease", "plndr-cp-lock", "-n", "kube-system", "-o",
                            "jsonpath={.spec.holderIdentity}")
            assert lease, "no kube-vip leader in the Lease"
            # Split brain, with all three members up (so etcd keeps its quorum on the other side): the holder is cut
            # off its network for 10 s, then comes back. Once a lease period has passed, exactly one node holds the
            # VIP (the test asserts the single holder, not the time).
            with partition(first[0]):
                t0 = time.monotonic()
                # The cut-off leader cannot renew its lease: another node takes the lease and the VIP.
                assert wait_for(lambda: any(h != first[0] for h in vip_holders(prefix, vip)), 9.5), \
                    vip_holders(prefix, vip)
                time.sleep(max(0.0, 10 - (time.monotonic() - t0)))
            time.sleep(5)  # one lease period (leaseDurationSeconds)
            settled = single_holder(prefix, vip)
            assert len(settled) == 1, f"after the partition the VIP is held by {settled}"
            kube.becomes_ready(30)
            assert clients_reach_only(settled[0], vip), (neighbour_mac(vip), settled)
            first = settled
            kube.becomes_ready(30)
            # The holder crashes: another node takes the lease and the VIP, kubectl works again.
            stopped = first[0]
            incus().call("PUT", f"instances/{stopped}/state", json={"action": "stop", "force": True})
            assert wait_for(lambda: vip_holders(prefix, vip) not in ([], first), 60), "the VIP did not move"
            after = single_holder(prefix, vip)
            assert len(after) == 1 and after != first, after
            kube.becomes_ready(60)
            assert kube.configmap_roundtrip("cplb-kube-vip", after[0]) == {"value": after[0]}
        finally:
            kube.cleanup()
            if stopped:
                incus().call("PUT", f"instances/{stopped}/state", json={"action": "start"})
