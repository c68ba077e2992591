"""An Incus cluster, with fakes for speed (tests/integration/test_incus7.py runs the same against three real nested
Incus 7 servers): placement over members, the members read once, routing's `location`, VIPs on a macvlan network,
and what the `oci` strategy refuses before anything is created."""

from __future__ import annotations

import pytest

import facts
from components.common import StackContext
from spec import IncusSpec, SpecError, parse as parse_stack


class FakeClient:
    def __init__(self, clustered: bool, members=(), network=None):
        self.clustered, self.members, self.network = clustered, list(members), network or {}
        self.calls: list[str] = []

    def server(self):
        return {"auth": "trusted", "environment": {"server_clustered": self.clustered, "server_version": "7.0.2"}}

    def call(self, method, path, what=""):
        self.calls.append(path)
        if path == "cluster/members":
            return [f"/1.0/cluster/members/{m}" for m in self.members]
        if path.startswith("networks/"):
            return self.network
        raise AssertionError(path)


def facts_with(client, **incus) -> facts.Facts:
    f = facts.Facts(IncusSpec(**incus))
    f._client = client
    return f


def test_replicas_go_to_the_members_in_turn_and_an_explicit_target_wins():
    ctx = StackContext(stack="s", incus=IncusSpec(), members=("m1", "m2", "m3"))
    assert [ctx.placement(None, n) for n in range(1, 5)] == ["m1", "m2", "m3", "m1"]
    assert ctx.placement("m3", 1) == "m3"
    standalone = StackContext(stack="s", incus=IncusSpec())
    assert standalone.placement(None, 1) is None and standalone.placement("x", 2) == "x"


def test_members_are_read_once_sorted_and_none_on_a_standalone_server():
    client = FakeClient(True, ["m3", "m1", "m2"])
    f = facts_with(client)
    assert f.cluster_members() == ["m1", "m2", "m3"]
    assert f.cluster_members() == ["m1", "m2", "m3"]
    assert client.calls == ["cluster/members"]
    assert facts_with(FakeClient(False)).cluster_members() == []


def test_member_of_hides_incus_none():
    assert facts.member_of({"location": "none"}) == "" and facts.member_of({"location": "m2"}) == "m2"
    assert facts.member_of({}) == ""


class Mocks:
    def new_resource(self, args):
        return args.name + "-id", args.inputs

    def call(self, args):
        return {}


def test_routing_rows_carry_the_member():
    import pulumi

    from components.targets import Backend, routing

    pulumi.runtime.set_mocks(Mocks(), preview=False)
    member = pulumi.Output.from_input("m2")  # an instance this stack creates: its location is an Output

    @pulumi.runtime.test
    def check():
        out = routing([(Backend("cp-1", "198.18.30.101", "u1", location="m1"), 6443),
                       (Backend("cp-2", "198.18.30.102", "u2", location=member), 6443),
                       (Backend("x", "198.18.30.103"), 6443)])
        return out.apply(lambda v: _assert_rows(v["destinations"]))

    check()


def _assert_rows(rows):
    assert [(d["name"], d["address"], d["location"]) for d in rows] == [
        ("cp-1", "198.18.30.101", "m1"), ("cp-2", "198.18.30.102", "m2"), ("x", "198.18.30.103", "")]


def test_a_vip_on_a_macvlan_network_is_checked_against_the_stack_subnet():
    macvlan = {"type": "macvlan", "config": {"parent": "eth0"}}
    with pytest.raises(ValueError, match=r"cplb:incus.subnet"):
        facts_with(FakeClient(True, network=macvlan)).check_vip("x.lxc.vip", "198.18.30.60", "cplbnet")
    f = facts_with(FakeClient(True, network=macvlan), subnet="198.18.30.1/24")
    assert f.check_vip("x.lxc.vip", "198.18.30.60", "cplbnet") == 24
    with pytest.raises(ValueError, match="not a free host address"):
        f.check_vip("x.lxc.vip", "198.18.31.60", "cplbnet")


@pytest.mark.parametrize("subnet", ["198.18.30.1", "198.18.30.1/33", "fd00::1/64", "198.18.30.1/24 ", "x/24"])
def test_a_bad_subnet_is_refused_with_its_key(subnet):
    with pytest.raises(SpecError, match=r"incus\.subnet"):
        parse_stack({"incus": {"subnet": subnet}})


def test_an_oci_pair_is_refused_before_anything_is_created():
    """haproxy is PID 1 of an OCI container: no keepalived beside it, so no `lxc` replicas or VIP for `oci`."""
    with pytest.raises(SpecError, match=r"cplb:loadBalancers\[0\]: section `lxc` does not apply to type 'oci'"):
        parse_stack({"loadBalancers": [{"name": "api", "cluster": "c", "type": "oci",
                                        "lxc": {"replicas": 2, "vip": "198.18.30.60"}, "oci": {}}]})
