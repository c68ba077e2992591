"""Proof of ownership (providers/ownership.py): only the stack key makes one, and it vouches for one object only."""

import datetime

import pytest
from hypothesis import given, strategies as st

from providers import instance, volume
from providers.incus_client import IncusError
from providers.ownership import PROOF, PROOF_SKEW_SECONDS, created_at, make_proof, proven

KEY = "11" * 32
OTHER_KEY = "22" * 32
T = 1_796_000_000  # 2026-11-30


def incus_time(t: float) -> str:
    """As Incus writes created_at: RFC 3339, nanoseconds, UTC."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")


def made(name="s-api-haproxy-1", proof=None, born=T + 2):
    return {"name": name, "created_at": incus_time(born),
            "config": {"user.cplb.stack": "s", "user.cplb.owner": "lb/api", **({PROOF: proof} if proof else {})}}


def test_incus_created_at_is_read_to_the_second():
    assert created_at({"created_at": "2026-12-07T16:08:30.999003289Z"}) == pytest.approx(
        datetime.datetime(2026, 12, 7, 16, 8, 30, 999003, tzinfo=datetime.timezone.utc).timestamp())
    assert created_at({"created_at": "0001-01-01T00:00:00Z"}) is None
    assert created_at({}) is None


def test_a_proof_made_with_the_stack_key_for_this_object_holds():
    proof = make_proof(KEY, "instance", "default", "s-api-haproxy-1", now=T)
    assert proven(KEY, "instance", "default", "s-api-haproxy-1", made(proof=proof))


@pytest.mark.parametrize("why, obj, key, kind, project, name", [
    ("no proof: labels alone", made(), KEY, "instance", "default", "s-api-haproxy-1"),
    ("another key", made(proof=make_proof(OTHER_KEY, "instance", "default", "s-api-haproxy-1", T)), KEY,
     "instance", "default", "s-api-haproxy-1"),
    ("another name's proof", made(proof=make_proof(KEY, "instance", "default", "s-api-haproxy-2", T)), KEY,
     "instance", "default", "s-api-haproxy-1"),
    ("another project's proof", made(proof=make_proof(KEY, "instance", "other", "s-api-haproxy-1", T)), KEY,
     "instance", "default", "s-api-haproxy-1"),
    ("a volume's proof on an instance", made(proof=make_proof(KEY, "volume", "default", "s-api-haproxy-1", T)), KEY,
     "instance", "default", "s-api-haproxy-1"),
    ("copied from an object made long before (deleted, then made again)",
     made(proof=make_proof(KEY, "instance", "default", "s-api-haproxy-1", T), born=T + PROOF_SKEW_SECONDS + 5), KEY,
     "instance", "default", "s-api-haproxy-1"),
    ("no created_at", {**made(proof=make_proof(KEY, "instance", "default", "s-api-haproxy-1", T)), "created_at": ""},
     KEY, "instance", "default", "s-api-haproxy-1"),
    ("garbage", made(proof="v1:x:y"), KEY, "instance", "default", "s-api-haproxy-1"),
])
def test_anything_else_is_no_proof(why, obj, key, kind, project, name):
    assert not proven(key, kind, project, name, obj), why


@given(st.text(max_size=200))
def test_no_string_but_the_stack_s_own_proves(forged):
    assert not proven(KEY, "instance", "default", "n", made(name="n", proof=forged))


class FakeIncus:
    def __init__(self, existing):
        self.existing, self.calls = existing, []

    def get_instance(self, name):
        return self.existing

    def call(self, method, path, **kw):
        self.calls.append((method, path, kw))
        if method == "GET":
            return self.existing
        raise AssertionError(f"nothing may be written: {method} {path}")

    def etag_get(self, path, what=""):
        raise AssertionError("nothing may be adopted")


def props(name="s-api-haproxy-1"):
    return {"name": name, "image": "cplb/haproxy", "ownerStack": "s", "ownerId": "lb/api", "ownerKey": KEY,
            "connection": {}, "pool": "cplb"}


def test_create_refuses_an_instance_with_our_name_and_labels_but_no_proof(monkeypatch):
    fake = FakeIncus(made())
    monkeypatch.setattr(instance, "client_for", lambda _conn: fake)
    with pytest.raises(IncusError, match="not its proof of ownership"):
        instance.InstanceProvider().create(props())
    assert [c for c in fake.calls if c[0] != "GET"] == []


def test_create_refuses_a_volume_with_our_name_and_labels_but_no_proof(monkeypatch):
    fake = FakeIncus(made(name="s-api-haproxy-1-state"))
    monkeypatch.setattr(volume, "client_for", lambda _conn: fake)
    with pytest.raises(IncusError, match="not its proof of ownership"):
        volume.StorageVolumeProvider().create(props("s-api-haproxy-1-state"))


def test_the_creating_request_carries_the_proof():
    body = instance.create_request(props())
    assert body["config"][PROOF].startswith("v1:")
    assert proven(KEY, "instance", "default", "s-api-haproxy-1",
                  {"config": body["config"], "created_at": incus_time(int(body["config"][PROOF].split(":")[1]))})
