"""Rolling image upgrades, with fakes for speed (tests/integration/test_rollout.py runs them for real): which image a
group runs, when an image change is a rebuild and not a replacement, and the order a member's rebuild goes in."""

from __future__ import annotations

import pytest

import facts
from providers import instance as instance_mod
from providers.incus_client import IncusError
from providers.instance import InstanceProvider
from spec import IncusSpec

OLD, NEW, NEWER = "a" * 64, "b" * 64, "c" * 64
BASE = {
    "name": "s-cp-1", "image": "cplb/control-plane", "imageFingerprint": OLD, "connection": {"project": "default"},
    "config": {}, "profiles": [], "devices": {}, "ownerStack": "s", "ownerId": "group/cp",
}


# --- diff: a rebuild is an update, a replacement only where nothing can be kept ---------------------------------

@pytest.mark.parametrize("change", [{"imageFingerprint": NEW}, {"image": "cplb/control-plane/0123456789abcdef"}])
def test_a_new_image_rebuilds_in_place_when_the_component_says_so(change):
    d = InstanceProvider().diff("s-cp-1", {**BASE, "rebuild": True}, {**BASE, "rebuild": True, **change})
    assert d.changes is True and not d.replaces


def test_without_rebuild_or_for_an_oci_container_a_new_image_replaces():
    assert InstanceProvider().diff("s-cp-1", BASE, {**BASE, "imageFingerprint": NEW}).replaces == ["imageFingerprint"]
    oci = {**BASE, "rebuild": True, "oci": {"registry": "r", "image": "haproxy"}}
    assert InstanceProvider().diff("x", oci, {**oci, "oci": {"registry": "r", "image": "haproxy:3"}}).replaces


def test_how_a_change_rolls_is_not_itself_a_change():
    d = InstanceProvider().diff("s-cp-1", BASE, {**BASE, "rebuild": True, "rollout": {"peers": ["s-cp-2"]}})
    assert d.changes is False


def test_a_placement_declared_where_the_instance_runs_is_recorded_not_a_replacement():
    """dns proxy nodes made before they were spread over an Incus cluster's members have no target: the member
    they run on, newly declared, moves nothing; another member is a move, so a replacement."""
    old = {**BASE, "target": None, "location": "m2"}
    d = InstanceProvider().diff("s-cp-1", old, {**BASE, "target": "m2"})
    assert d.changes is True and d.replaces == []
    assert InstanceProvider().diff("s-cp-1", old, {**BASE, "target": "m3"}).replaces == ["target"]
    assert InstanceProvider().diff("s-cp-1", {**BASE, "target": "m1", "location": "m2"},
                                   {**BASE, "target": "m2"}).replaces == ["target"]


# --- which image a group runs ------------------------------------------------------------------------------------

class FakeFacts(facts.Facts):
    def __init__(self, running: dict, created: dict, latest: str = NEWER):
        super().__init__(IncusSpec())
        self._instances = [facts.ObservedInstance(
            name=n, uuid="u", status="Running", labels={}, ipv4=(), ipv6=(), owner_stack="s", owner_id="group/cp",
            base_image=fp) for n, fp in running.items()]
        self._latest, self._created = latest, created

    def image_fingerprint(self, field, alias):
        return self._latest

    def image_meta(self, fingerprint):
        return {"created_at": self._created.get(fingerprint, "")}


NAMES = ["s-cp-1", "s-cp-2", "s-cp-3"]
CREATED = {OLD: "2026-11-01T00:00:00Z", NEW: "2026-12-01T00:00:00Z", NEWER: "2026-12-02T00:00:00Z"}


def test_a_running_group_keeps_its_image_when_a_newer_version_is_built():
    plan = FakeFacts({n: OLD for n in NAMES}, CREATED).image_plan("k", "cplb/control-plane", NAMES, "s")
    assert plan.fingerprint == OLD and plan.latest == NEWER and plan.rolling == []


def test_upgrade_or_a_named_version_moves_the_group_member_by_member():
    f = FakeFacts({n: OLD for n in NAMES}, CREATED)
    assert f.image_plan("k", "cplb/control-plane", NAMES, "s", upgrade=True).rolling == NAMES
    assert f.image_plan("k", "cplb/control-plane/0123456789abcdef", NAMES, "s").fingerprint == NEWER


def test_a_group_found_on_two_versions_goes_on_to_the_newer_one():
    """An upgrade killed after its first member: the next plain `up` finishes it, and never goes back."""
    plan = FakeFacts({"s-cp-1": OLD, "s-cp-2": OLD, "s-cp-3": NEW}, CREATED).image_plan(
        "k", "cplb/control-plane", NAMES, "s")
    assert plan.fingerprint == NEW and plan.rolling == ["s-cp-1", "s-cp-2"]


def test_a_new_group_and_a_new_member_join_the_version_in_use():
    assert FakeFacts({}, CREATED).image_plan("k", "cplb/control-plane", NAMES, "s").fingerprint == NEWER
    plan = FakeFacts({"s-cp-1": OLD}, CREATED).image_plan("k", "cplb/control-plane", NAMES, "s")
    assert plan.fingerprint == OLD and not plan.rolls("s-cp-3")


def test_instances_of_other_stacks_do_not_pin_anything():
    f = FakeFacts({n: OLD for n in NAMES}, CREATED)
    assert f.image_plan("k", "cplb/control-plane", NAMES, "other").fingerprint == NEWER


# --- a member's rebuild: only while the others serve, then wait until it is back ----------------------------------

class FakeClient:
    def __init__(self, status="Running", base=OLD):
        self.calls: list[str] = []
        self.inst = {"name": "s-cp-1", "status": status, "config": {
            "user.cplb.stack": "s", "user.cplb.owner": "group/cp", "volatile.base_image": base,
            "volatile.uuid": "u"}, "state": {"network": {"eth0": {"addresses": [
                {"family": "inet", "scope": "global", "address": "198.18.10.150"}]}}}}

    def get_instance(self, name):
        return self.inst

    def etag_get(self, path, what=""):
        return self.inst, ""

    def set_state(self, name, action, force=False, timeout=30):
        self.calls.append(f"{action}{' force' if force else ''}")
        self.inst["status"] = "Running" if action == "start" else "Stopped"

    def call(self, method, path, json=None, **kw):
        if path.endswith("/rebuild"):
            self.calls.append(f"rebuild {json['source']['fingerprint'][:1]}")
            self.inst["config"]["volatile.base_image"] = json["source"]["fingerprint"]
        elif method == "PUT":
            self.calls.append("converge")

    def wait_for_address(self, name, **kw):
        return self.inst


@pytest.fixture
def fake(monkeypatch):
    def make(status="Running", peers_healthy=True, back_healthy=True):
        client = FakeClient(status)
        monkeypatch.setattr(instance_mod, "client_for", lambda conn: client)
        waits = []

        def wait_healthy(c, names, health, seconds):
            waits.append(list(names))
            ok = back_healthy if names == ["s-cp-1"] else peers_healthy
            return None if ok else "s-cp-2: /readyz: failing"

        monkeypatch.setattr(instance_mod.rollout, "wait_healthy", wait_healthy)
        monkeypatch.setattr(instance_mod.rollout, "member_health", lambda c, n, h: (c.inst["status"] == "Running", ""))
        return client, waits
    return make


NEWS = {**BASE, "imageFingerprint": NEW, "rebuild": True,
        "rollout": {"peers": NAMES, "health": {"kind": "https"}, "waitSeconds": 1}}


def test_a_serving_member_waits_for_its_peers_then_stops_rebuilds_and_waits_until_it_is_back(fake):
    client, waits = fake()
    outs = InstanceProvider().update("s-cp-1", BASE, NEWS).outs
    assert client.calls == ["stop", "rebuild b", "converge", "start"]
    assert waits == [["s-cp-2", "s-cp-3"], ["s-cp-1"]]
    assert outs["imageFingerprint"] == NEW


def test_a_vrrp_replica_stops_only_while_its_peers_take_its_connections_over(fake):
    """The peers send on what still reaches them for the leaving holder's connections (cplb-takeover), from before
    its stop until it is stopped; a peer that cannot (an older image: exit 127) is left as it was."""
    client, _ = fake()
    replies = {"s-cp-2": 0, "s-cp-3": 127}

    def exec_(name, cmd, timeout=120):
        client.calls.append(f"{name} {' '.join(cmd[1:])}")
        return replies[name], "", ""

    client.exec = exec_
    news = {**NEWS, "rollout": {**NEWS["rollout"], "health": {"kind": "haproxy", "port": 6443, "vrrp": True}}}
    InstanceProvider().update("s-cp-1", BASE, news)
    assert client.calls[:4] == ["s-cp-2 accept 198.18.10.150 30", "s-cp-3 accept 198.18.10.150 30", "stop",
                                "s-cp-2 release 198.18.10.150"]
    # Without VRRP (or for other kinds) nothing is asked of the peers.
    client.calls.clear()
    client.inst["config"]["volatile.base_image"] = OLD
    InstanceProvider().update("s-cp-1", BASE, NEWS)
    assert client.calls == ["stop", "rebuild b", "converge", "start"]


def test_only_the_vip_holder_has_its_connections_taken_over(fake):
    """A standby (the pair's VIP declared, not on its eth0) serves nothing through the VIP: its peers are not asked;
    the holder (the VIP on its eth0 beside its own address) is, for its own address."""
    client, _ = fake()
    client.exec = lambda name, cmd, timeout=120: (client.calls.append(f"{name} {' '.join(cmd[1:])}"), (0, "", ""))[1]
    news = {**NEWS, "ignoreAddresses": ["198.18.10.40"],
            "rollout": {**NEWS["rollout"], "health": {"kind": "haproxy", "port": 6443, "vrrp": True}}}
    InstanceProvider().update("s-cp-1", BASE, news)
    assert client.calls == ["stop", "rebuild b", "converge", "start"]
    client.calls.clear()
    client.inst["config"]["volatile.base_image"] = OLD
    client.inst["state"]["network"]["eth0"]["addresses"].append(
        {"family": "inet", "scope": "global", "address": "198.18.10.40"})
    InstanceProvider().update("s-cp-1", BASE, news)
    assert client.calls[:3] == ["s-cp-2 accept 198.18.10.150 30", "s-cp-3 accept 198.18.10.150 30", "stop"]


WITHDRAW = {"kind": "dns", "server": "127.0.0.1:53", "zone": "cplb.test.", "fqdn": "api.cplb.test.", "ttl": 7,
            "tsig": {"name": "k.", "algorithm": "hmac-sha256", "secret": "c2VjcmV0"}, "ownerStack": "s",
            "ownerId": "lb/api"}


@pytest.fixture
def dns_calls(fake, monkeypatch):
    """A rollout of a dns proxy node with the DNS server's answers faked: what it was asked, in order with the
    member's stop and start."""
    from providers import dns_records

    client, waits = fake()
    records = {"published": ["198.18.10.150", "198.18.10.151"]}

    def withdraw(props, addresses):
        client.calls.append(f"withdraw {' '.join(addresses)}")
        records["published"] = [a for a in records["published"] if a not in addresses]

    def restore(props, addresses):
        client.calls.append(f"restore {' '.join(addresses)}")
        records["published"] = sorted(records["published"] + addresses)

    monkeypatch.setattr(dns_records, "published", lambda props: list(records["published"]))
    monkeypatch.setattr(dns_records, "withdraw", withdraw)
    monkeypatch.setattr(dns_records, "restore", restore)
    monkeypatch.setattr(instance_mod.rollout.time, "sleep", lambda s: client.calls.append(f"wait {s:g}s"))
    news = {**NEWS, "rollout": {**NEWS["rollout"], "health": {"kind": "tcp", "port": 6443}, "withdraw": WITHDRAW}}
    return client, records, news


def test_a_dns_proxy_node_leaves_its_name_for_the_ttl_before_it_stops_and_returns_once_healthy(dns_calls):
    client, records, news = dns_calls
    InstanceProvider().update("s-cp-1", BASE, news)
    assert client.calls == ["withdraw 198.18.10.150", "wait 7s", "stop", "rebuild b", "converge", "start",
                            "restore 198.18.10.150"]
    assert records["published"] == ["198.18.10.150", "198.18.10.151"]


def test_a_dns_proxy_node_that_comes_back_unhealthy_stays_out_of_its_name(dns_calls, monkeypatch):
    client, records, news = dns_calls
    monkeypatch.setattr(instance_mod.rollout, "wait_healthy",
                        lambda c, names, h, s: "s-cp-1: no answer" if names == ["s-cp-1"] else None)
    with pytest.raises(IncusError, match="rollout stops here"):
        InstanceProvider().update("s-cp-1", BASE, news)
    assert "restore 198.18.10.150" not in client.calls and records["published"] == ["198.18.10.151"]


def test_the_only_published_node_is_not_withdrawn(dns_calls):
    client, records, news = dns_calls
    records["published"] = ["198.18.10.150"]
    InstanceProvider().update("s-cp-1", BASE, news)
    assert client.calls == ["stop", "rebuild b", "converge", "start"]


def test_members_of_different_groups_are_never_down_at_the_same_time(monkeypatch):
    """The engine updates a control-plane member and a worker at once (different groups); their rebuilds, from the
    stop until the member is healthy again, do not overlap."""
    import threading
    import time as _time

    clients = {n: FakeClient() for n in ("s-cp-1", "s-worker-1")}
    for n, c in clients.items():
        c.inst["name"] = n
    monkeypatch.setattr(instance_mod, "client_for", lambda conn: threading.current_thread().client)
    spans: dict[str, list[float]] = {}

    def wait_healthy(c, names, health, seconds):
        if names == [c.inst["name"]]:  # back after the rebuild: the member's down time ends here
            _time.sleep(0.3)
            spans[c.inst["name"]].append(_time.monotonic())
        return None

    def set_state(c, name, action, force=False, timeout=30):
        if action == "stop":
            spans[name] = [_time.monotonic()]
        c.inst["status"] = "Running" if action == "start" else "Stopped"

    monkeypatch.setattr(instance_mod.rollout, "wait_healthy", wait_healthy)
    monkeypatch.setattr(instance_mod.rollout, "member_health", lambda c, n, h: (True, ""))
    monkeypatch.setattr(FakeClient, "set_state", lambda self, name, action, **kw: set_state(self, name, action))

    def roll(name):
        threading.current_thread().client = clients[name]
        InstanceProvider().update(name, {**BASE, "name": name}, {**NEWS, "name": name})

    threads = [threading.Thread(target=roll, args=(n,)) for n in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    (a_start, a_end), (b_start, b_end) = sorted(spans.values())
    assert a_end <= b_start, spans


def test_a_member_is_not_taken_down_while_a_peer_is_unhealthy(fake):
    client, _ = fake(peers_healthy=False)
    with pytest.raises(IncusError, match=r"not rolling s-cp-1 .*\(s-cp-2: /readyz: failing\)"):
        InstanceProvider().update("s-cp-1", BASE, NEWS)
    assert client.calls == []  # nothing was changed


def test_a_member_left_down_by_a_killed_rollout_is_rebuilt_without_waiting_for_peers(fake):
    client, waits = fake(status="Stopped", peers_healthy=False)
    InstanceProvider().update("s-cp-1", BASE, NEWS)
    assert client.calls == ["rebuild b", "converge", "start"] and waits == [["s-cp-1"]]


def test_a_rebuilt_member_that_does_not_come_back_stops_the_rollout(fake):
    fake(back_healthy=False)
    with pytest.raises(IncusError, match="rollout stops here"):
        InstanceProvider().update("s-cp-1", BASE, NEWS)


def test_a_member_already_on_the_image_is_not_rebuilt_again(fake):
    client, waits = fake()
    client.inst["config"]["volatile.base_image"] = NEW  # rebuilt by a run that was killed before it recorded it
    InstanceProvider().update("s-cp-1", BASE, NEWS)
    assert client.calls == ["converge"] and waits == []


def test_reading_a_starting_instance_is_retried_only_on_incus_transient_invalid_pid(monkeypatch):
    """Seen in a rollout: `GET /1.0/instances/x?recursion=1` of a container starting at that instant answers 500
    "Invalid PID"; it is retried (bounded), and any other failure is not."""
    from providers.incus_client import IncusClient

    calls = []

    def call(self, method, path, **kw):
        calls.append(path)
        if len(calls) < 3:
            raise IncusError("read instance x: Incus answered 500: Invalid PID '\\x00'", status=500)
        return {"name": "x"}

    monkeypatch.setattr(IncusClient, "call", call)
    monkeypatch.setattr("time.sleep", lambda s: None)
    client = IncusClient.__new__(IncusClient)
    assert client.get_instance("x") == {"name": "x"} and len(calls) == 3
    calls.clear()
    monkeypatch.setattr(IncusClient, "call", lambda self, m, p, **kw: calls.append(p) or (_ for _ in ()).throw(
        IncusError("read instance x: Incus answered 500: database is locked", status=500)))
    with pytest.raises(IncusError, match="database is locked"):
        client.get_instance("x")
    assert len(calls) == 1


def test_a_state_volume_is_adopted_only_when_it_is_the_stacks_own_and_deleted_only_then(monkeypatch):
    from providers import volume as volume_mod

    store: dict = {}
    calls: list = []

    class Client:
        def call(self, method, path, json=None, **kw):
            calls.append((method, path))
            name = path.rsplit("/", 1)[-1]
            if method == "GET":
                if name not in store:
                    raise IncusError("not found", status=404)
                return store[name]
            if method == "POST":
                store[json["name"]] = {"config": json["config"]}
            if method == "DELETE":
                store.pop(name)

    monkeypatch.setattr(volume_mod, "client_for", lambda conn: Client())
    props = {"name": "s-cp-1-state", "pool": "cplb", "ownerStack": "s", "ownerId": "group/cp", "connection": {}}
    provider = volume_mod.StorageVolumeProvider()
    provider.create(props)
    assert store["s-cp-1-state"]["config"] == {"user.cplb.stack": "s", "user.cplb.owner": "group/cp"}
    provider.create(props)  # left by an interrupted `up`: adopted, not made twice
    assert [m for m, _ in calls].count("POST") == 1
    store["s-cp-2-state"] = {"config": {}}  # someone else's
    theirs = {**props, "name": "s-cp-2-state"}
    with pytest.raises(IncusError, match="not this stack's"):
        provider.create(theirs)
    with pytest.raises(IncusError, match="not this stack's"):
        provider.delete("x", theirs)
    assert "s-cp-2-state" in store
    provider.delete("x", props)
    assert "s-cp-1-state" not in store
    assert provider.diff("x", props, dict(props)).changes is False


@pytest.mark.parametrize("serving", [True, False])
def test_a_file_whose_reload_restarts_a_service_restarts_a_serving_member_only_between_healthy_peers(monkeypatch,
                                                                                                     serving):
    """etcd's flags changed on a running cluster: each member restarts while the others serve, and the next waits
    until it is back. A cluster being made (nothing serves yet) just gets its files."""
    from providers import instance_file

    events = []

    class Client:
        def exec(self, name, cmd, timeout=120):
            events.append(" ".join(cmd[:1]) if cmd[0] != "sh" else "restart")
            return 0, "", ""

        def push_file(self, name, path, data, mode=0o644):
            events.append("push")

    monkeypatch.setattr(instance_file, "client_for", lambda conn: Client())
    monkeypatch.setattr(instance_file.rollout, "member_health", lambda c, n, h: (serving, ""))
    monkeypatch.setattr(instance_file.rollout, "wait_healthy",
                        lambda c, names, h, s: events.append(f"wait {','.join(names)}"))
    props = {"instance": "s-cp-1", "path": "/etc/kubernetes/etcd.args", "content": "--name=s-cp-1\n",
             "connection": {}, "reloadCommand": ["sh", "-c", "restart etcd"],
             "rollout": {"peers": NAMES, "health": {"kind": "https"}}}
    instance_file.InstanceFileProvider().create(props)
    expected = ["wait s-cp-2,s-cp-3", "restart", "wait s-cp-1"] if serving else ["restart"]
    assert [e for e in events if e.startswith(("wait", "restart"))] == expected


def test_a_new_restart_command_alone_restarts_nothing(monkeypatch):
    """A release that restarts etcd another way changes the files' reloadCommand, not their content: the state takes
    the new command, and no member is pushed anything or restarted for it (a content change still is)."""
    from providers import instance_file
    from providers.instance_file import content_hash

    events = []

    class Client:
        def exec(self, name, cmd, timeout=120):
            events.append("exec")
            return 0, "", ""

        def push_file(self, name, path, data, mode=0o644):
            events.append("push")

    monkeypatch.setattr(instance_file, "client_for", lambda conn: Client())
    monkeypatch.setattr(instance_file.rollout, "member_health", lambda c, n, h: (False, ""))
    old = {"instance": "s-cp-1", "path": "/etc/kubernetes/etcd.args", "content": "--name=s-cp-1\n",
           "connection": {}, "reloadCommand": ["sh", "-c", "restart etcd"], "mode": "0644", "instanceUuid": "u1"}
    olds = {**{k: v for k, v in old.items() if k != "content"}, "contentHash": content_hash(old["content"])}
    news = {**old, "reloadCommand": ["sh", "-c", "drain, then restart etcd"]}
    provider = instance_file.InstanceFileProvider()
    assert provider.diff("x", olds, news).changes
    outs = provider.update("x", olds, news).outs
    assert events == [] and outs["reloadCommand"] == news["reloadCommand"] and outs["contentHash"] == olds["contentHash"]
    provider.update("x", olds, {**news, "content": "--name=s-cp-1\n--log-level=info\n"})
    assert "push" in events and "exec" in events


def test_a_record_set_diffs_against_what_the_server_answers_and_the_state_when_it_cannot_answer(monkeypatch):
    """A rollout stopped while a node was withdrawn left the name without it: the next `up` sees that without a
    refresh. A server that cannot be asked (a preview offline) is compared through the state, as before."""
    from providers import dns_records

    olds = {**WITHDRAW, "addresses": ["198.18.10.150", "198.18.10.151"], "published": ["198.18.10.150", "198.18.10.151"]}
    news = {**olds, "published": None}
    monkeypatch.setattr(dns_records, "published", lambda props: ["198.18.10.151"])
    assert dns_records.DnsRecordSetProvider().diff("api", olds, news).changes

    def unreachable(props):
        raise dns_records.DnsError("cannot query")

    monkeypatch.setattr(dns_records, "published", unreachable)
    assert not dns_records.DnsRecordSetProvider().diff("api", olds, news).changes
