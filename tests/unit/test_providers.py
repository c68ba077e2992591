"""Dynamic providers: they pickle (the engine ships them to the provider process), and their diffs are precise."""

import dill
import pulumi
import pytest

from providers.instance import Instance, InstanceProvider


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return f"{args.name}-id", args.inputs

    def call(self, args):
        return {}


def test_instance_resource_pickles_under_mocks():
    pulumi.runtime.set_mocks(Mocks(), preview=False)
    # Constructing the resource serializes its provider with dill, as a real `up` does.
    Instance("x", name="s-x-1", image="cplb/demo-apiserver", connection={"socket": "/nonexistent"},
             owner_stack="s", owner_id="group/x")
    blob = dill.dumps(InstanceProvider(), recurse=True)
    assert isinstance(dill.loads(blob), InstanceProvider)


def test_provider_construction_has_no_side_effects(monkeypatch):
    # Creating the provider must not open a connection (clients are created lazily, per call).
    import providers.incus_client as ic

    def boom(*a, **k):
        raise AssertionError("client created at construction")

    monkeypatch.setattr(ic, "IncusClient", boom)
    InstanceProvider()


BASE = {
    "name": "s-g-1", "image": "cplb/demo-apiserver", "connection": {"project": "default"},
    "config": {"user.a": "1"}, "profiles": [], "devices": {"eth0": {"type": "nic"}},
    "ownerStack": "s", "ownerId": "group/g",
}


@pytest.mark.parametrize("change,replace", [
    ({"config": {"user.a": "2"}}, False),
    ({"profiles": ["default"]}, False),
    ({"devices": {"eth0": {"type": "nic", "network": "other"}}}, False),
    ({"image": "cplb/haproxy"}, True),
    ({"name": "s-g-2"}, True),
    ({"connection": {"project": "other"}}, True),
])
def test_diff_updates_in_place_or_replaces(change, replace):
    d = InstanceProvider().diff("s-g-1", BASE, {**BASE, **change})
    assert d.changes is True
    assert bool(d.replaces) is replace


def test_diff_without_change_is_empty():
    d = InstanceProvider().diff("s-g-1", BASE, dict(BASE))
    assert d.changes is False and not d.replaces


def test_socket_path_change_alone_is_not_a_change():
    d = InstanceProvider().diff("s-g-1", BASE, {**BASE, "connection": {"project": "default", "socket": "/x"}})
    assert d.changes is False
