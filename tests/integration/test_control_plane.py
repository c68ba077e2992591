"""A real Kubernetes control plane behind the balancers: three instances with stacked etcd and kube-apiserver
(built from Go modules), a PKI made by the program, kubectl through the endpoint with TLS verified against the
cluster CA.

One control plane serves the whole module (it takes a while to start); the balancer in front of it changes from
test to test, as a user would change `type`, and the serving certificate follows.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.helpers import (
    embedded_default, fresh_router_id, fresh_vip,
    clients_reach_only, http_get, incus, instances_with_prefix, neighbour_mac, partition, pulumi_stack, vip_holders,
    wait_for,
)
from tests.k8s import Kubectl

pytestmark = pytest.mark.integration
CLUSTER = "itk8s"
WORKERS = 3  # the k0s demonstration's three workers (the dev stack ships two)
FIRST_PREVIEW: dict = {}  # the k8s fixture's preview before its first `up`
DEV_VALUES: dict = {}  # dev_stack_values(), once per module


def quiet(_):
    pass


def conditions(result, lb: str = "x-api") -> dict:
    return {c["type"]: c for c in result.outputs["loadBalancers"].value[lb]["status"]["conditions"]}


def dev_stack_values() -> dict:
    """stacks/Pulumi.dev.yaml as shipped, with the cluster renamed so a running dev stack cannot select the
    test's instances, and a VIP of the module's own: the same at every call (tests write these values back)."""
    import copy
    import re

    def rename(text: str) -> str:
        text = re.sub(r"(?<![/\w])demo(?=[\s]|$)", CLUSTER, text, flags=re.M)
        return re.sub(r"(?<![/\w])demo-", "x-", text, flags=re.M)

    if not DEV_VALUES:
        DEV_VALUES.update(embedded_default(rename))
        DEV_VALUES["controlPlanes"][0]["workers"]["count"] = WORKERS
    return copy.deepcopy(DEV_VALUES)


@pytest.fixture(scope="module")
def k8s():
    if not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", ".tools", "bin", "kube-apiserver")):
        pytest.fail("kube-apiserver is missing: scripts/setup builds it")
    with pulumi_stack(dev_stack_values(), prefix="k8s") as (project, name, stack):
        FIRST_PREVIEW["text"] = stack.preview(diff=True, on_output=quiet).stdout
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


def nodes_of(kube: Kubectl) -> dict[str, bool]:
    """Each node's name and whether it is Ready."""
    items = json.loads(kube.ok("get", "nodes", "-o", "json"))["items"]
    return {n["metadata"]["name"]: any(c["type"] == "Ready" and c["status"] == "True"
                                       for c in n["status"].get("conditions", [])) for n in items}


def demo_pods(kube: Kubectl) -> dict[str, dict]:
    """The demo workload's pods by name: node, uid, restarts."""
    items = json.loads(kube.ok("get", "pods", "-n", "cplb-demo", "-o", "json"))["items"]
    return {p["metadata"]["name"]: {"node": p["spec"].get("nodeName"), "uid": p["metadata"]["uid"],
                                    "restarts": sum(c.get("restartCount", 0)
                                                    for c in p["status"].get("containerStatuses", []))}
            for p in items}


def test_dev_stack_workers_join_through_the_endpoint_and_serve_the_ingress(k8s):
    """The dev stack's workers: kubelets that joined through the cluster's endpoint (their kubeconfig names it, not
    a member), Ready; the demo workload's pods run on them, and the second balancer's ports 80 and 443 answer from
    those pods."""
    _project, name, _stack, result = k8s
    kube = kubectl_of(result)
    try:
        workers = result.outputs["clusters"].value[CLUSTER]["workers"]
        assert len(workers) == WORKERS
        assert wait_for(lambda: nodes_of(kube) == {w: True for w in workers}, 60), nodes_of(kube)
        endpoint = result.outputs["loadBalancers"].value["x-api"]["endpoint"]
        content, _ = incus().pull_file(workers[0], "/etc/kubernetes/kubelet.conf")
        assert f"server: https://{endpoint}" in content.decode()
        pods = demo_pods(kube)
        assert sorted(p["node"] for p in pods.values()) == sorted(workers), pods
        host = result.outputs["loadBalancers"].value["x-ingress"]["endpoint"].rsplit(":", 1)[0]
        for port in (80, 443):
            assert wait_for(lambda: {http_get(host, port, timeout=5) for _ in range(8)} == set(pods), 30), port
        routing = result.outputs["routing"].value["x-ingress"]["destinations"]
        assert {(d["name"], d["port"]) for d in routing} == {(w, p) for w in workers for p in (80, 443)}
        # kubectl logs and exec go from the API server to the kubelet (its serving certificate verified).
        pod = sorted(pods)[0]
        assert kube.ok("exec", "-n", "cplb-demo", pod, "--", "/bin/busybox", "cat", "/tmp/index.html").strip() == pod
    finally:
        kube.cleanup()


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


def lease_holder(kube: Kubectl, lease: str) -> str:
    """The member (instance name) whose controller holds `lease` in kube-system; '' when none does."""
    r = kube.run("get", "lease", lease, "-n", "kube-system", "-o", "jsonpath={.spec.holderIdentity}")
    return r.stdout.split("_", 1)[0] if r.returncode == 0 else ""


def test_the_control_plane_is_complete_controllers_and_scheduler_elected_on_the_members(k8s):
    """kube-controller-manager and kube-scheduler run on every member, leader-elected: a Deployment gets its
    ReplicaSet and pod, the scheduler decides on the pod (no node matches it: Unschedulable), a foreground deletion and a
    namespace deletion finish (the garbage collector and the namespace controller). The leader's controller manager
    held down, another member's takes the lease."""
    _project, name, _stack, result = k8s
    kube = kubectl_of(result)
    members = {f"{name}-x-cp-{n}" for n in (1, 2, 3)}
    ns = "cplb-complete"
    held = None
    try:
        for lease in ("kube-controller-manager", "kube-scheduler"):
            assert wait_for(lambda lease=lease: lease_holder(kube, lease) in members, 60), (lease, members)
        kube.ok("create", "namespace", ns)
        # A pod no node may take (its node selector matches none): the scheduler decides, and says why.
        kube.ok("apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"nodeSelector": {"cplb.incus.dev/nowhere": "true"}, "containers": [
                    {"name": "web", "image": "cplb.local/web:1", "imagePullPolicy": "Never"}]}}}}))

        def pod_condition() -> dict:
            pods = json.loads(kube.ok("get", "pods", "-n", ns, "-l", "app=web", "-o", "json"))["items"]
            return next((c for p in pods for c in p.get("status", {}).get("conditions", [])
                         if c["type"] == "PodScheduled"), {})
        assert wait_for(lambda: pod_condition().get("reason") == "Unschedulable", 60), pod_condition()
        kube.ok("delete", "deployment", "web", "-n", ns, "--cascade=foreground", "--wait=true", timeout=90)
        assert kube.ok("get", "replicasets,pods", "-n", ns, "-o", "name").strip() == ""
        kube.ok("delete", "namespace", ns, "--wait=true", timeout=120)
        assert kube.run("get", "namespace", ns).returncode != 0
        # Leader election: the lease's holder is held down (its service stopped and kept down), another takes it.
        held = lease_holder(kube, "kube-controller-manager")
        rc, _, err = incus().exec(held, ["sh", "-c", ": > /run/cplb-service.kube-controller-manager.down; "
                                                      "kill $(pidof kube-controller-manager)"])
        assert rc == 0, err
        assert wait_for(lambda: lease_holder(kube, "kube-controller-manager") in members - {held}, 90), \
            lease_holder(kube, "kube-controller-manager")
    finally:
        if held:
            incus().exec(held, ["rm", "-f", "/run/cplb-service.kube-controller-manager.down"])
        kube.run("delete", "namespace", ns, "--wait=false")
        kube.cleanup()


def test_one_control_plane_instance_powered_off(k8s):
    """The k0s demo: a control-plane instance is stopped hard; kubectl through the endpoint keeps working (etcd
    keeps quorum, haproxy's /readyz check takes the dead server out), haproxy's runtime API, which BackendsHealthy
    reads, counts 2 of 3, and every worker stays Ready with its pods (its kubelet renews its lease through the
    endpoint). The next `up` starts the instance again (the stack converges), BackendsHealthy is back to 3 of 3 and
    etcd has its three members."""
    import health
    from facts import Facts
    from spec import IncusSpec

    from tests.k8s import etcd_members

    project, name, stack, result = k8s
    kube = kubectl_of(result)
    victim = f"{name}-x-cp-3"
    balancer = f"{name}-x-api-haproxy-1"
    workers = result.outputs["clusters"].value[CLUSTER]["workers"]
    try:
        assert wait_for(lambda: nodes_of(kube) == {w: True for w in workers}, 60), nodes_of(kube)
        pods_before = demo_pods(kube)
        incus().call("PUT", f"instances/{victim}/state", json={"action": "stop", "force": True})
        wait_for(lambda: incus().get_instance(victim)["status"] == "Stopped", timeout=30)
        stopped = renewals(kube, workers)
        for _ in range(10):
            assert kube.readyz() == "ok"
        assert kube.configmap_roundtrip("cplb-k0s-demo", "quorum") == {"value": "quorum"}
        client = Facts(IncusSpec(socket="/var/lib/incus/unix.socket")).client
        wait_for(lambda: sum(health.haproxy_servers(client, balancer).values()) == 2, timeout=15)
        servers = health.haproxy_servers(client, balancer)
        assert servers == {f"{name}-x-cp-1": True, f"{name}-x-cp-2": True, victim: False}, servers
        # The kubelets renew their node leases through the endpoint with the member gone (twice each, 10 s apart):
        # every worker stays Ready, and no pod is evicted or restarted.
        assert wait_for(lambda: renewed_twice(kube, workers, stopped), 60), (stopped, renewals(kube, workers))
        assert nodes_of(kube) == {w: True for w in workers}, nodes_of(kube)
        assert demo_pods(kube) == pods_before
    finally:
        kube.cleanup()
    stack.refresh(on_output=quiet)
    after = stack.up(on_output=quiet)
    conds = conditions(after)
    assert incus().get_instance(victim)["status"] == "Running"
    assert conds["BackendsHealthy"]["status"] == "True" and "3 of 3" in conds["BackendsHealthy"]["message"], conds
    # Back in: etcd has its three members again, every one started (none twice).
    addresses = after.outputs["clusters"].value[CLUSTER]["addresses"]
    members = etcd_members(f"{name}-x-cp-1", addresses[0])
    assert sorted(m.get("name") for m in members) == sorted(f"{name}-x-cp-{n}" for n in (1, 2, 3)), members


def renewals(kube: Kubectl, nodes: list[str]) -> dict[str, list[str]]:
    """Each node's lease renewal times seen so far (the kubelet renews its Lease in kube-node-lease every 10 s)."""
    out = {}
    for node in nodes:
        r = kube.run("get", "lease", node, "-n", "kube-node-lease", "-o", "jsonpath={.spec.renewTime}")
        out[node] = [r.stdout.strip()] if r.returncode == 0 else []
    return out


def renewed_twice(kube: Kubectl, nodes: list[str], seen: dict[str, list[str]]) -> bool:
    """Whether every node's lease was renewed at least twice since `seen` was taken (`seen` grows as it looks)."""
    for node, times in renewals(kube, nodes).items():
        if times and times[0] not in seen[node]:
            seen[node].append(times[0])
    return all(len(seen[n]) >= 3 for n in nodes)


# --- publishing (components/publish.py): the dev stack has kubernetes.publish on ---------------------------------

def published(kube: Kubectl, stack_name: str) -> dict:
    """The stack's LoadBalancer and LoadBalancerRouting objects in its cluster, by kind and name."""
    items = json.loads(kube.ok("get", "loadbalancers,loadbalancerroutings", "-A", "-o", "json"))["items"]
    out: dict = {"LoadBalancer": {}, "LoadBalancerRouting": {}}
    for item in items:
        if item["metadata"].get("labels", {}).get("cplb.incus.dev/stack") == stack_name:
            out[item["kind"]][item["metadata"]["name"]] = item
    return out


def test_each_balancer_is_published_in_its_cluster(k8s):
    """`kubectl get loadbalancers,loadbalancerroutings -A -o json` (through the balancer's own endpoint) matches the
    stack outputs: endpoint, conditions, backend names, Incus uuids; the printer columns show them."""
    _project, name, _stack, result = k8s
    kube = kubectl_of(result)
    try:
        objects = published(kube, name)
        outputs = result.outputs["loadBalancers"].value
        assert set(objects["LoadBalancer"]) == set(outputs) == {"x-api", "x-ingress"}
        assert set(objects["LoadBalancerRouting"]) == set(outputs)
        for lb_name, obj in objects["LoadBalancer"].items():
            out = outputs[lb_name]
            assert obj["metadata"]["namespace"] == "kube-system"
            assert obj["spec"]["type"] == "lxc" and obj["status"]["endpoint"] == out["endpoint"]
            assert obj["status"]["conditions"] == out["status"]["conditions"]
            routing = objects["LoadBalancerRouting"][lb_name]
            expected = result.outputs["routing"].value[lb_name]["destinations"]
            assert [(d["name"], d["uid"], d["address"], d["port"], d["family"]) for d in routing["destinations"]] == \
                [(d["name"], d["uuid"], d["address"], d["port"], d["family"]) for d in expected]
            for d in routing["destinations"]:
                assert incus().get_instance(d["name"])["config"]["volatile.uuid"] == d["uid"]
            assert routing["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
        api = objects["LoadBalancer"]["x-api"]
        assert api["spec"]["role"] == "control-plane" and api["status"]["backends"] == "3 of 3"
        table = kube.ok("get", "loadbalancers", "-n", "kube-system").splitlines()
        assert table[0].split() == ["NAME", "TYPE", "ENDPOINT", "READY", "BACKENDS", "AGE"], table[0]
        row = next(line for line in table if line.startswith("x-api "))
        assert outputs["x-api"]["endpoint"] in row and " True " in row and "3 of 3" in row, row
    finally:
        kube.cleanup()


def plain(value):
    """A value of an exported (decrypted) state: a secret's plaintext is JSON-encoded."""
    if isinstance(value, dict) and "plaintext" in value:
        return json.loads(value["plaintext"])
    return value


def test_the_publication_and_kube_vip_have_credentials_scoped_to_what_they_do(k8s):
    """The publication writes through `cplb:publisher` and kube-vip's kubeconfig (on every member) is `cplb:kube-vip`:
    each may do its job (the cplb objects; the Lease) and neither reads a Secret (components/access.py). Their RBAC,
    deleted out of band, shows in `pulumi refresh`, and the next `up` puts it back."""
    _project, name, stack, result = k8s
    admin = kubectl_of(result)
    resources = stack.export_stack().deployment["resources"]
    provider = next(r for r in resources if r["type"] == "pulumi:providers:kubernetes"
                    and r["urn"].endswith(f"{CLUSTER}-publish-provider"))
    publisher = Kubectl(plain(provider["inputs"]["kubeconfig"]))
    member = result.outputs["clusters"].value[CLUSTER]["controlPlane"][0]
    rc, conf, err = incus().exec(member, ["cat", "/etc/kubernetes/kube-vip.conf"])
    assert rc == 0, err
    assert incus().exec(member, ["stat", "-c", "%a", "/etc/kubernetes/kube-vip.conf"])[1].strip() == "600"
    kube_vip = Kubectl(conf)
    access = next(r["urn"] for r in resources if r["type"].endswith("k8s:ClusterObjects"))
    try:
        assert publisher.ok("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}") == "cplb:publisher"
        assert kube_vip.ok("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}") == "cplb:kube-vip"
        assert "x-api" in publisher.ok("get", "loadbalancers", "-n", "kube-system", "-o", "name")
        assert kube_vip.ok("auth", "can-i", "update", "leases/plndr-cp-lock", "-n", "kube-system").strip() == "yes"
        for kube in (publisher, kube_vip):
            r = kube.run("get", "secrets", "-n", "kube-system")
            assert r.returncode != 0 and "Forbidden" in r.stderr, r.stdout + r.stderr
            r = kube.run("get", "configmaps", "-A")
            assert r.returncode != 0 and "Forbidden" in r.stderr, r.stdout + r.stderr
        r = kube_vip.run("get", "loadbalancers", "-n", "kube-system")
        assert r.returncode != 0 and "Forbidden" in r.stderr, r.stdout + r.stderr
        # Out of band: the publisher's Role is deleted; a refresh sees it, an `up` applies it again.
        admin.ok("delete", "role", "cplb:publisher", "-n", "kube-system")
        r = publisher.run("get", "loadbalancers", "-n", "kube-system")
        assert r.returncode != 0 and "Forbidden" in r.stderr, r.stdout + r.stderr
        refreshed = stack.refresh(target=[access], on_output=quiet)
        assert refreshed.summary.resource_changes.get("update") == 1, refreshed.summary.resource_changes
        stack.up(target=[access], on_output=quiet)
        assert "x-api" in publisher.ok("get", "loadbalancers", "-n", "kube-system", "-o", "name")
    finally:
        for kube in (admin, publisher, kube_vip):
            kube.cleanup()


def test_the_first_preview_shows_the_kubernetes_resources_and_no_secret(k8s):
    _project, _name, _stack, result = k8s
    text = FIRST_PREVIEW["text"]
    for kind in ("kubernetes:cplb.incus.dev/v1alpha1:LoadBalancer", "kubernetes:cplb.incus.dev/v1alpha1:LoadBalancerRouting",
                 "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition", "pulumi:providers:kubernetes"):
        assert kind in text, kind
    assert "PRIVATE KEY" not in text and kube_key_data(result) not in text


def test_a_stopped_api_server_shows_in_the_published_status(k8s):
    """kube-apiserver stopped on one node (the instance stays up, so `up` does not restart anything), then `up`:
    the LoadBalancer shows BackendsHealthy False, "2 of 3", and so does the printer column."""
    import health
    from facts import Facts
    from spec import IncusSpec

    _project, name, stack, result = k8s
    victim = f"{name}-x-cp-2"
    client = incus()
    client.exec(victim, ["touch", "/run/cplb-service.kube-apiserver.down"])
    client.exec(victim, ["killall", "-TERM", "kube-apiserver"])
    kube = kubectl_of(result)
    try:
        assert wait_for(lambda: client.exec(victim, ["pidof", "kube-apiserver"])[0] != 0, 60)
        servers = Facts(IncusSpec(socket="/var/lib/incus/unix.socket")).client
        assert wait_for(lambda: sum(health.haproxy_servers(servers, f"{name}-x-api-haproxy-1").values()) == 2, 30)
        up = stack.up(on_output=quiet, refresh=True)
        conds = conditions(up)
        assert conds["BackendsHealthy"]["status"] == "False" and "2 of 3" in conds["BackendsHealthy"]["message"]
        obj = json.loads(kube.ok("get", "loadbalancer", "x-api", "-n", "kube-system", "-o", "json"))
        healthy = next(c for c in obj["status"]["conditions"] if c["type"] == "BackendsHealthy")
        assert healthy["status"] == "False" and obj["status"]["backends"] == "2 of 3", obj["status"]
        row = next(line for line in kube.ok("get", "loadbalancers", "-n", "kube-system").splitlines()
                   if line.startswith("x-api "))
        assert "2 of 3" in row, row
    finally:
        client.exec(victim, ["rm", "-f", "/run/cplb-service.kube-apiserver.down"])
        kube.cleanup()
    from components.control_plane import readyz

    address = dict(zip(result.outputs["clusters"].value[CLUSTER]["controlPlane"],
                       result.outputs["clusters"].value[CLUSTER]["addresses"]))[victim]
    assert wait_for(lambda: readyz(address, cluster_ca(result)), 120, 1)
    assert "3 of 3" in conditions(stack.up(on_output=quiet, refresh=True))["BackendsHealthy"]["message"]


def test_a_removed_balancer_loses_its_objects_and_destroy_removes_them_all(k8s):
    """x-ingress leaves the config: its objects are gone after `up`. Then `destroy` of the publication (with what
    depends on it): no object of the stack and no CRD is left. `up` puts everything back."""
    project, name, stack, result = k8s
    kube = kubectl_of(result)
    try:
        values = dev_stack_values()
        values["loadBalancers"] = [lb for lb in values["loadBalancers"] if lb["name"] != "x-ingress"]
        project.write_stack_config(name, values)
        stack.up(on_output=quiet)
        objects = published(kube, name)
        assert set(objects["LoadBalancer"]) == {"x-api"} and set(objects["LoadBalancerRouting"]) == {"x-api"}
        urns = [r["urn"] for r in stack.export_stack().deployment["resources"] if r["type"] == "cplb:k8s:Publication"]
        assert len(urns) == 1, urns
        stack.destroy(target=urns, target_dependents=True, on_output=quiet)
        for crd in ("loadbalancers.cplb.incus.dev", "loadbalancerroutings.cplb.incus.dev"):
            r = kube.run("get", "crd", crd)
            assert r.returncode != 0 and "NotFound" in r.stderr, r.stdout + r.stderr
        # The types are gone, and every object of them with them.
        r = kube.run("get", "loadbalancers,loadbalancerroutings", "-A", "-o", "json")
        assert r.returncode != 0 and "could not find the requested resource" in r.stderr, r.stdout + r.stderr
        # Nothing of the publication's is left in the state (the demo workload, written by its own provider, stays).
        left = [r["type"] for r in stack.export_stack().deployment["resources"] if r["type"].startswith("kubernetes:")
                and "cplb:k8s:DemoWorkload" not in r.get("parent", "")]
        assert left == [], left
    finally:
        project.write_stack_config(name, dev_stack_values())
        stack.up(on_output=quiet)
        kube.cleanup()
    assert set(published(kubectl_of(result), name)["LoadBalancer"]) == {"x-api", "x-ingress"}


def test_a_kubeconfig_that_does_not_authenticate_is_refused_at_preview(k8s):
    """A stack publishing into a cluster it does not run, with a kubeconfig whose token the cluster refuses, and
    one whose server does not answer: each a clear error at preview naming the field, and `up` creates nothing."""
    import yaml
    from pulumi import automation as auto
    from pulumi.automation import ConfigValue

    from tests.helpers import base_config

    _project, _name, _stack, result = k8s
    good = yaml.safe_load(result.outputs["clusters"].value[CLUSTER]["kubeconfig"])
    wrong_token = {**good, "users": [{"name": "admin", "user": {"token": "cplb-not-a-token-0123456789"}}]}
    silent = yaml.safe_load(yaml.safe_dump(good))
    silent["clusters"][0]["cluster"]["server"] = "https://198.18.10.251:6443"  # on the project bridge, unheld
    address = result.outputs["clusters"].value[CLUSTER]["addresses"][0]
    values = base_config(
        loadBalancers=[{"name": "ext", "cluster": "extc", "type": "lxc", "role": "service",
                        "ports": [{"name": "api", "port": 6443}],
                        "targets": {"addresses": [{"name": "cp1", "address": address}]}}],
        kubernetes={"publish": True, "cluster": "extc"})
    with pulumi_stack(values, prefix="kx") as (_p, other, other_stack):
        for doc, words in ((wrong_token, "refused the kubeconfig's credentials"), (silent, "cannot be reached")):
            other_stack.set_config("cplb:kubernetes.kubeconfig", ConfigValue(yaml.safe_dump(doc), secret=True),
                                   path=True)
            for run in (other_stack.preview, other_stack.up):
                with pytest.raises(auto.CommandError) as exc:
                    run(on_output=quiet)
                text = str(exc.value)
                assert "cplb:kubernetes.kubeconfig" in text and words in text, text[-2000:]
                assert "cplb-not-a-token" not in text and "Traceback" not in text
            assert instances_with_prefix(other) == {}
            assert len(other_stack.export_stack().deployment.get("resources") or []) <= 1  # the Stack at most


def cluster_ca(result) -> str:
    from tests.k8s import kubeconfig_ca

    return kubeconfig_ca(result.outputs["clusters"].value[CLUSTER]["kubeconfig"])


def restart_all_under_load(result, host: str, port: int, server_name=None) -> dict:
    """Every kube-apiserver restarted gracefully, one at a time, under load through the endpoint."""
    from tests.k8s import ApiLoad, rolling_restart

    cp = result.outputs["clusters"].value[CLUSTER]
    with ApiLoad(cp["kubeconfig"], host, port, server_name=server_name) as load:
        time.sleep(2)
        rolling_restart(cp["controlPlane"], cp["addresses"], cluster_ca(result))
        time.sleep(2)
    counts = dict(load.counts)
    print(f"\nrolling restart via {server_name or host}:{port}: {counts}; first errors: {load.errors[:5]}; retried after a reset: {load.resets[:5]}")
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
    # And clients reach that holder: the host's neighbour entry for the VIP is the holder's MAC (a request after
    # the settle time is never answered, nor dropped, by the node that lost the VIP).
    assert clients_reach_only(first[0], vip), (neighbour_mac(vip), first)
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
    vip = fresh_vip()
    before = {n: i["config"]["volatile.uuid"] for n, i in instances_with_prefix(f"{name}-x-cp").items()}
    up = switch_api_balancer(project, name, stack, type="lxc",
                             lxc={"replicas": 2, "vip": vip, "virtualRouterID": fresh_router_id()})
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
    vip = fresh_vip()
    up = switch_api_balancer(project, name, stack, type="keepalived", keepalived={
        "mode": "userspace", "vrrpInstances": [{"virtualIPs": [f"{vip}/24"], "virtualRouterID": fresh_router_id()}]})
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
