"""Dynamic providers: they pickle (the engine ships them to the provider process), and their diffs are precise."""

import os

import dill
import pulumi
import pytest

from providers.instance import Instance, InstanceProvider


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return f"{args.name}-id", args.inputs

    def call(self, args):
        return {}


def test_every_dynamic_resource_pickles_under_mocks():
    from providers.instance_file import InstanceFile, InstanceFileProvider
    from providers.network_lb import NetworkLoadBalancer, NetworkLoadBalancerProvider
    from providers.status import BalancerStatus, BalancerStatusProvider
    from providers.volume import StorageVolume, StorageVolumeProvider

    pulumi.runtime.set_mocks(Mocks(), preview=False)
    conn = {"socket": "/nonexistent"}
    # Constructing a resource serializes its provider with dill, as a real `up` does.
    Instance("x", name="s-x-1", image="cplb/demo-apiserver", connection=conn, owner_stack="s", owner_id="group/x")
    InstanceFile("f", instance="s-x-1", instance_uuid="u", path="/etc/x", content="x", connection=conn)
    NetworkLoadBalancer("n", network="ovn0", listen_address="198.18.20.200", backends=[], ports=[], config={},
                        connection=conn, owner_stack="s", owner_id="lb/x")
    BalancerStatus("s", probe={"strategy": "lxc"}, trigger=["h"], connection=conn, credentials={})
    StorageVolume("v", name="s-x-1-state", pool="cplb", connection=conn, owner_stack="s", owner_id="group/x")
    for provider in (InstanceProvider(), InstanceFileProvider(), NetworkLoadBalancerProvider(),
                     BalancerStatusProvider(), StorageVolumeProvider()):
        blob = dill.dumps(provider, recurse=True)
        assert type(dill.loads(blob)) is type(provider)


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


def test_oci_create_request():
    from providers.instance import create_request

    body = create_request({
        "name": "s-api-haproxy-1", "image": "oci:library/haproxy:lts",
        "oci": {"registry": "https://docker.io", "image": "library/haproxy:lts"},
        "profiles": [], "config": {"limits.memory": "128MiB"}, "devices": {"eth0": {"type": "nic"}},
        "ownerStack": "s", "ownerId": "lb/api",
    })
    assert body["source"] == {"type": "image", "mode": "pull", "protocol": "oci", "server": "https://docker.io",
                              "alias": "library/haproxy:lts"}
    assert body["type"] == "container" and body["start"] is False
    assert body["config"]["user.cplb.stack"] == "s" and body["config"]["user.cplb.owner"] == "lb/api"
    assert body["config"]["limits.memory"] == "128MiB"


def test_local_image_create_request():
    from providers.instance import create_request

    body = create_request({"name": "s-g-1", "image": "cplb/haproxy", "ownerStack": "s", "ownerId": "group/g"})
    assert body["source"] == {"type": "image", "alias": "cplb/haproxy"}


def test_missing_extensions_are_named():
    import facts
    from spec import IncusSpec

    f = facts.Facts(IncusSpec())
    f._extensions = {"network_load_balancer"}

    class FakeClient:
        def server(self):
            return {"environment": {"server_version": "6.0.4"}}

    f._client = FakeClient()
    with pytest.raises(ValueError) as exc:
        f.require_extensions("cplb:loadBalancers[0].type (ovn)", "network_load_balancer",
                             "network_load_balancer_health_check")
    assert "network_load_balancer_health_check" in str(exc.value)
    assert "cplb:loadBalancers[0].type" in str(exc.value)


def test_network_lb_request_and_diff():
    from providers.network_lb import NetworkLoadBalancerProvider, request_body

    props = {"network": "ovn0", "listenAddress": "198.18.20.200", "ownerStack": "s", "ownerId": "lb/api",
             "config": {"healthcheck": "true"},
             "backends": [{"name": "a", "address": "198.18.21.2", "port": 6443.0}],
             "ports": [{"protocol": "TCP", "listenPort": 6443.0, "targetBackends": ["a"]}]}
    body = request_body(props)
    assert body["backends"][0]["target_port"] == "6443" and body["ports"][0]["listen_port"] == "6443"
    assert body["ports"][0]["protocol"] == "tcp" and body["config"]["user.cplb.stack"] == "s"
    p = NetworkLoadBalancerProvider()
    same = {**props, "backends": [{"name": "a", "address": "198.18.21.2", "port": 6443}]}
    assert p.diff("x", props, same).changes is False
    more = {**props, "backends": props["backends"] + [{"name": "b", "address": "198.18.21.3", "port": 6443}]}
    d = p.diff("x", props, more)
    assert d.changes and not d.replaces
    assert p.diff("x", props, {**props, "listenAddress": "198.18.20.201"}).replaces == ["listenAddress"]


def test_ipv6_settle_waits_while_a_global_address_is_tentative(monkeypatch):
    # /proc/net/if_inet6 as an instance shows it: the global address first tentative (flags 0x40), then not.
    from providers.incus_client import IncusClient

    tentative = ("fe8000000000000012666afffe97b920 e51 40 20 80     eth0\n"
                 "fd0001980018001012666afffe97b920 e51 40 00 40     eth0\n")
    settled = tentative.replace(" 00 40 ", " 00 00 ")
    answers = [tentative, tentative, settled]
    client = object.__new__(IncusClient)
    monkeypatch.setattr(client, "exec", lambda name, cmd, timeout: (0, answers.pop(0), ""), raising=False)
    monkeypatch.setattr("time.sleep", lambda s: None)
    assert client.wait_ipv6_settled("x", timeout=10) is True
    assert answers == []  # it asked until the address was no longer tentative

    # An instance that cannot run `cat` is not waited for.
    monkeypatch.setattr(client, "exec", lambda name, cmd, timeout: (127, "", "not found"), raising=False)
    assert client.wait_ipv6_settled("x", timeout=10) is False


def test_an_operators_labels_survive_update_and_refresh():
    """user.* keys the stack never declared (user.cplb.disabled=true, set by hand to drain) are kept by `up` and
    invisible to refresh; a key the stack declared before and dropped is removed."""
    from providers.instance import InstanceProvider

    live = {"config": {"user.cluster-role": "control-plane", "user.old": "x", "user.cplb.disabled": "true",
                       "volatile.uuid": "u", "limits.memory": "64MiB"}}

    class FakeClient:
        def etag_get(self, path, what=""):
            return live, "etag"

        def call(self, method, path, json=None, headers=None, what=""):
            self.sent = json

    olds = {"name": "s-g-1", "config": {"user.cluster-role": "control-plane", "user.old": "x",
                                        "limits.memory": "64MiB"}, "ownerStack": "s", "ownerId": "group/g"}
    news = {**olds, "config": {"user.cluster-role": "control-plane", "limits.memory": "64MiB"}}
    client = FakeClient()
    InstanceProvider()._converge(client, "s-g-1", news, olds)
    assert client.sent["config"]["user.cplb.disabled"] == "true" and "user.old" not in client.sent["config"]
    assert client.sent["config"]["volatile.uuid"] == "u"


def test_status_diff_is_the_probe_and_the_trigger_only():
    """A preview of an unchanged balancer has nothing to show: the conditions of the last read are not compared."""
    from providers.status import BalancerStatusProvider

    old = {"probe": {"strategy": "lxc", "instances": ["a"], "port": 6443.0}, "trigger": ["h1"],
           "connection": {"socket": "/a"}, "conditions": [{"type": "Ready", "status": "True"}], "observed": {}}
    p = BalancerStatusProvider()
    assert not p.diff("id", old, {**old, "conditions": None, "probe": {**old["probe"], "port": 6443}}).changes
    assert p.diff("id", old, {**old, "trigger": ["h2"]}).changes
    assert p.diff("id", old, {**old, "probe": {**old["probe"], "instances": ["a", "b"]}}).changes
    assert p.diff("id", old, {**old, "trigger": ["h1"]}).replaces == []


def test_status_reads_with_the_strategys_reader_at_create_update_and_refresh(monkeypatch):
    import components.lxc as lxc
    from providers.status import BalancerStatusProvider

    reads = []

    def reader(probe, client):
        reads.append(probe["instances"])
        return {"conditions": [{"type": "Ready", "status": "True" if len(reads) < 3 else "False"}],
                "observed": {"n": len(reads)}}

    monkeypatch.setattr(lxc, "read_status", reader)
    props = {"probe": {"strategy": "lxc", "balancer": "api", "instances": ["s-api-haproxy-1"]}, "trigger": [],
             "connection": {"socket": "/nonexistent"}, "credentials": {}}
    p = BalancerStatusProvider()
    created = p.create(props)
    assert created.outs["conditions"][0]["status"] == "True" and created.outs["probe"] == props["probe"]
    assert p.update("id", created.outs, props).outs["observed"] == {"n": 2}
    refreshed = p.read("id", {**created.outs, "conditions": "stale"})
    # A refresh brings the live conditions in and keeps the inputs (no `inputs=`: they stay as they were).
    assert refreshed.outs["conditions"][0]["status"] == "False" and refreshed.inputs is None
    assert refreshed.outs["probe"] == props["probe"] and refreshed.id == "id"


def test_status_refuses_a_probe_naming_no_reader():
    from providers.status import read

    with pytest.raises(ValueError, match="no status reader"):
        read({"probe": {"strategy": "os"}, "connection": {}})


def test_facts_ask_the_server_each_question_once_per_run():
    """Twenty balancers on one bridge and image: one network read and one alias read, not forty of each."""
    import facts
    from providers.incus_client import IncusError
    from spec import IncusSpec

    calls = []

    class FakeClient:
        def call(self, method, path, what=""):
            calls.append(path)
            if path == "images/aliases/cplb/missing":
                raise IncusError("not found", status=404)
            if path.startswith("images/"):
                return {"target": "f" * 64}
            return {"config": {"ipv4.address": "198.18.10.1/24", "ipv4.dhcp.ranges": "198.18.10.100-198.18.10.199"}}

    f = facts.Facts(IncusSpec())
    f._client = FakeClient()
    for i in range(20):
        assert f.check_vip(f"cplb:loadBalancers[{i}].lxc.vip", f"198.18.10.{20 + i}", "cplbbr0") == 24
        assert f.image_fingerprint(f"cplb:loadBalancers[{i}].lxc.instanceSpec.image", "cplb/haproxy") == "f" * 64
    assert calls == ["networks/cplbbr0", "images/aliases/cplb/haproxy"]
    # A missing image is refused every time it is asked for, naming the key that asked.
    for key in ("a.image", "b.image"):
        with pytest.raises(ValueError, match=key):
            f.image_fingerprint(key, "cplb/missing")


def test_status_reads_again_when_up_leaves_an_instance_otherwise_than_the_last_read_saw_it():
    """A refresh saw a backend instance stopped; `up` starts it again: the conditions are read again."""
    from providers.status import BalancerStatusProvider

    trigger = {"config": ["h"], "instances": {"s-cp-3": "Running"}}
    old = {"probe": {"strategy": "lxc"}, "trigger": trigger, "seen": {"s-cp-3": "Stopped"}}
    p = BalancerStatusProvider()
    assert p.diff("id", old, {"probe": {"strategy": "lxc"}, "trigger": trigger}).changes
    assert not p.diff("id", {**old, "seen": {"s-cp-3": "Running"}},
                      {"probe": {"strategy": "lxc"}, "trigger": trigger}).changes


def test_delete_leaves_an_instance_of_the_same_name_that_this_resource_did_not_create():
    """A replacement made under another URN has the old one's name and owner: the old resource's delete must not
    take it away (only the instance whose uuid the state holds is deleted)."""
    import providers.instance as pi

    deleted = []

    class FakeClient:
        def get_instance(self, name):
            return {"name": name, "config": {"user.cplb.stack": "s", "user.cplb.owner": "lb/api",
                                             "volatile.uuid": "new"}}

        def delete_instance(self, name):
            deleted.append(name)

    props = {"name": "s-api-haproxy-1", "ownerStack": "s", "ownerId": "lb/api", "uuid": "old",
             "connection": {"socket": "/nonexistent"}}
    original = pi.client_for
    pi.client_for = lambda conn: FakeClient()
    try:
        InstanceProvider().delete("s-api-haproxy-1", props)
        assert deleted == []
        InstanceProvider().delete("s-api-haproxy-1", {**props, "uuid": "new"})
        assert deleted == ["s-api-haproxy-1"]
    finally:
        pi.client_for = original


def test_the_file_api_is_retried_only_on_incus_transient_forkfile_failure(monkeypatch):
    from providers.incus_client import IncusClient, IncusError

    calls = []

    def request(self, method, path, **kw):
        calls.append(method)
        if len(calls) < 3:
            raise IncusError("read /x in i: Incus answered 500: read unix @->/proc/self/fd/85/forkfile.sock: read: "
                             "connection reset by peer", status=500)

        class Resp:
            content, headers = b"ok", {"X-Incus-mode": "0600"}
        return Resp()

    monkeypatch.setattr(IncusClient, "request", request)
    monkeypatch.setattr("time.sleep", lambda s: None)
    client = IncusClient.__new__(IncusClient)
    assert client.pull_file("i", "/x") == (b"ok", 0o600) and len(calls) == 3
    calls.clear()

    def refused(self, method, path, **kw):
        calls.append(method)
        raise IncusError("read /x in i: Incus answered 500: disk full", status=500)

    monkeypatch.setattr(IncusClient, "request", refused)
    with pytest.raises(IncusError, match="disk full"):
        client.pull_file("i", "/x")
    assert len(calls) == 1


def test_a_secret_for_tls_lives_in_memory_and_goes_with_its_file(tmp_path, monkeypatch):
    import ssl
    import tempfile

    from providers.memfile import MemFile
    from providers.pki import _pem_cert, _pem_key, make_ca  # a real certificate and key, read by ssl by path

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # anything written to "disk" would land here
    ca_cert, ca_key = make_ca("memfile-test")
    with MemFile(_pem_cert(ca_cert)) as cert, MemFile(_pem_key(ca_key)) as key:
        assert open(key.path).read() == _pem_key(ca_key)
        ssl.create_default_context().load_cert_chain(cert.path, key.path)
    assert not list(tmp_path.iterdir())
    try:
        open(key.path).read()
    except OSError:
        pass
    else:
        raise AssertionError("a closed in-memory file is still readable at its path")


def test_a_kubeconfig_whose_client_key_is_not_one_is_named_as_such():
    import base64

    import yaml

    from facts import kubernetes_access

    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
           "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
           "users": [{"name": "u", "user": {"client-certificate-data": base64.b64encode(b"not a cert").decode(),
                                            "client-key-data": "%%% not base64 SECRETVALUE"}}]}
    with pytest.raises(ValueError) as err:
        kubernetes_access("cplb:kubernetes.kubeconfig", yaml.safe_dump(doc))
    assert "cplb:kubernetes.kubeconfig: the kubeconfig's client-certificate-data and client-key-data are not" \
        in str(err.value)
    assert "SECRETVALUE" not in str(err.value)


def test_the_provider_plugin_loads_no_schema_templates_or_clients_until_it_needs_them():
    """Each `preview` and `up` starts the dynamic-provider plugin, which imports every provider module before its
    first call: pydantic (the schema), jinja2, pylxd or cryptography there is start-up time paid on every run."""
    import subprocess
    import sys

    code = ("import sys; import providers.instance, providers.instance_file, providers.status, providers.dns_records, "
            "providers.network_lb, providers.pki, providers.volume, providers.rollout; "
            "print(' '.join(m for m in ('spec', 'pydantic', 'components', 'jinja2', 'pylxd', 'requests', "
            "'cryptography') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))).stdout
    assert loaded.split() == [], f"provider modules import {loaded.strip()} at load"
