"""Beyond this machine's one incusd: three nested Incus 7 servers (scripts/incus7-up --cluster) joined into a cluster,
reached only over HTTPS at their bridge addresses, with the client key as a Pulumi secret.

- `oci`: haproxy as an OCI application container (the `instance_oci` extension, which Incus 6.0 lacks), pulled from
  the project's local registry, in front of a real control plane: kubectl through it, a backend change under load,
  a drained connection that outlives the reload.
- The cluster: an `lxc` pair lands on two members; the member that holds the VIP is stopped hard (the nested server
  itself) and the VIP moves to the other member's replica while kubectl keeps working; after the member returns,
  one holder.
- The remote path: the whole lifecycle over the bridge, the key never in state, logs or outputs, and an untrusted
  certificate refused at preview.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import subprocess
import threading
import time

import pytest

from components.oci import OciLoadBalancer
from tests import incus7
from tests.helpers import (ROOT, base_config, demo_group, http_get, probe_until_back, pulumi_stack, up_in_thread,
                           wait_for)
from tests.k8s import ApiLoad, Kubectl, kubeconfig_ca, readyz_check, real_control_plane

pytestmark = pytest.mark.integration
CLUSTER = "n7k8s"
OCI_CONFIG = OciLoadBalancer.CONFIG_PATH  # where the strategy pushes haproxy.cfg


def quiet(_):
    pass


@pytest.fixture(scope="module")
def nested():
    return incus7.up(cluster=True)


def stack_values(env: dict, **extra) -> dict:
    return {**base_config(**extra), "incus": incus7.incus_config(env)}


def conditions(result, lb: str) -> dict:
    return {c["type"]: c["status"] for c in result.outputs["loadBalancers"].value[lb]["status"]["conditions"]}


def locations(env: dict, names) -> dict:
    """The member each instance runs on."""
    found = {n: incus7.client(env).get_instance(n) for n in names}
    assert all(found.values()), (names, sorted(i["name"] for i in incus7.client(env).list_instances()))
    return {n: inst["location"] for n, inst in found.items()}


@pytest.fixture(scope="module")
def control_plane(nested):
    """A real control plane (3 × etcd + kube-apiserver) spread over the three members, with an `oci` balancer."""
    values = stack_values(nested, controlPlanes=[real_control_plane("n7-cp", CLUSTER)], loadBalancers=[{
        "name": "n7-api", "cluster": CLUSTER, "type": "oci", "ports": [{"name": "api", "port": 6443}],
        "healthCheck": readyz_check(), "drain": {"timeoutSeconds": 30},
        "oci": {"registry": nested["registry"], "image": nested["ociImage"]},
    }])
    with pulumi_stack(values, prefix="n7", leftovers=lambda name: incus7.delete_leftovers(nested, name)) as \
            (project, name, stack):
        incus7.set_client_key(stack, nested)
        result = stack.up(on_output=quiet)
        yield project, name, stack, result, values


def kubectl_of(result) -> Kubectl:
    return Kubectl(result.outputs["clusters"].value[CLUSTER]["kubeconfig"])


def test_the_control_plane_is_spread_over_the_members(nested, control_plane):
    _project, name, _stack, result, _values = control_plane
    cp = [f"{name}-n7-cp-{n}" for n in (1, 2, 3)]
    assert sorted(locations(nested, cp).values()) == sorted(s["name"] for s in nested["servers"])
    # The routing output says where each destination runs.
    routing = result.outputs["routing"].value["n7-api"]["destinations"]
    assert {d["name"]: d["location"] for d in routing} == locations(nested, cp)
    # And so does `make status` (scripts/status), one row per backend with its member.
    status = make_status(control_plane[0], name)
    rows = {line.split()[0]: line.split() for line in status.splitlines() if line.strip().startswith(name)}
    for instance, member in locations(nested, cp).items():
        assert member in rows[instance], (instance, status)


def make_status(project, name: str) -> str:
    """`make status` (scripts/status) of the stack: what it prints."""
    status = subprocess.run([os.path.join(ROOT, "scripts", "status"), name], capture_output=True, text=True,
                            env={**os.environ, **project.env, "CPLB_PROJECT_DIR": project.dir}, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr
    return status.stdout


def test_oci_balancer_serves_the_control_plane_with_tls_verified(nested, control_plane):
    _project, name, _stack, result, _values = control_plane
    inst = incus7.client(nested).get_instance(f"{name}-n7-api-haproxy-1")
    assert inst["type"] == "container" and inst["config"].get("image.type") == "oci", inst["config"]
    kube = kubectl_of(result)
    try:
        kube.becomes_ready(60)
        assert kube.configmap_roundtrip("cplb-oci", "through-oci") == {"value": "through-oci"}
        conds = conditions(result, "n7-api")
        assert conds["Ready"] == "True" and conds["BackendsHealthy"] == "True", conds
    finally:
        kube.cleanup()


class HeldConnection:
    """One kept-alive TLS connection through the endpoint (CA-verified), `GET /version` on it again and again."""

    def __init__(self, endpoint: str, ca_pem: str):
        import http.client

        host, port = endpoint.rsplit(":", 1)
        self.conn = http.client.HTTPSConnection(host, int(port), timeout=10,
                                                context=ssl.create_default_context(cadata=ca_pem))

    def get(self) -> int:
        self.conn.request("GET", "/version")
        response = self.conn.getresponse()
        response.read()
        return response.status

    def close(self):
        self.conn.close()


def haproxy_sessions(env: dict, instance: str) -> dict[str, tuple[str, int]]:
    """Each API server's state and current sessions, from haproxy's runtime API in the OCI container."""
    rc, out, _ = incus7.client(env).exec(instance, ["sh", "-c", "echo 'show stat' | nc 127.0.0.1 9999"])
    rows = [line.split(",") for line in out.splitlines() if line.startswith("be_api,")]
    return {r[1]: (r[17], int(r[4] or 0)) for r in rows if r[1] not in ("BACKEND", "FRONTEND")}


def test_oci_backend_change_under_load_reloads_in_place_with_no_failed_request(nested, control_plane):
    """A control-plane instance leaves (user.cplb.disabled=true) and comes back while requests flow, on new and on
    kept-alive connections: haproxy.cfg is pushed, checked and loaded by SIGUSR2 to PID 1 (the same PID 1: the
    container is not restarted), and no request fails."""
    _project, name, stack, result, _values = control_plane
    endpoint = result.outputs["loadBalancers"].value["n7-api"]["endpoint"]
    host, port = endpoint.rsplit(":", 1)
    kubeconfig = result.outputs["clusters"].value[CLUSTER]["kubeconfig"]
    client = incus7.client(nested)
    haproxy = f"{name}-n7-api-haproxy-1"
    started = client.exec(haproxy, ["cat", "/proc/1/stat"])[1].split()[21]  # PID 1's start time
    victim = f"{name}-n7-cp-3"
    try:
        with ApiLoad(kubeconfig, host, int(port)) as load:
            time.sleep(2)
            incus7.set_label(nested, victim, "user.cplb.disabled", "true")
            stack.up(on_output=quiet)
            assert victim not in client.pull_file(haproxy, OCI_CONFIG)[0].decode()
            incus7.set_label(nested, victim, "user.cplb.disabled", None)
            stack.up(on_output=quiet)
            assert victim in client.pull_file(haproxy, OCI_CONFIG)[0].decode()
            time.sleep(2)
    finally:
        incus7.set_label(nested, victim, "user.cplb.disabled", None)
    print(f"\noci reloads under load: {load.counts}")
    assert load.counts["failed"] == 0 and load.counts["ok"] > 100, (load.counts, load.errors)
    assert client.exec(haproxy, ["cat", "/proc/1/stat"])[1].split()[21] == started, "the container restarted"


def test_oci_drained_backend_keeps_its_open_connection_until_it_ends(nested, control_plane):
    """The drain waits on haproxy's runtime API, as in `lxc`: the server whose label drains it goes to DRAIN, new
    connections avoid it, the connection it holds keeps being served, and `up` returns once that connection ends."""
    _project, name, stack, result, _values = control_plane
    endpoint = result.outputs["loadBalancers"].value["n7-api"]["endpoint"]
    ca = kubeconfig_ca(result.outputs["clusters"].value[CLUSTER]["kubeconfig"])
    haproxy = f"{name}-n7-api-haproxy-1"
    held = HeldConnection(endpoint, ca)
    assert held.get() == 200
    member = wait_for(lambda: next((s for s, (_, cur) in haproxy_sessions(nested, haproxy).items() if cur), None), 10)
    assert member, haproxy_sessions(nested, haproxy)
    try:
        incus7.set_label(nested, member, "user.cplb.disabled", "true")
        thread, box = up_in_thread(stack)
        assert wait_for(lambda: haproxy_sessions(nested, haproxy)[member][0] == "DRAIN", 60, 0.2), \
            haproxy_sessions(nested, haproxy)
        for _ in range(5):
            assert held.get() == 200
            time.sleep(0.5)
        assert thread.is_alive(), "up returned while the drained server still had a connection"
        closed = time.monotonic()
        held.close()
        thread.join(120)
        assert "error" not in box, box.get("error")
        print(f"\noci drain: up returned {time.monotonic() - closed:.1f} s after the held connection closed")
    finally:
        held.close()
        incus7.set_label(nested, member, "user.cplb.disabled", None)
        stack.up(on_output=quiet)


def test_cluster_lxc_pair_spreads_and_the_vip_follows_a_lost_member(nested, control_plane):
    project, name, stack, _result, values = control_plane
    vip = f"198.18.30.{random.randrange(50, 90)}"
    api = values["loadBalancers"][0]
    api.pop("oci")
    api.update(type="lxc", lxc={"replicas": 2, "vip": vip, "virtualRouterID": random.randrange(100, 250),
                                "advertIntervalSeconds": 0.1})
    project.write_stack_config(name, values)
    incus7.set_client_key(stack, nested)  # the stack file was rewritten: the key goes back in, as a secret
    up = stack.up(on_output=quiet)
    replicas = [f"{name}-n7-api-haproxy-{n}" for n in (1, 2)]
    where = locations(nested, replicas)
    assert len(set(where.values())) == 2, f"both replicas on one member: {where}"
    kube = kubectl_of(up)
    try:
        kube.becomes_ready(60)
        holders = wait_for(lambda: incus7.vip_holders(nested, replicas, vip), 30)
        assert len(holders) == 1, holders
        lost = where[holders[0]]
        leader = incus7.database_leader(nested)
        # What a client on the bridge sees: a TCP connection to the VIP every 20 ms (100 ms timeout), from before
        # the stop until the new holder's haproxy has accepted one.
        probes: list[tuple[float, bool]] = []
        prober = threading.Thread(target=probe_until_back, args=(vip, 6443, probes), daemon=True)
        # The member's whole server goes away (incus stop --force of the nested server on this host).
        t0 = time.monotonic()
        prober.start()
        subprocess.run(["incus", "stop", "--force", lost], check=True)
        stopped = time.monotonic() - t0
        prober.join(40)
        assert probes and probes[-1][1], f"the VIP does not answer after the member holding it was lost: {probes[-3:]}"
        failed = [t for t, ok in probes if not ok]
        outage = probes[-1][0] - failed[0] if failed else 0.0
        other = next(r for r in replicas if r != holders[0])
        survivor = next(i for i, s in enumerate(nested["servers"]) if s["name"] != lost)
        # Asked while the members elect a new database leader, the API may answer 503 ("no available cowsql leader"):
        # not yet, as a request that waits would be.
        assert wait_for(lambda: incus7.unless_electing(
            lambda: incus7.vip_holders(nested, [other], vip, server=survivor) == [other]), 30)
        moved = time.monotonic() - t0
        kube.becomes_ready(30)
        assert kube.configmap_roundtrip("cplb-member-lost", lost) == {"value": lost}
        print(f"\ncross-member failover: {lost} stopped in {stopped:.2f} s (database leader: {leader or '?'}); "
              f"a client on the bridge: no connection to the VIP for {outage:.2f} s ({len(failed)} failed probes), "
              f"answered again {probes[-1][0] - t0:.2f} s after the stop began; {other} holds it "
              f"{moved:.2f} s after, as the cluster's API shows it")
        subprocess.run(["incus", "start", lost], check=True)
        incus7.wait_member_online(nested, lost)
        assert wait_for(lambda: incus7.statuses(nested, replicas, server=survivor) == ["Running", "Running"], 120)
        time.sleep(2)
        holders = incus7.vip_holders(nested, replicas, vip, server=survivor)
        assert len(holders) == 1, holders
        # `make status` reads the holder from the stack's own Incus (the cluster over HTTPS), not this machine's.
        assert f"VIP        {vip} held by {holders[0]}" in make_status(project, name)
        kube.becomes_ready(30)
    finally:
        kube.cleanup()


def test_dns_proxy_nodes_are_spread_over_the_members(nested, control_plane):
    """The dns strategy's proxy nodes go to the members in turn, like every balancer's replicas (they were left to
    the scheduler before), and each one's record is published."""
    import copy

    from pulumi.automation import ConfigValue

    from tests.helpers import local_dns_server

    project, name, stack, _result, values = control_plane
    before = copy.deepcopy(values["loadBalancers"])
    with local_dns_server() as server:
        values["loadBalancers"] = [{
            "name": "n7-api", "cluster": CLUSTER, "type": "dns", "healthCheck": readyz_check(), "dns": {
                "nodes": {"count": 3}, "zone": "cplb.test.", "hostname": "n7", "ttl": 5, "server": server["server"],
                "tsig": {"name": "cplb-update", "secret": "cGxhY2Vob2xkZXI="},
                "roles": [{"name": "api", "port": 6443, "targetPort": 6443}]}}]
        project.write_stack_config(name, values)
        incus7.set_client_key(stack, nested)
        stack.set_config("cplb:loadBalancers[0].dns.tsig.secret", ConfigValue(server["secret"], secret=True),
                         path=True)
        try:
            up = stack.up(on_output=quiet)
            nodes = [f"{name}-n7-api-proxy-{n}" for n in (1, 2, 3)]
            where = locations(nested, nodes)
            assert sorted(where.values()) == sorted(s["name"] for s in nested["servers"]), where
            assert len(up.outputs["loadBalancers"].value["n7-api"]["published"]) == 3
        finally:
            # Back to the balancer the module had, while the DNS server still runs to take the records away.
            values["loadBalancers"] = before
            project.write_stack_config(name, values)
            incus7.set_client_key(stack, nested)
            stack.up(on_output=quiet)


# --- the remote path over the bridge -------------------------------------------------------------------------------

def test_remote_lifecycle_over_the_bridge_with_the_key_as_a_secret(nested):
    cluster = f"r7{random.randrange(16**4):04x}"
    values = stack_values(nested, instanceGroups=[demo_group(2, name="cp", cluster=cluster)], loadBalancers=[{
        "name": "api", "cluster": cluster, "type": "lxc",
        "healthCheck": {"mode": "tcp", "intervalSeconds": 1, "rise": 1, "fall": 2}}])
    key_lines = nested["clientKey"].strip().splitlines()[1:-1]
    with pulumi_stack(values, prefix="r7", leftovers=lambda n: incus7.delete_leftovers(nested, n)) as \
            (project, name, stack):
        incus7.set_client_key(stack, nested)
        logs: list[str] = []
        preview = stack.preview(on_output=logs.append, diff=True)
        up = stack.up(on_output=logs.append)
        names = up.outputs["instanceGroups"].value["cp"]["instances"]
        host, port = up.outputs["loadBalancers"].value["api"]["endpoint"].rsplit(":", 1)
        assert wait_for(lambda: {http_get(host, int(port)) for _ in range(8)} >= set(names), 30)
        assert set(incus7.instances(nested, name)) == {*names, f"{name}-api-haproxy-1"}
        refresh = stack.refresh(on_output=logs.append)
        state = project.state_text()
        assert state.count(nested["servers"][0]["url"]) >= 4, "the providers did not get the remote endpoint"
        for where, text in (("state", state), ("preview", preview.stdout), ("logs", "\n".join(logs)),
                            ("outputs", json.dumps({k: v.value for k, v in up.outputs.items()}, default=str)),
                            ("refresh", refresh.stdout)):
            for line in key_lines:
                assert line not in text, f"the client key leaked into the {where}"
    assert not incus7.instances(nested, name), "destroy over HTTPS left instances behind"


def test_an_untrusted_certificate_is_refused_at_preview(nested, tmp_path):
    from pulumi.automation import ConfigValue
    from pulumi.automation.errors import CommandError

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=stranger"],
                   check=True, capture_output=True)
    values = stack_values(nested, instanceGroups=[demo_group(1, name="cp", cluster="r7x")])
    values["incus"]["clientCert"] = cert.read_text()
    with pulumi_stack(values, prefix="r7", leftovers=lambda n: incus7.delete_leftovers(nested, n)) as \
            (_project, name, stack):
        stack.set_config("cplb:incus.clientKey", ConfigValue(key.read_text(), secret=True), path=True)
        with pytest.raises(CommandError) as exc:
            stack.preview(on_output=quiet)
        text = str(exc.value)
        assert "Traceback" not in text and nested["servers"][0]["url"] in text and "trust" in text, text[-2000:]
        for line in key.read_text().strip().splitlines()[1:-1]:
            assert line not in text
        assert not incus7.instances(nested, name)


def test_the_registry_is_read_only_and_only_on_its_bridge(nested):
    """What the nested servers pull from takes no push and no delete, and listens on the bridge's address alone;
    the writer that set-up pushed through (loopback) is gone (scripts/incus7-up)."""
    import urllib.error
    import urllib.request

    registry = nested["registry"].split("://", 1)[-1]
    repo, tag = nested["ociImage"].rsplit(":", 1)

    def ask(method: str, path: str, headers=None) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://{registry}/v2/{path}", method=method, headers=headers or {},
                                         data=b"" if method in ("POST", "PUT") else None)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, dict(r.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers)

    status, headers = ask("HEAD", f"{repo}/manifests/{tag}",
                          {"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                     "application/vnd.docker.distribution.manifest.v2+json"})
    assert status == 200, status
    digest = headers.get("Docker-Content-Digest")
    assert digest and digest.startswith("sha256:")
    assert ask("POST", f"{repo}/blobs/uploads/")[0] not in (201, 202)
    assert ask("POST", "someone/else/blobs/uploads/")[0] not in (201, 202)
    assert ask("DELETE", f"{repo}/manifests/{digest}")[0] not in (200, 202)
    assert ask("HEAD", f"{repo}/manifests/{tag}", {"Accept": "application/vnd.oci.image.manifest.v1+json"})[0] == 200
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout.splitlines()
    registry_sockets = sorted(line.split()[3] for line in listening if "docker-registry" in line)
    # One socket, on the bridge: the writer on loopback ran for the push alone.
    assert registry_sockets == [registry], registry_sockets


def test_destroy_then_incus7_down_leaves_nothing(nested, control_plane):
    """Last in this module: the stack's destroy leaves no instance on the cluster, then scripts/incus7-down leaves
    no nested server, no registry, no bridge and no state behind."""
    _project, name, stack, _result, _values = control_plane
    stack.destroy(on_output=quiet)
    assert incus7.instances(nested, name) == {}
    down = subprocess.run([os.path.join(ROOT, "scripts", "incus7-down")], capture_output=True, text=True)
    assert down.returncode == 0, down.stdout + down.stderr
    left = subprocess.run(["incus", "list", "-c", "n", "-f", "csv", "user.cplb.incus7=true"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert left == []
    assert subprocess.run(["incus", "network", "show", "cplb7br0"], capture_output=True).returncode != 0
    assert subprocess.run(["pgrep", "-f", "docker-registry serve"], capture_output=True).returncode != 0
    assert not os.path.exists(os.path.join(ROOT, ".state", "incus7"))
