"""One cluster moved between strategies by changing only `type` and its section: lxc -> dns -> ovn.

Real OVN and a real BIND (both started by this module); the control plane sits on the OVN network (the `ovn`
strategy needs its backends there), and the haproxy and nginx balancers on the project bridge reach it through
the host's route to the OVN network.
"""

import random

import pytest
from pulumi.automation import ConfigValue

from tests.helpers import base_config, demo_group, http_get, instances_with_prefix, pulumi_stack, wait_for
from tests.integration.test_dns import ZONE, dns_server, resolve  # noqa: F401 - module fixture
from tests.integration.test_ovn_oci_external import OVN_NETWORK, listen_address, nb_load_balancers, ovn  # noqa: F401

pytestmark = pytest.mark.integration


def quiet(_):
    pass


def test_one_cluster_moves_from_lxc_to_dns_to_ovn(ovn, dns_server):  # noqa: F811
    cluster = f"g{random.randrange(16**5):05x}"
    hostname = f"api-{cluster}"
    fqdn = f"{hostname}.{ZONE}"
    listen = listen_address()
    group = demo_group(2, name="cp", cluster=cluster)
    group["instance"]["network"] = OVN_NETWORK
    common = {"name": "api", "cluster": cluster, "healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1,
                                                                 "rise": 1, "fall": 2}}
    sections = {
        "lxc": {"lxc": {"replicas": 1}},
        "dns": {"dns": {"nodes": {"count": 2}, "zone": ZONE, "hostname": hostname, "ttl": 30,
                        "server": dns_server["server"], "tsig": {"name": "cplb-update", "secret": "placeholder00"},
                        "roles": [{"name": "api", "port": 6443, "targetPort": 6443}]}},
        "ovn": {"ovn": {"networkName": OVN_NETWORK, "listenAddress": listen}},
    }

    def use(stack, kind: str):
        project.write_stack_config(name, base_config(instanceGroups=[group],
                                                     loadBalancers=[{**common, "type": kind, **sections[kind]}]))
        if kind == "dns":
            stack.set_config("cplb:loadBalancers[0].dns.tsig.secret",
                             ConfigValue(dns_server["secret"], secret=True), path=True)

    config = base_config(instanceGroups=[group], loadBalancers=[{**common, "type": "lxc", **sections["lxc"]}])
    with pulumi_stack(config) as (project, name, stack):
        cps = {f"{name}-cp-1", f"{name}-cp-2"}

        up = stack.up(on_output=quiet)
        ep = up.outputs["loadBalancers"].value["api"]["endpoint"]
        host, port = ep.rsplit(":", 1)
        assert set(instances_with_prefix(f"{name}-api")) == {f"{name}-api-haproxy-1"}
        assert wait_for(lambda: {http_get(host, int(port), timeout=3) for _ in range(8)} == cps, 40), "lxc"

        use(stack, "dns")
        up = stack.up(on_output=quiet)
        assert set(instances_with_prefix(f"{name}-api")) == {f"{name}-api-proxy-1", f"{name}-api-proxy-2"}
        nodes = resolve(dns_server, fqdn)
        assert len(nodes) == 2 and sorted(nodes) == sorted(up.outputs["loadBalancers"].value["api"]["published"])
        for node in nodes:
            assert wait_for(lambda: {http_get(node, 6443, timeout=3) for _ in range(8)} == cps, 40), ("dns", node)

        use(stack, "ovn")
        up = stack.up(on_output=quiet)
        assert instances_with_prefix(f"{name}-api") == {}, "the dns strategy's proxy nodes were not deleted"
        assert resolve(dns_server, fqdn) == [], "the dns strategy's records were not deleted"
        assert up.outputs["loadBalancers"].value["api"]["endpoint"] == f"{listen}:6443"
        assert listen in nb_load_balancers()
        assert wait_for(lambda: {http_get(listen, 6443, timeout=3) for _ in range(8)} == cps, 40), "ovn"
    assert listen not in nb_load_balancers()
