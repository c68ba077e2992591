"""A real Kubernetes control plane behind the balancers: three instances with stacked etcd and kube-apiserver
(built from Go modules), a PKI made by the program, kubectl through the endpoint with TLS verified against the
cluster CA.

One control plane serves the whole module (it takes a while to start); the balancer in front of it changes from
test to test, as a user would change `type`, and the serving certificate follows.
"""

from __future__ import annotations

import json
import os
import random
import time

import pytest

from tests.helpers import http_get, incus, instances_with_prefix, partition, pulumi_stack, wait_for
from tests.k8s import Kubectl

pytestmark = pytest.mark.integration
CLUSTER = "itk8s"


def quiet(_):
    pass


def conditions(result, lb: str = "x-api") -> dict:
    return {c["type"]: c for c in result.outputs["loadBalancers"].value[lb]["status"]["conditions"]}


def dev_stack_values() -> dict:
    """stacks/Pulumi.dev.yaml as shipped, with the cluster renamed so a running dev stack cannot select the
    test's instances."""
    import yaml

    from tests.helpers import ROOT

    with open(os.path.join(ROOT, "stacks", "Pulumi.dev.yaml")) as f:
        config = yaml.safe_load(f)["config"]
    text = json.dumps({k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("cplb:")})
    return json.loads(text.replace('"demo"', f'"{CLUSTER}"').replace('"demo-', '"x-'))


@pytest.fixture(scope="module")
def k8s():
    if not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", ".tools", "bin", "kube-apiserver")):
        pytest.fail("kube-apiserver is missing: scripts/setup builds it")
    with pulumi_stack(dev_stack_values(), prefix="k8s") as (project, name, stack):
        result = stack.up(on_output=quiet)
        yield project, name, stack, result


def kubectl_of(result) -> Kubectl:
    return Kubectl(result.outputs["clusters"].value[CLUSTER]["kubeconfig"])


def kube_key_data(result) -> str:
    import yaml

    doc = yaml.safe_load(result.outputs["clusters"].value[CLUSTER]["kubeconfig"])
    return doc["users"][0]["user"]["client-key-data"]


def secret_paths(node, path="") -> list[str]:
    """Key paths of the values a deployment holds as Pulumi secrets (ciphertext, never plain text)."""
    if isinstance(node, dict):
        if node.get("4dabf18193072939515e22adb298388d") == "1b47061264138c4ac30d75fd1eb44270":
            return [path]
        return [p for k, v in node.items() for p in secret_paths(v, f"{path}.{k}" if path else k)]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in secret_paths(v, f"{path}[{i}]")]
    return []


def test_dev_stack_ingress_ports_answer_from_the_workers(k8s):
    """The dev stack's second balancer: ports 80 and 443 to the stand-in workers, beside the real control plane."""
    _project, _name, _stack, result = k8s
    workers = result.outputs["instanceGroups"].value["x-worker"]["instances"]
    host = result.outputs["loadBalancers"].value["x-ingress"]["endpoint"].rsplit(":", 1)[0]
    for port in (80, 443):
        assert wait_for(lambda: {http_get(host, port, timeout=5) for _ in range(6)} == set(workers), 30), port
    routing = result.outputs["routing"].value["x-ingress"]["destinations"]
    assert {(d["name"], d["port"]) for d in routing} == {(w, p) for w in workers for p in (80, 443)}


def test_kubectl_through_the_lxc_endpoint_with_tls_verified(k8s):
    project, name, stack, result = k8s
    kube = kubectl_of(result)
    try:
        endpoint = result.outputs["loadBalancers"].value["x-api"]["endpoint"]
        assert kube.server == f"https://{endpoint}"
        assert kube.readyz() == "ok"
        assert kube.configmap_roundtrip("cplb-lxc", "through-lxc") == {"value": "through-lxc"}
        # The serving certificate is checked: another CA refuses it.
        conds = conditions(result)
        assert conds["Ready"]["status"] == "True" and conds["BackendsHealthy"]["status"] == "True", conds
        assert "3 of 3" in conds["BackendsHealthy"]["message"]
        # No private key in the state in plain text; the kubeconfig output is held as a secret.
        state = project.state_text()
        key_b64 = kube_key_data(result)
        assert "PRIVATE KEY" not in state and key_b64 not in state
        # Nor in what `up` printed, nor in a preview with diffs.
        preview = stack.preview(diff=True, on_output=quiet).stdout
        for text in (result.stdout, preview):
            assert "PRIVATE KEY" not in text and key_b64 not in text
        stack_res = next(r for r in stack.export_stack().deployment["resources"] if r["type"] == "pulumi:pulumi:Stack")
        assert f"clusters.{CLUSTER}.kubeconfig" in secret_paths(stack_res["outputs"]), secret_paths(stack_res["outputs"])
    finally:
        kube.cleanup()


def test_one_control_plane_instance_powered_off(k8s):
    """The k0s demo: a control-plane instance is stopped hard; kubectl through the endpoint keeps working (etcd
    keeps quorum, haproxy's /readyz check takes the dead server out), and haproxy's runtime API, which
    BackendsHealthy reads, counts 2 of 3. The next `up` starts the instance again (the stack converges) and
    BackendsHealthy is back to 3 of 3."""
    import health
    from facts import Facts
    from spec import IncusSpec

    project, name, stack, result = k8s
    kube = kubectl_of(result)
    victim = f"{name}-x-cp-3"
    balancer = f"{name}-x-api-haproxy-1"
    try:
        incus().call("PUT", f"instances/{victim}/state", json={"action": "stop", "force": True})
        wait_for(lambda: incus().get_instance(victim)["status"] == "Stopped", timeout=30)
        for _ in range(10):
            assert kube.readyz() == "ok"
        assert kube.configmap_roundtrip("cplb-k0s-demo", "quorum") == {"value": "quorum"}
        client = Facts(IncusSpec(socket="/var/lib/incus/unix.socket")).client
        wait_for(lambda: sum(health.haproxy_servers(client, balancer).values()) == 2, timeout=15)
        servers = health.haproxy_servers(client, balancer)
        assert servers == {f"{name}-x-cp-1": True, f"{name}-x-cp-2": True, victim: False}, servers
    finally:
        kube.cleanup()
    stack.refresh(on_output=quiet)
    after = stack.up(on_output=quiet)
    conds = conditions(after)
    assert incus().get_instance(victim)["status"] == "Running"
    assert conds["BackendsHealthy"]["status"] == "True" and "3 of 3" in conds["BackendsHealthy"]["message"], conds


def cluster_ca(result) -> str:
    import base64

    import yaml

    doc = yaml.safe_load(result.outputs["clusters"].value[CLUSTER]["kubeconfig"])
    return base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]).decode()


def restart_all_under_load(result, host: str, port: int, server_name=None) -> dict:
    """Every kube-apiserver restarted gracefully, one at a time, under load through the endpoint."""
    from tests.k8s import ApiLoad, rolling_restart

    cp = result.outputs["clusters"].value[CLUSTER]
    with ApiLoad(cp["kubeconfig"], host, port, server_name=server_name) as load:
        time.sleep(2)
        rolling_restart(cp["controlPlane"], cp["addresses"], cluster_ca(result))
        time.sleep(2)
    counts = dict(load.counts)
    print(f"\nrolling restart via {server_name or host}:{port}: {counts}; first errors: {load.errors[:5]}")
    return {**counts, "errors": load.errors}


def test_rolling_restart_of_every_api_server_through_lxc_loses_no_request(k8s):
    _project, _name, _stack, result = k8s
    host, port = result.outputs["loadBalancers"].value["x-api"]["endpoint"].rsplit(":", 1)
    counts = restart_all_under_load(result, host, int(port))
    assert counts["ok"] > 500, counts  # at least 20 requests/s on new connections for the whole restart
    assert counts["failed"] == 0, counts


def test_a_watch_survives_a_balancer_reload(k8s):
    """A ConfigMap watch through the endpoint while a backend joins (haproxy.cfg changes, haproxy reloads): events
    keep arriving. The old haproxy worker keeps the stream until it ends or `drain.timeoutSeconds` passes, then the
    stream is cut and the client re-establishes it; the gap is printed for docs/benchmarks.md."""
    from tests.helpers import launch_external
    from tests.k8s import ApiLoad, WatchProbe

    project, name, stack, result = k8s
    host, port = result.outputs["loadBalancers"].value["x-api"]["endpoint"].rsplit(":", 1)
    extra = f"{name}-joiner"
    cp = result.outputs["clusters"].value[CLUSTER]
    load = ApiLoad(cp["kubeconfig"], host, int(port))
    try:
        with WatchProbe(load, "watch-reload") as probe:
            time.sleep(3)
            assert len(probe.arrivals) >= 5, "the watch sees no events"
            launch_external(extra, {"user.cluster-name": CLUSTER, "user.cluster-role": "control-plane"})
            t_reload = time.monotonic()
            stack.up(on_output=quiet)
            time.sleep(40)  # past the old worker's hard-stop-after (drain.timeoutSeconds, 30 s)
        gap = probe.max_gap(t_reload)
        cuts = [round(c - t_reload, 1) for c in probe.cuts if c >= t_reload]
        print(f"\nwatch across a reload: {len(probe.arrivals)} events of {probe.written} writes, longest gap after "
              f"the reload {gap:.2f}s, stream cut and re-established at {cuts} s after the reload")
        assert probe.arrivals[-1] > t_reload + 35, "events stopped arriving after the reload"
        assert gap < 10, f"events stopped for {gap:.1f}s"
    finally:
        incus().delete_instance(extra)
        stack.up(on_output=quiet)


def vip_holders(prefix: str, vip: str) -> list[str]:
    return sorted(n for n, inst in instances_with_prefix(prefix).items()
                  if vip in [a["address"] for a in ((inst.get("state") or {}).get("network") or {})
                             .get("eth0", {}).get("addresses", [])])


def split_brain_heals(prefix: str, vip: str, advert_seconds: float):
    """The VIP holder is cut off its network for 10 s (both sides then hold the VIP: a split brain), then comes
    back. After three advert intervals (plus the time Incus takes to show addresses), exactly one holder."""
    assert wait_for(lambda: len(vip_holders(prefix, vip)) == 1, 30), vip_holders(prefix, vip)
    holder = vip_holders(prefix, vip)[0]
    with partition(holder):
        t0 = time.monotonic()
        # The other side stops hearing adverts and takes the VIP too: a real split brain.
        assert wait_for(lambda: len(vip_holders(prefix, vip)) == 2, 9), vip_holders(prefix, vip)
        time.sleep(max(0.0, 10 - (time.monotonic() - t0)))
    time.sleep(3 * advert_seconds + 2)
    first = vip_holders(prefix, vip)
    time.sleep(3)
    assert vip_holders(prefix, vip) == first and len(first) == 1, f"after the partition: {first}"
    print(f"\nsplit brain of {prefix}: {holder} cut off for 10 s; one holder after: {first[0]}")


def switch_api_balancer(project, name, stack, **balancer):
    """Change the dev stack's control-plane balancer (x-api) as a user would, and `up`."""
    values = dev_stack_values()
    api = next(lb for lb in values["loadBalancers"] if lb["name"] == "x-api")
    for key in ("lxc", "keepalived", "dns", "ovn"):
        api.pop(key, None)
    api.update(balancer)
    project.write_stack_config(name, values)
    return stack.up(on_output=quiet)


def test_lxc_pair_with_a_vip_the_certificate_follows(k8s):
    """lxc with 2 replicas and a VIP: the VIP joins the serving certificate (reissued, reloaded by the API servers
    without replacing an instance) and the kubeconfig names it; kubectl through it verifies TLS."""
    project, name, stack, result = k8s
    vip = f"198.18.10.{random.randrange(30, 60)}"
    before = {n: i["config"]["volatile.uuid"] for n, i in instances_with_prefix(f"{name}-x-cp").items()}
    up = switch_api_balancer(project, name, stack, type="lxc",
                             lxc={"replicas": 2, "vip": vip, "virtualRouterID": random.randrange(100, 200)})
    kube = kubectl_of(up)
    try:
        assert kube.server == f"https://{vip}:6443"
        kube.becomes_ready(30)
        assert kube.configmap_roundtrip("cplb-vip", vip) == {"value": vip}
        after = {n: i["config"]["volatile.uuid"] for n, i in instances_with_prefix(f"{name}-x-cp").items()}
        assert after == before, "a control-plane instance was replaced"
        split_brain_heals(f"{name}-x-api-haproxy", vip, advert_seconds=1)
        kube.becomes_ready(30)
    finally:
        kube.cleanup()


def test_keepalived_on_the_control_plane_nodes(k8s):
    """The k0s CPLB model on real API servers: VRRP on the control-plane nodes, the VIP follows each node's own
    /readyz (track script), haproxy on every node balances VIP:6443 to the API servers (verified against the CA).
    kubectl through the VIP; a rolling restart of every API server under load loses no request."""
    project, name, stack, result = k8s
    vip = f"198.18.10.{random.randrange(60, 90)}"
    up = switch_api_balancer(project, name, stack, type="keepalived", keepalived={
        "mode": "userspace", "vrrpInstances": [{"virtualIPs": [f"{vip}/24"], "virtualRouterID": random.randrange(100, 200)}]})
    kube = kubectl_of(up)
    try:
        assert kube.server == f"https://{vip}:6443"
        kube.becomes_ready(30)
        assert kube.configmap_roundtrip("cplb-keepalived", vip) == {"value": vip}
        assert instances_with_prefix(f"{name}-x-api") == {}, "the lxc instances were not removed"
        conds = conditions(up)
        assert conds["Ready"]["status"] == "True" and conds["Exists"]["status"] == "True", conds
        counts = restart_all_under_load(up, vip, 6443)
        assert counts["ok"] > 500 and counts["failed"] == 0, counts
        split_brain_heals(f"{name}-x-cp", vip, advert_seconds=1)
        kube.becomes_ready(30)
    finally:
        kube.cleanup()
