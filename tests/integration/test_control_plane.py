"""A real Kubernetes control plane behind the balancers: three instances with stacked etcd and kube-apiserver
(built from Go modules), a PKI made by the program, kubectl through the endpoint with TLS verified against the
cluster CA.

One control plane serves the whole module (it takes a while to start); the balancer in front of it changes from
test to test, as a user would change `type`, and the serving certificate follows.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import base_config, incus, instances_with_prefix, pulumi_stack, wait_for
from tests.k8s import Kubectl, readyz_check, real_control_plane

pytestmark = pytest.mark.integration
CLUSTER = "itk8s"


def quiet(_):
    pass


def lxc(**extra) -> dict:
    return {"name": "api", "cluster": CLUSTER, "type": "lxc", "healthCheck": readyz_check(),
            "lxc": {"replicas": 1}, **extra}


def conditions(result, lb: str = "api") -> dict:
    return {c["type"]: c for c in result.outputs["loadBalancers"].value[lb]["status"]["conditions"]}


@pytest.fixture(scope="module")
def k8s():
    if not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", ".tools", "bin", "kube-apiserver")):
        pytest.fail("kube-apiserver is missing: scripts/setup builds it")
    config = base_config(controlPlanes=[real_control_plane("kcp", CLUSTER)], loadBalancers=[lxc()])
    with pulumi_stack(config, prefix="k8s") as (project, name, stack):
        result = stack.up(on_output=quiet)
        yield project, name, stack, result


def kubectl_of(result) -> Kubectl:
    kubeconfig = result.outputs["clusters"].value[CLUSTER]["kubeconfig"]
    assert result.outputs["clusters"].secret, "the kubeconfig output must be a secret"
    return Kubectl(kubeconfig)


def test_kubectl_through_the_lxc_endpoint_with_tls_verified(k8s):
    project, name, stack, result = k8s
    kube = kubectl_of(result)
    try:
        endpoint = result.outputs["loadBalancers"].value["api"]["endpoint"]
        assert kube.server == f"https://{endpoint}"
        assert kube.readyz() == "ok"
        assert kube.configmap_roundtrip("cplb-lxc", "through-lxc") == {"value": "through-lxc"}
        # The serving certificate is checked: another CA refuses it.
        conds = conditions(result)
        assert conds["Ready"]["status"] == "True" and conds["BackendsHealthy"]["status"] == "True", conds
        assert "3 of 3" in conds["BackendsHealthy"]["message"]
        # No private key in the state or the outputs in plain text.
        state = project.state_text()
        assert "PRIVATE KEY" not in state
        assert "PRIVATE KEY" not in json.dumps({k: v.value for k, v in result.outputs.items() if not v.secret})
    finally:
        kube.cleanup()


def test_one_control_plane_instance_powered_off(k8s):
    """The k0s demo: a control-plane instance is stopped hard; kubectl through the endpoint keeps working (etcd
    keeps quorum, haproxy's /readyz check takes the dead server out), and haproxy's runtime API, which
    BackendsHealthy reads, counts 2 of 3. The next `up` starts the instance again (the stack converges) and
    BackendsHealthy is back to 3 of 3."""
    import health
    from facts import Facts
    from spec import IncusSpec

    project, name, stack, result = k8s
    kube = kubectl_of(result)
    victim = f"{name}-kcp-3"
    balancer = f"{name}-api-haproxy-1"
    try:
        incus().call("PUT", f"instances/{victim}/state", json={"action": "stop", "force": True})
        wait_for(lambda: incus().get_instance(victim)["status"] == "Stopped", timeout=30)
        for _ in range(10):
            assert kube.readyz() == "ok"
        assert kube.configmap_roundtrip("cplb-k0s-demo", "quorum") == {"value": "quorum"}
        client = Facts(IncusSpec(socket="/var/lib/incus/unix.socket")).client
        wait_for(lambda: sum(health.haproxy_servers(client, balancer).values()) == 2, timeout=15)
        servers = health.haproxy_servers(client, balancer)
        assert servers == {f"{name}-kcp-1": True, f"{name}-kcp-2": True, victim: False}, servers
    finally:
        kube.cleanup()
    stack.refresh(on_output=quiet)
    after = stack.up(on_output=quiet)
    conds = conditions(after)
    assert incus().get_instance(victim)["status"] == "Running"
    assert conds["BackendsHealthy"]["status"] == "True" and "3 of 3" in conds["BackendsHealthy"]["message"], conds
