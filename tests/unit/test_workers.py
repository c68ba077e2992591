"""Worker nodes' files and schema, with no instance (tests/integration/test_control_plane.py runs real workers that
join through the endpoint): what kubelet, kube-proxy and the CNI plugins are given, and what the schema refuses."""

from __future__ import annotations

import json

import pytest
import yaml

import spec
from components import workers
from providers.pki import WorkerCertificatesProvider, ClusterCaProvider


def control_plane(**workers_spec) -> spec.ControlPlaneSpec:
    return spec.ControlPlaneSpec.model_validate({"name": "cp", "cluster": "k", "workers": workers_spec})


def test_each_worker_takes_its_own_pod_subnet_inside_the_pod_cidr():
    w = control_plane(count=3).workers
    subnets = [w.pod_subnet(n) for n in (1, 2, 3)]
    assert subnets == ["198.19.129.0/24", "198.19.130.0/24", "198.19.131.0/24"]
    assert json.loads(workers.cni_config(subnets[0]))["plugins"][0]["ipam"]["ranges"] == [[{"subnet": subnets[0]}]]


@pytest.mark.parametrize("values,needle", [
    ({"count": 2, "podCIDR": "198.19.0.0/16"}, "overlaps serviceCIDR"),
    ({"count": 5, "podCIDR": "198.19.128.0/22"}, "room for fewer than 5"),
    ({"count": 1, "podCIDR": "198.19.128.1/17"}, "host bits"),
    ({"count": 1, "podCIDR": "198.19.128.0/24"}, "prefix length"),
])
def test_pod_networks_that_cannot_work_are_refused(values, needle):
    with pytest.raises(ValueError) as err:
        control_plane(**values)
    assert needle in str(err.value)


def test_the_kubelet_runs_unprivileged_on_a_cgroup_v1_host_with_what_is_not_its_own_reserved():
    doc = yaml.safe_load(workers.kubelet_config("23Gi", "1"))
    assert doc["kind"] == "KubeletConfiguration" and doc["cgroupDriver"] == "cgroupfs"
    assert doc["failCgroupV1"] is False and doc["protectKernelDefaults"] is False
    assert doc["authentication"]["anonymous"]["enabled"] is False and doc["authorization"]["mode"] == "Webhook"
    assert doc["systemReserved"] == {"memory": "23Gi", "cpu": "1"}


def test_kube_proxy_leaves_the_hosts_conntrack_settings_alone():
    doc = yaml.safe_load(workers.kube_proxy_config("s-k-node-1", "198.19.128.0/17"))
    assert doc["mode"] == "iptables" and doc["conntrack"]["maxPerCore"] == 0
    assert doc["clusterCIDR"] == "198.19.128.0/17" and doc["hostnameOverride"] == "s-k-node-1"


def test_each_worker_routes_the_others_pods_and_not_its_own():
    rows = [("a", "198.19.129.0/24", "198.18.10.101"), ("b", "198.19.130.0/24", "198.18.10.102")]
    assert workers.pod_routes(rows, "a") == "198.19.130.0/24 198.18.10.102\n"


def test_worker_certificates_are_node_identities_under_the_cluster_ca():
    import subprocess

    ca = ClusterCaProvider().create({"cluster": "k"}).outs
    props = {"cluster": "k", "ca": {"crt": ca["certs"]["ca.crt"], "key": ca["keys"]["ca.key"]},
             "nodes": [{"name": "s-k-node-1", "addresses": ["198.18.10.120"]}]}
    p = WorkerCertificatesProvider()
    outs = p.create(props).outs
    certs = outs["certs"]["s-k-node-1"]
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName"],
                             input=certs["kubelet-serving.crt"], capture_output=True, text=True).stdout
    assert "CN = system:node:s-k-node-1" in subject and "O = system:nodes" in subject
    assert "IP Address:198.18.10.120" in subject
    client = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=certs["kube-proxy.crt"],
                            capture_output=True, text=True).stdout
    assert "CN = system:kube-proxy" in client
    assert not p.diff("id", outs, dict(props)).changes
    moved = {**props, "nodes": [{"name": "s-k-node-1", "addresses": ["198.18.10.121"]}]}
    assert p.diff("id", outs, moved).changes and not p.diff("id", outs, moved).replaces
