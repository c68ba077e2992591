"""The objects each balancer is published as (components/publish.py), built from its spec and stack outputs."""

import spec
from components.publish import (
    LOAD_BALANCER_CRD, ROUTING_CRD, backends_text, labels, load_balancer_fields, routing_destinations,
)


def test_load_balancer_fields_from_spec_and_outputs():
    lb = spec.parse({"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc",
                                        "ports": [{"name": "api", "port": 6443},
                                                  {"name": "np", "port": 30000, "endPort": 30010}]}]}).load_balancers[0]
    outputs = {"endpoint": "198.18.10.7:6443", "addresses": ["198.18.10.7"],
               "status": {"conditions": [
                   {"type": "Ready", "status": "True", "reason": "Answering", "message": "ok"},
                   {"type": "BackendsHealthy", "status": "False", "reason": "SomeUnhealthy",
                    "message": "2 of 3 healthy (haproxy runtime API of s-api-haproxy-1)"}]}}
    fields = load_balancer_fields(lb, outputs)
    assert fields["spec"] == {
        "type": "lxc", "role": "control-plane", "ipFamilies": ["IPv4"],
        "ports": [{"name": "api", "port": 6443, "targetPort": 6443, "protocol": "TCP"},
                  {"name": "np", "port": 30000, "targetPort": 30000, "protocol": "TCP", "endPort": 30010}],
        "selector": {"matchLabels": {"user.cluster-name": "demo", "user.cluster-role": "control-plane"}}}
    status = fields["status"]
    assert status["endpoint"] == "198.18.10.7:6443" and status["endpoints"] == ["198.18.10.7:6443"]
    assert status["backends"] == "2 of 3" and [c["type"] for c in status["conditions"]] == ["Ready", "BackendsHealthy"]


def test_explicit_addresses_are_the_selector():
    lb = spec.parse({"loadBalancers": [{"name": "web", "cluster": "demo", "type": "lxc", "role": "service",
                                        "targets": {"addresses": [{"name": "a", "address": "198.18.10.9"}]}}]}
                    ).load_balancers[0]
    assert load_balancer_fields(lb, {})["spec"]["selector"] == {"addresses": [{"name": "a", "address": "198.18.10.9"}]}


def test_backends_text_and_routing():
    assert backends_text([{"type": "BackendsHealthy", "message": "0 of 2 healthy (tcp)"}]) == "0 of 2"
    assert backends_text([{"type": "Ready", "message": "1 of 1"}]) == ""
    rows = {"destinations": [{"name": "s-cp-1", "uuid": "u-1", "address": "198.18.10.101", "port": 6443,
                              "family": "IPv4"}]}
    assert routing_destinations(rows) == [{"name": "s-cp-1", "uid": "u-1", "address": "198.18.10.101",
                                           "port": 6443, "family": "IPv4"}]
    assert labels("dev", "api")["cplb.incus.dev/balancer"] == "api"


def test_printer_columns_are_what_kubectl_get_shows():
    columns = [c["name"] for c in LOAD_BALANCER_CRD["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Type", "Endpoint", "Ready", "Backends", "Age"]
    assert ROUTING_CRD["names"]["plural"] == "loadbalancerroutings"
