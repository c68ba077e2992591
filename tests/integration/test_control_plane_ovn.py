"""The real control plane behind the `dns` and `ovn` strategies. The control plane sits on the OVN network (the
`ovn` strategy needs its backends there; the dns proxy nodes on the project bridge reach it through the host's
route), with real OVN and a real BIND started by this module. One cluster moves dns -> ovn, and the serving
certificate follows the endpoint.
"""

from __future__ import annotations

import random

import pytest
from pulumi.automation import ConfigValue

from tests.helpers import base_config, instances_with_prefix, pulumi_stack, wait_for
from tests.integration.test_dns import ZONE, dns_server, resolve  # noqa: F401 - module fixture
from tests.integration.test_ovn_oci_external import OVN_NETWORK, listen_address, ovn  # noqa: F401
from tests.k8s import ApiLoad, Kubectl, readyz_check, real_control_plane, rolling_restart

pytestmark = pytest.mark.integration
CLUSTER = "itk8sovn"


def quiet(_):
    pass


def cluster_of(result) -> dict:
    return result.outputs["clusters"].value[CLUSTER]


def ca_of(result) -> str:
    from tests.k8s import kubeconfig_ca

    return kubeconfig_ca(cluster_of(result)["kubeconfig"])


def restart_under_load(result, host: str, port: int, server_name=None) -> dict:
    import time

    cp = cluster_of(result)
    with ApiLoad(cp["kubeconfig"], host, port, server_name=server_name) as load:
        time.sleep(2)
        rolling_restart(cp["controlPlane"], cp["addresses"], ca_of(result))
        time.sleep(2)
    print(f"\nrolling restart via {server_name or host}:{port}: {load.counts}; first errors: {load.errors[:5]}; retried after a reset: {load.resets[:5]}")
    return dict(load.counts)


@pytest.fixture(scope="module")
def stack_on_ovn(ovn, dns_server):  # noqa: F811
    hostname = f"api-{random.randrange(16**5):05x}"
    control_plane = real_control_plane("cp", CLUSTER)
    control_plane["instance"]["network"] = OVN_NETWORK
    balancer = {"name": "api", "cluster": CLUSTER, "type": "dns", "healthCheck": readyz_check(),
                "dns": {"nodes": {"count": 2}, "zone": ZONE, "hostname": hostname, "ttl": 30,
                        "server": dns_server["server"], "tsig": {"name": "cplb-update", "secret": "cGxhY2Vob2xkZXI="},
                        "roles": [{"name": "api", "port": 6443, "targetPort": 6443}]}}
    config = base_config(controlPlanes=[control_plane], loadBalancers=[balancer])
    with pulumi_stack(config, prefix="k8sovn") as (project, name, stack):
        stack.set_config("cplb:loadBalancers[0].dns.tsig.secret", ConfigValue(dns_server["secret"], secret=True),
                         path=True)
        yield project, name, stack, config, f"{hostname}.{ZONE}"


def test_kubectl_through_dns_then_lxc_then_ovn_and_the_certificate_follows(stack_on_ovn, dns_server):  # noqa: F811
    project, name, stack, config, fqdn = stack_on_ovn
    up = stack.up(on_output=quiet)
    # dns: the name resolves (through the project's BIND) to the proxy nodes that pass the https /readyz probe;
    # kubectl connects to a resolved address and verifies the certificate for the name.
    nodes = resolve(dns_server, fqdn)
    assert len(nodes) == 2 and sorted(nodes) == sorted(up.outputs["loadBalancers"].value["api"]["published"])
    assert up.outputs["loadBalancers"].value["api"]["healthProbe"]["path"] == "/readyz"
    kubeconfig = cluster_of(up)["kubeconfig"]
    name_only = fqdn.rstrip(".")
    for node in nodes:
        kube = Kubectl(kubeconfig, server=f"{node}:6443", tls_server_name=name_only)
        try:
            assert kube.readyz() == "ok"
            assert kube.configmap_roundtrip(f"cplb-dns-{node.replace('.', '-')}", node) == {"value": node}
        finally:
            kube.cleanup()
    kube = Kubectl(kubeconfig)
    assert kube.server == f"https://{name_only}:6443"
    kube.cleanup()
    counts = restart_under_load(up, nodes[0], 6443, server_name=name_only)
    assert counts["ok"] > 500 and counts["failed"] == 0, counts

    # lxc, then ovn: only `type` and its section change. The certificate is reissued for each new endpoint.
    values = {k: v for k, v in config.items()}
    lb = {k: v for k, v in values["loadBalancers"][0].items() if k != "dns"}
    values["loadBalancers"] = [{**lb, "type": "lxc", "lxc": {"replicas": 1}}]
    project.write_stack_config(name, values)
    up = stack.up(on_output=quiet)
    assert set(instances_with_prefix(f"{name}-api")) == {f"{name}-api-haproxy-1"}
    kube = Kubectl(cluster_of(up)["kubeconfig"])
    try:
        assert kube.server == f"https://{up.outputs['loadBalancers'].value['api']['endpoint']}"
        kube.becomes_ready(30)
    finally:
        kube.cleanup()

    listen = listen_address()
    values["loadBalancers"] = [{**lb, "type": "ovn", "ovn": {"networkName": OVN_NETWORK, "listenAddress": listen}}]
    project.write_stack_config(name, values)
    up = stack.up(on_output=quiet)
    assert instances_with_prefix(f"{name}-api") == {}, "the lxc balancer instance was not removed"
    kube = Kubectl(cluster_of(up)["kubeconfig"])
    try:
        assert kube.server == f"https://{listen}:6443"
        kube.becomes_ready(30)
        assert kube.configmap_roundtrip("cplb-ovn", listen) == {"value": listen}
    finally:
        kube.cleanup()
    # OVN's health checks are TCP only: a server in its shutdown delay still accepts, so requests can fail.
    # Reported, not asserted (docs/benchmarks.md keeps the figure).
    counts = restart_under_load(up, listen, 6443)
    assert counts["ok"] > 0, counts
