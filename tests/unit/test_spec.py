"""Stack config validation: every invalid config names its key path and what is allowed."""

import pytest

import spec

GOOD_LB = {"name": "api", "cluster": "demo", "type": "lxc"}
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "https://198.18.10.5:6443", certificate-authority-data: Zm9v}}]
users: [{name: admin, user: {token: s3cr3t-token}}]
contexts: [{name: demo, context: {cluster: demo, user: admin}}]
current-context: demo
"""


def lb(**over):
    return {**GOOD_LB, **over}


def dns(**over):
    section = {"zone": "cplb.test.", "hostname": "api", "server": "127.0.0.1:5353",
               "tsig": {"name": "cplb-update", "secret": "c2VjcmV0c2VjcmV0"},
               "roles": [{"name": "api", "port": 6443, "targetPort": 6443}], **over}
    return lb(type="dns", dns=section)


def ka(servers=(), **vrrp):
    instance = {"virtualIPs": ["198.18.10.50/24"], **vrrp}
    return lb(type="keepalived", keepalived={"vrrpInstances": [instance], "virtualServers": list(servers)})


INVALID = [
    # (values of the cplb namespace, expected key path, expected words in the message)
    ({"loadBalancers": [lb(type="haproxy")]}, "cplb:loadBalancers[0].type", "lxc"),
    ({"loadBalancers": [lb(type="dns")]}, "cplb:loadBalancers[0]", "needs its `dns` section"),
    ({"loadBalancers": [dns(roles=[{"name": "api", "port": 65000, "targetPort": 6443}])]},
     "cplb:loadBalancers[0].dns.roles[0]", "reserved"),
    ({"loadBalancers": [dns(roles=[{"name": "api", "port": 443, "targetPort": 6443}])]},
     "cplb:loadBalancers[0].dns.roles[0]", "targetPort 6443 (the API server) requires port 6443"),
    ({"loadBalancers": [dns(roles=[{"name": "a", "port": 80, "targetPort": 80}, {"name": "a", "port": 81, "targetPort": 81}])]},
     "cplb:loadBalancers[0].dns", "names must be unique"),
    ({"loadBalancers": [dns(), {**dns(), "name": "api2", "dns": {**dns()["dns"], "hostname": "api2"}}]},
     "cplb:", "two API-server balancers"),
    ({"loadBalancers": [dns(ttl=0)]}, "cplb:loadBalancers[0].dns.ttl", "greater than or equal to 1"),
    ({"loadBalancers": [dns(hostname="api.other.test.")]}, "cplb:loadBalancers[0].dns", "outside the zone"),
    ({"loadBalancers": [dns(roles=[{"name": "a" * 29, "port": 80, "targetPort": 80}])]},
     "cplb:loadBalancers[0].dns.roles[0].name", "at most 28 characters"),
    ({"loadBalancers": [dns(roles=[{"name": "api", "port": 6443, "targetPort": 6443,
                                    "settings": {"proxyProtocol": True}}])]},
     "cplb:loadBalancers[0].dns.roles[0]", "never used on the API server port"),
    ({"loadBalancers": [lb(type="keepalived")]}, "cplb:loadBalancers[0]", "needs its `keepalived` section"),
    ({"loadBalancers": [ka(authPass="123456789")]}, "cplb:loadBalancers[0].keepalived.vrrpInstances[0].authPass",
     "at most 8 characters"),
    ({"loadBalancers": [ka(virtualRouterID=0)]}, "cplb:loadBalancers[0].keepalived.vrrpInstances[0].virtualRouterID",
     "greater than or equal to 1"),
    ({"loadBalancers": [ka(virtualRouterID=256)]},
     "cplb:loadBalancers[0].keepalived.vrrpInstances[0].virtualRouterID", "less than or equal to 255"),
    ({"loadBalancers": [ka(virtualRouterID=60), {**ka(virtualRouterID=60), "name": "api2"}]}, "cplb:",
     "virtualRouterID 60 is used by both 'api' and 'api2'"),
    ({"loadBalancers": [ka(virtualIPs=["198.18.10.50"])]},
     "cplb:loadBalancers[0].keepalived.vrrpInstances[0].virtualIPs[0]", "no prefix length"),
    ({"loadBalancers": [ka(virtualIPs=["vip"])]},
     "cplb:loadBalancers[0].keepalived.vrrpInstances[0].virtualIPs[0]", "not an address with a prefix length"),
    ({"loadBalancers": [ka(servers=[{"ipAddress": "198.18.10.50", "lbAlgo": "foo"}])]},
     "cplb:loadBalancers[0].keepalived.virtualServers[0].lbAlgo", "'rr'"),
    ({"loadBalancers": [ka(servers=[{"ipAddress": "198.18.10.50", "persistenceTimeoutSeconds": 0}])]},
     "cplb:loadBalancers[0].keepalived.virtualServers[0].persistenceTimeoutSeconds", "greater than or equal to 1"),
    ({"loadBalancers": [ka(advertIntervalSeconds=0.1, authPass="secret")]},
     "cplb:loadBalancers[0].keepalived.vrrpInstances[0]", "needs VRRP version 3"),
    ({"loadBalancers": [ka(virtualIPs=["198.18.10.50/24", "198.18.10.50/24"])]},
     "cplb:loadBalancers[0].keepalived.vrrpInstances[0]", "duplicates"),
    ({"loadBalancers": [lb(type="ovn")]}, "cplb:loadBalancers[0]", "needs its `ovn` section"),
    ({"loadBalancers": [lb(type="ovn", ovn={"networkName": "n", "listenAddress": "198.18.20.300"})]},
     "cplb:loadBalancers[0].ovn.listenAddress", "not an IPv4"),
    ({"loadBalancers": [lb(type="ovn", ovn={"networkName": "n", "listenAddress": "198.18.20.200"},
                           ports=[{"name": "s", "protocol": "SCTP", "port": 1}])]},
     "cplb:loadBalancers[0]", "TCP/UDP only"),
    ({"loadBalancers": [lb(type="external", external={"endpoint": "198.18.10.5"})]},
     "cplb:loadBalancers[0].external.endpoint", "pattern"),
    ({"loadBalancers": [lb(type="external", external={"endpoint": "198.18.10.5:99999"})]},
     "cplb:loadBalancers[0].external", "outside 1-65535"),
    ({"loadBalancers": [lb(type="external", external={"endpoint": "198.18.10.5:6443",
                                                      "kubeVip": {"vip": "198.18.10.6"}})]},
     "cplb:loadBalancers[0].external", "must be the endpoint's host"),
    ({"loadBalancers": [lb(type="external", external={"endpoint": "198.18.10.5:6443",
                                                      "kubeVip": {"vip": "198.18.10.5", "retryPeriodSeconds": 12}})]},
     "cplb:loadBalancers[0].external.kubeVip", "leaseDurationSeconds > renewDeadlineSeconds"),
    ({"loadBalancers": [lb(type="oci", oci={"image": "Haproxy Latest"})]}, "cplb:loadBalancers[0].oci.image", "pattern"),
    ({"loadBalancers": [lb(ovn={"networkName": "n", "listenAddress": "198.18.20.200"})]},
     "cplb:loadBalancers[0]", "section `ovn` does not apply"),
    ({"loadBalancers": [lb(name="Bad_Name")]}, "cplb:loadBalancers[0].name", "pattern"),
    ({"loadBalancers": [lb(name="api\nbind :1")]}, "cplb:loadBalancers[0].name", "pattern"),
    ({"loadBalancers": [lb(ports=[{"name": "api", "port": 70000}])]}, "cplb:loadBalancers[0].ports[0].port", "65535"),
    ({"loadBalancers": [lb(ports=[{"name": "api", "port": 0}])]}, "cplb:loadBalancers[0].ports[0].port", "greater than or equal to 1"),
    ({"loadBalancers": [lb(ports=[{"name": "api", "protocol": "UDP", "port": 53}])]}, "cplb:loadBalancers[0]", "TCP only"),
    ({"loadBalancers": [lb(ports=[{"name": "a", "port": 1}, {"name": "a", "port": 2}])]}, "cplb:loadBalancers[0]", "unique"),
    ({"loadBalancers": [lb(ports=[{"name": "api", "port": 1, "protocol": "ICMP"}])]}, "cplb:loadBalancers[0].ports[0].protocol", "'TCP', 'UDP' or 'SCTP'"),
    ({"loadBalancers": [lb(healthCheck={"mode": "ping"})]}, "cplb:loadBalancers[0].healthCheck.mode", "tcp"),
    ({"loadBalancers": [lb(healthCheck={"rise": 0})]}, "cplb:loadBalancers[0].healthCheck.rise", "greater than or equal to 1"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.9", "advertIntervalSeconds": 0.1,
                                "authPass": "secret"})]},
     "cplb:loadBalancers[0].lxc", "needs VRRP version 3"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.9", "advertIntervalSeconds": 0.005})]},
     "cplb:loadBalancers[0].lxc.advertIntervalSeconds", "greater than or equal to 0.01"),
    # kubernetes: publishing needs a kubeconfig for every balancer's cluster; a kubeconfig is checked, not echoed.
    ({"loadBalancers": [lb()], "kubernetes": {"publish": True}}, "cplb:", "cluster 'demo' has no control plane"),
    ({"loadBalancers": [lb()], "kubernetes": {"publish": True, "kubeconfig": KUBECONFIG}},
     "cplb:kubernetes", "`kubeconfig` and `cluster` go together"),
    ({"loadBalancers": [lb()], "kubernetes": {"publish": True, "kubeconfig": KUBECONFIG, "cluster": "other"}},
     "cplb:", "kubernetes.cluster 'other' is no balancer's cluster"),
    ({"loadBalancers": [lb()], "kubernetes": {"kubeconfig": "s3cret: [", "cluster": "demo"}},
     "cplb:kubernetes.kubeconfig", "is not YAML"),
    ({"loadBalancers": [lb()], "kubernetes": {"kubeconfig": KUBECONFIG.replace("https://", "http://"),
                                              "cluster": "demo"}},
     "cplb:kubernetes.kubeconfig", "names no `https://host:port` server"),
    ({"loadBalancers": [lb()], "kubernetes": {"publish": "sometimes"}}, "cplb:kubernetes.publish", "boolean"),
    ({"loadBalancers": [lb()], "controlPlanes": [{"name": "cp", "cluster": "demo"}],
      "kubernetes": {"kubeconfig": KUBECONFIG, "cluster": "demo"}},
     "cplb:", "has its control plane in this stack"),
    ({"loadBalancers": [lb(healthCheck={"connectTimeoutMilliseconds": 5})]},
     "cplb:loadBalancers[0].healthCheck.connectTimeoutMilliseconds", "greater than or equal to 10"),
    ({"loadBalancers": [lb(healthCheck={"connectTimeoutMilliseconds": 60001})]},
     "cplb:loadBalancers[0].healthCheck.connectTimeoutMilliseconds", "less than or equal to 60000"),
    ({"loadBalancers": [lb(healthCheck={"connectTimeoutMilliseconds": "0.25s"})]},
     "cplb:loadBalancers[0].healthCheck.connectTimeoutMilliseconds", "integer"),
    ({"loadBalancers": [lb(balance="random")]}, "cplb:loadBalancers[0].balance", "roundrobin"),
    ({"loadBalancers": [lb(lxc={"replicas": 2})]}, "cplb:loadBalancers[0].lxc", "vip"),
    ({"loadBalancers": [lb(lxc={"replicas": 0})]}, "cplb:loadBalancers[0].lxc.replicas", "greater than or equal to 1"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.300"})]}, "cplb:loadBalancers[0].lxc.vip", "not an IPv4 or IPv6"),
    ({"loadBalancers": [lb(targets={"addresses": [{"name": "a", "address": "10.0.0.1\nserver x"}]})]},
     "cplb:loadBalancers[0].targets.addresses[0].address", "not an IPv4"),
    ({"loadBalancers": [lb(targets={"selector": {"matchLabels": {"user.role": "a b"}}})]},
     "cplb:loadBalancers[0].targets.selector.matchLabels.user.role", "pattern"),
    ({"loadBalancers": [lb(targets={"selector": {"matchLabels": {"cluster": "x"}}})]},
     "cplb:loadBalancers[0].targets.selector.matchLabels.cluster", "pattern"),
    ({"loadBalancers": [lb(targets={"selector": {}})]}, "cplb:loadBalancers[0].targets.selector", "empty selector"),
    ({"loadBalancers": [lb(targets={"selector": {"matchExpressions": [{"key": "user.a", "operator": "In"}]}})]},
     "cplb:loadBalancers[0].targets.selector.matchExpressions[0]", "at least one value"),
    ({"loadBalancers": [lb(frontend={"port": 6443})]}, "cplb:loadBalancers[0].frontend", "unknown key"),
    ({"loadBalancers": [lb(), lb()]}, "cplb:", "names must be unique"),
    ({"incus": {"remote": "https://incus.test:8443"}}, "cplb:incus", "clientKey"),
    ({"incus": {"project": "my project"}}, "cplb:incus.project", "pattern"),
    ({"instanceGroups": [{"name": "cp", "count": 51}]}, "cplb:instanceGroups[0].count", "50"),
    ({"instanceGroups": [{"name": "cp", "labels": {"user.x": "a\nb"}}]}, "cplb:instanceGroups[0].labels.user.x", "pattern"),
    ({"instanceGroups": [{"name": "cp", "instance": {"image": "cplb/x", "limits": {"memory": "lots"}}}]},
     "cplb:instanceGroups[0].instance.limits.memory", "pattern"),
    ({"loadBalancer": []}, "cplb:loadBalancer", "unknown key"),
    ({"loadBalancers": [lb(stats={"enabled": True, "port": 6443})]}, "cplb:loadBalancers[0]", "stats.port"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.5", "authPass": "123456789"})]},
     "cplb:loadBalancers[0].lxc.authPass", "at most 8 characters"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.5", "authPass": "a b"})]},
     "cplb:loadBalancers[0].lxc.authPass", "pattern"),
    # Ironcore's port rules and the capability table (issue 7)
    ({"loadBalancers": [lb(ports=[{"name": "r", "port": 8010, "endPort": 8000}])]},
     "cplb:loadBalancers[0].ports[0]", "endPort 8000 must be >= port 8010"),
    ({"loadBalancers": [lb(ports=[{"name": "a", "port": 8000, "endPort": 8010},
                                  {"name": "b", "port": 8005, "endPort": 8020}])]},
     "cplb:loadBalancers[0]", "ports[1] (TCP 8005-8020) overlaps ports[0] (TCP 8000-8010)"),
    ({"loadBalancers": [lb(ports=[{"name": "r", "port": 8000, "endPort": 8010, "targetPort": 9000}])]},
     "cplb:loadBalancers[0].ports[0]", "leave targetPort out"),
    ({"loadBalancers": [lb(type="ovn", ovn={"networkName": "n", "listenAddress": "198.18.20.200"},
                           ports=[{"name": "r", "port": 8000, "endPort": 8010}])]},
     "cplb:loadBalancers[0]", "ports[0].endPort: the ovn strategy cannot balance a port range"),
    ({"loadBalancers": [{**ka(), "ipFamilies": ["IPv4", "IPv6"]}]},
     "cplb:loadBalancers[0]", "ipFamilies: the keepalived strategy serves IPv4 only, not IPv6"),
    ({"loadBalancers": [lb(ipFamilies=["IPv4", "IPv6"], lxc={"replicas": 2, "vip": "198.18.10.5"})]},
     "cplb:loadBalancers[0]", "IPv6 with lxc.replicas > 1"),
    ({"loadBalancers": [lb(ipFamilies=["IPv5"])]}, "cplb:loadBalancers[0].ipFamilies[0]", "'IPv4' or 'IPv6'"),
    ({"loadBalancers": [{**ka(), "targets": {"addresses": [{"name": "a", "address": "198.18.10.7"}]}}]},
     "cplb:loadBalancers[0]", "targets.addresses: the keepalived strategy runs on the selected instances"),
    ({"loadBalancers": [lb(targets={"selector": {"matchExpressions": [{"key": "user.a", "operator": "Near",
                                                                       "values": ["x"]}]}})]},
     "cplb:loadBalancers[0].targets.selector.matchExpressions[0].operator", "'In', 'NotIn', 'Exists' or 'DoesNotExist'"),
    ({"loadBalancers": [lb(targets={"selector": {"matchExpressions": [{"key": "user.a", "operator": "Exists",
                                                                       "values": ["x"]}]}})]},
     "cplb:loadBalancers[0].targets.selector.matchExpressions[0]", "takes no values"),
    ({"loadBalancers": [lb(ports=[{"name": "s", "protocol": "SCTP", "port": 36412}])]},
     "cplb:loadBalancers[0]", "ports[0].protocol: the lxc strategy balances TCP only, not SCTP"),
    # Hostile input (issue 14): one case per class. Injection through an IPv6 zone id:
    ({"loadBalancers": [lb(targets={"addresses": [{"name": "a", "address": "fe80::1%eth0\nserver x 198.18.10.9:1"}]},
                           ipFamilies=["IPv4", "IPv6"])]},
     "cplb:loadBalancers[0].targets.addresses[0].address", "IPv6 scope"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "fe80::1%x"})]}, "cplb:loadBalancers[0].lxc.vip", "IPv6 scope"),
    ({"loadBalancers": [ka(unicastSourceIP="198.18.10.101", unicastPeers=["fd00::1%eth0\n}"])]},
     "cplb:loadBalancers[0].keepalived.vrrpInstances[0].unicastPeers[0]", "IPv6 scope"),
    # Silent changes of meaning: a comment character in a VRRP password, addresses of a family nobody serves,
    # a name outside the zone by text only, a stats port inside a range, haproxy's own ports.
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.5", "authPass": "ab!cdefg"})]},
     "cplb:loadBalancers[0].lxc.authPass", "pattern"),
    ({"loadBalancers": [lb(targets={"addresses": [{"name": "a", "address": "::ffff:198.18.10.7"}]})]},
     "cplb:loadBalancers[0].targets.addresses[0].address", "IPv4-mapped"),
    ({"loadBalancers": [lb(targets={"addresses": [{"name": "a", "address": "fd00::7"}]})]},
     "cplb:loadBalancers[0]", "targets.addresses[0].address fd00::7 is IPv6 but ipFamilies is [IPv4]"),
    ({"loadBalancers": [ka(unicastSourceIP="198.18.10.101", unicastPeers=["fd00::2"])]},
     "cplb:loadBalancers[0].keepalived.vrrpInstances[0]", "unicastPeers[0] fd00::2 is not IPv4"),
    ({"loadBalancers": [ka(servers=[{"ipAddress": "198.18.10.51"}])]}, "cplb:loadBalancers[0].keepalived",
     "virtualServers[0].ipAddress 198.18.10.51 is none of"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "fd00::5"})]}, "cplb:loadBalancers[0]", "lxc.vip must be an IPv4"),
    ({"loadBalancers": [dns(hostname="api.othercplb.test.")]}, "cplb:loadBalancers[0].dns", "outside the zone"),
    ({"loadBalancers": [lb(ports=[{"name": "np", "port": 8000, "endPort": 8500}], stats={"enabled": True, "port": 8404})]},
     "cplb:loadBalancers[0]", "ports[0] (8000-8500) includes port 8404"),
    ({"loadBalancers": [lb(ports=[{"name": "m", "port": 8405}])]}, "cplb:loadBalancers[0]", "haproxy's monitor"),
    ({"loadBalancers": [lb(ports=[{"name": "r", "port": 9990, "endPort": 10000}])]}, "cplb:loadBalancers[0]",
     "haproxy's runtime API"),
    # keepalived's own ranges.
    ({"loadBalancers": [ka(advertIntervalSeconds=0.001)]},
     "cplb:loadBalancers[0].keepalived.vrrpInstances[0].advertIntervalSeconds", "greater than or equal to 0.01"),
    ({"loadBalancers": [ka(advertIntervalSeconds=0.015)]},
     "cplb:loadBalancers[0].keepalived.vrrpInstances[0].advertIntervalSeconds", "more than two decimals"),
    ({"loadBalancers": [ka(servers=[{"ipAddress": "198.18.10.50", "delayLoop": "0s"}])]},
     "cplb:loadBalancers[0].keepalived.virtualServers[0]", "at least 1s"),
    # Files no validator read: an image reference with a trailing `:`.
    ({"loadBalancers": [lb(type="external", external={"endpoint": "198.18.10.5:6443",
                                                      "kubeVip": {"vip": "198.18.10.5", "image": "ghcr.io/kv:"}})]},
     "cplb:loadBalancers[0].external.kubeVip.image", "pattern"),
    # What used to pass preview and fail at `up`.
    ({"loadBalancers": [dns(server="127.0.0.1:0")]}, "cplb:loadBalancers[0].dns", "server port 0 is outside 1-65535"),
    ({"loadBalancers": [dns(server="127.0.0.1:99999")]}, "cplb:loadBalancers[0].dns", "outside 1-65535"),
    ({"loadBalancers": [dns(tsig={"name": "k", "secret": "not!base64=="})]},
     "cplb:loadBalancers[0].dns.tsig.secret", "not valid base64"),
    ({"instanceGroups": [{"name": "api-haproxy", "count": 1}], "loadBalancers": [lb()]}, "cplb:",
     "loadBalancers[0] and instanceGroups[0] would both create the Incus instance `<stack>-api-haproxy-1`"),
    ({"instanceGroups": [{"name": "web-proxy", "count": 2}], "loadBalancers": [{**dns(), "name": "web"}]}, "cplb:",
     "would both create the Incus instance `<stack>-web-proxy-1`"),
    # Long values are cut in messages; odd keys are escaped in key paths.
    ({"loadBalancers": [lb(balance="x" * 10000)]}, "cplb:loadBalancers[0].balance", "(10000 characters)"),
    ({"loadBalancers": [lb(targets={"selector": {"matchLabels": {"user.a\nb": "x"}}})]},
     'cplb:loadBalancers[0].targets.selector.matchLabels["user.a\\nb"]', "pattern"),
    # Incus names are URL path segments: no '/', no '.' or '..' (`network: cplbbr0/../cplbbr0` was valid and reached
    # the REST paths), and a network's name is an interface's (15 characters).
    ({"incus": {"network": "br0/../br0"}}, "cplb:incus.network", "pattern"),
    ({"incus": {"network": "a-network-name-of-16"}}, "cplb:incus.network", "15"),
    ({"incus": {"project": ".."}}, "cplb:incus.project", "pattern"),
    ({"incus": {"storagePool": "cplb/x"}}, "cplb:incus.storagePool", "pattern"),
    ({"instanceGroups": [{"name": "cp", "instance": {"image": "cplb/demo-apiserver", "profiles": ["../default"]}}]},
     "cplb:instanceGroups[0].instance.profiles[0]", "pattern"),
    ({"instanceGroups": [{"name": "cp", "instance": {"image": "cplb/demo-apiserver", "target": "m1/../m2"}}]},
     "cplb:instanceGroups[0].instance.target", "pattern"),
    ({"loadBalancers": [lb(type="ovn", ovn={"networkName": "ovn/x", "listenAddress": "198.18.20.200"})]},
     "cplb:loadBalancers[0].ovn.networkName", "pattern"),
    # An address a balancer takes is its alone, never its own backend, never inside a cluster's Service range.
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.50"},
                           targets={"addresses": [{"name": "a", "address": "198.18.10.50"}]})]},
     "cplb:loadBalancers[0]", "this balancer's own lxc.vip"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.50"}),
                        lb(name="api2", lxc={"replicas": 2, "vip": "198.18.10.50", "virtualRouterID": 52})]},
     "loadBalancers[1].lxc.vip", "already loadBalancers[0].lxc.vip"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.50"}),
                        {**ka(virtualRouterID=53), "name": "api2"}]},
     "loadBalancers[1].keepalived.vrrpInstances[0].virtualIPs[0]", "already loadBalancers[0].lxc.vip"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.19.0.20"})],
      "controlPlanes": [{"name": "cp", "cluster": "demo"}]},
     "controlPlanes[0].serviceCIDR", "holds 198.19.0.20 (loadBalancers[0].lxc.vip)"),
    ({"loadBalancers": [lb(), lb(name="api2", cluster="other")],
      "controlPlanes": [{"name": "cp", "cluster": "demo"}, {"name": "cp2", "cluster": "other",
                                                            "serviceCIDR": "198.19.0.128/25"}]},
     "controlPlanes[1].serviceCIDR", "overlaps controlPlanes[0].serviceCIDR"),
    # `user.cplb.*` keys are the project's own: a group may not declare its instances owned, proven or drained.
    ({"instanceGroups": [{"name": "cp", "labels": {"user.cplb.owner": "lb/api"}}]},
     "cplb:instanceGroups[0].labels", "incus-cplb's own"),
    ({"instanceGroups": [{"name": "cp", "labels": {"user.cplb.disabled": "true"}}]},
     "cplb:instanceGroups[0].labels", "user.cplb.disabled"),
]


@pytest.mark.parametrize("values,path,words", INVALID, ids=[f"{i}-{c[1]}" for i, c in enumerate(INVALID)])
def test_invalid_config_names_the_key_path(values, path, words):
    with pytest.raises(spec.SpecError) as exc:
        spec.parse(values)
    message = str(exc.value)
    assert path in message, message
    assert words in message, message


def test_at_least_fifteen_invalid_cases():
    assert len(INVALID) >= 15


def test_defaults_for_control_plane_balancer():
    s = spec.parse({"loadBalancers": [GOOD_LB]})
    b = s.load_balancers[0]
    assert b.ports[0].port == 6443 and b.ports[0].backend_port == 6443
    assert b.effective_targets().selector.match_labels == {
        "user.cluster-name": "demo", "user.cluster-role": "control-plane"}
    assert b.lxc_spec.replicas == 1 and b.lxc_spec.instance.image == "cplb/haproxy"
    assert b.health_check.mode == "tcp"


def test_default_selector_for_service_balancer():
    s = spec.parse({"loadBalancers": [lb(role="service")]})
    assert s.load_balancers[0].effective_targets().selector.match_labels == {"user.cplb.loadbalancer": "api"}


def test_dev_stack_file_is_valid():
    import os
    import yaml

    from tests.conftest import ROOT

    with open(os.path.join(ROOT, "stacks", "Pulumi.dev.yaml")) as f:
        config = yaml.safe_load(f)["config"]
    values = {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("cplb:")}
    s = spec.parse(values)
    assert s.control_planes[0].count == 3 and s.control_planes[0].instance.image == "cplb/control-plane"


def test_port_range_and_dual_stack_accepted_where_the_strategy_can():
    s = spec.parse({"loadBalancers": [lb(ipFamilies=["IPv4", "IPv6"],
                                         ports=[{"name": "r", "port": 30000, "endPort": 30010},
                                                {"name": "u", "port": 30011}])]})
    p = s.load_balancers[0].ports[0]
    assert p.is_range and p.listen == "30000-30010" and p.last_port == 30010
    # Different protocols may share ports.
    spec.parse({"loadBalancers": [dns(), lb(name="ext", type="external", external={"endpoint": "198.18.10.9:53"},
                                         ports=[{"name": "t", "port": 53}, {"name": "u", "protocol": "UDP", "port": 53}])]})


SECRET_CASES = [
    # (config values, the secret that must not appear, key path)
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.5", "authPass": "ab!cdefg"})]}, "ab!cdefg",
     "cplb:loadBalancers[0].lxc.authPass"),
    ({"loadBalancers": [ka(authPass="x{y}z#w")]}, "x{y}z#w", "cplb:loadBalancers[0].keepalived.vrrpInstances[0].authPass"),
    ({"loadBalancers": [dns(tsig={"name": "k", "secret": "Zm9vYmFy!not-base64"})]}, "Zm9vYmFy!not-base64",
     "cplb:loadBalancers[0].dns.tsig.secret"),
    ({"loadBalancers": [lb(lxc={"replicas": 2, "vip": "198.18.10.5", "authPass": "toolong-secret"})]},
     "toolong-secret", "cplb:loadBalancers[0].lxc.authPass"),
]


@pytest.mark.parametrize("values,secret,path", SECRET_CASES)
def test_errors_on_secret_fields_name_the_field_never_the_value(values, secret, path):
    with pytest.raises(spec.SpecError) as exc:
        spec.parse(values)
    message = str(exc.value)
    assert path in message and secret not in message, message


def test_long_values_are_cut_and_messages_stay_short():
    with pytest.raises(spec.SpecError) as exc:
        spec.parse({"loadBalancers": [lb(targets={"addresses": [{"name": "a", "address": "1" * 10000}]})]})
    assert len(str(exc.value)) < 400 and "(10000 characters)" in str(exc.value)


@pytest.mark.parametrize("values,where", [
    ({"loadBalancers": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, "nested deeper"),
    ({"loadBalancers": [{1: "x"}]}, "is not a string"),
    ({"loadBalancers": [{"name": "a" * 100_000}]}, "at most 65536"),
    ({"loadBalancers": [[0] * 100_001]}, "more than 100000 values"),
    ({"incus": object()}, "not a config value"),
])
def test_config_of_the_wrong_shape_is_refused_without_a_traceback(values, where):
    with pytest.raises(spec.SpecError) as exc:
        spec.parse(values)
    assert where in str(exc.value) and str(exc.value).startswith("invalid stack config:")


def test_namespace_that_is_not_a_map():
    with pytest.raises(spec.SpecError, match="must be a map"):
        spec.parse(["loadBalancers"])


def test_incus_names_count_the_stack_name():
    values = {"instanceGroups": [{"name": "g" * 40, "count": 1}]}
    spec.parse(values, "dev")
    with pytest.raises(spec.SpecError, match=r"cplb:instanceGroups\[0\]\.name: the Incus instance name"):
        spec.parse(values, "a-very-long-stack-name-for-this")


def test_keepalived_advert_interval_prints_without_exponent():
    vi = spec.VrrpInstanceSpec(virtualIPs=["198.18.10.50/24"], advertIntervalSeconds=1e-2)
    assert vi.advert_int_text == "0.01"
    assert spec.VrrpInstanceSpec(virtualIPs=["198.18.10.50/24"], advertIntervalSeconds=2.0).advert_int_text == "2"
    assert spec.VrrpInstanceSpec(virtualIPs=["198.18.10.50/24"], advertIntervalSeconds=0.1).advert_int_text == "0.1"


def test_a_refused_kubeconfig_is_never_echoed():
    for bad in ("s3cr3t-token: [", KUBECONFIG.replace("https://", "http://")):
        with pytest.raises(spec.SpecError) as exc:
            spec.parse({"loadBalancers": [lb()], "kubernetes": {"kubeconfig": bad, "cluster": "demo"}})
        assert "s3cr3t" not in str(exc.value) and "198.18.10.5" not in str(exc.value), str(exc.value)


def test_a_service_balancer_s_selection_label_is_still_a_group_label():
    parsed = spec.parse({"instanceGroups": [{"name": "web", "labels": {"user.cplb.loadbalancer": "ingress"}}]})
    assert parsed.instance_groups[0].labels == {"user.cplb.loadbalancer": "ingress"}


def test_a_cluster_s_ranges_stay_off_the_instances_network():
    from facts import Facts

    facts = Facts(spec.IncusSpec())
    facts.network = lambda name: {"config": {"ipv4.address": "198.18.10.1/24"}}
    cluster = spec.parse({"loadBalancers": [lb()], "controlPlanes": [{"name": "cp", "cluster": "demo"}]}).control_planes[0]
    facts.check_cluster_ranges("cplb:controlPlanes[0]", cluster, "cplbbr0")  # the defaults are clear of it
    clash = cluster.model_copy(update={"service_cidr": "198.18.10.0/24"})
    with pytest.raises(ValueError, match=r"cplb:controlPlanes\[0\]\.serviceCIDR: 198.18.10.0/24 overlaps network"):
        facts.check_cluster_ranges("cplb:controlPlanes[0]", clash, "cplbbr0")
