"""etcd's own CA (kubeadm's layout), on a real control plane: a cluster made by the release before it (its etcd
certificates from the cluster CA) moves to it under API load with no failed request and its data kept, in two `up`s
(trust both CAs, member by member, then issue from etcd's; then drop the cluster CA from etcd's trust), and after it
the admin (system:masters) certificate no longer opens etcd while the API server's etcd client certificate does."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tarfile
import tempfile

import pytest

from tests.helpers import ROOT, base_config, incus, pulumi_stack, wait_for
from tests.k8s import ApiLoad, Kubectl, etcd_members, readyz_check, real_control_plane

pytestmark = pytest.mark.integration
CLUSTER = "itetcdca"
# The last commit before etcd had its own CA: the release a user's stack was made with.
BEFORE = "d9a9313"


def quiet(_):
    pass


def values() -> dict:
    return base_config(
        controlPlanes=[real_control_plane("ecp", CLUSTER)],
        loadBalancers=[{"name": "ecp-api", "cluster": CLUSTER, "type": "lxc",
                        "ports": [{"name": "api", "port": 6443, "targetPort": 6443}], "healthCheck": readyz_check(),
                        "lxc": {"instanceSpec": {"image": "cplb/haproxy", "limits": {"memory": "128MiB"}}}}])


def program_files() -> list[str]:
    """The program's own files (what a release is), not the copy's backend, stacks or tools."""
    listed = subprocess.run(["git", "-C", ROOT, "ls-tree", "--name-only", BEFORE], capture_output=True, text=True)
    assert listed.returncode == 0, f"the release before etcd's own CA ({BEFORE}) is not in this clone: {listed.stderr}"
    return [n for n in listed.stdout.split() if n not in ("stacks", "tests", "bench", "docs", "scripts", "images")]


def use_release(project_dir: str, commit: str | None) -> None:
    """Put the program of `commit` (None: this checkout) into the project copy."""
    for name in program_files():
        path = os.path.join(project_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    if commit is None:
        for name in program_files():
            src = os.path.join(ROOT, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(project_dir, name), ignore=shutil.ignore_patterns("__pycache__"))
            elif os.path.exists(src):
                shutil.copy(src, project_dir)
        return
    with tempfile.TemporaryFile() as archive:
        subprocess.run(["git", "-C", ROOT, "archive", commit, *program_files()], stdout=archive, check=True)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            tar.extractall(project_dir, filter="data")


def members(name: str) -> list[str]:
    return [f"{name}-ecp-{n}" for n in (1, 2, 3)]


def address(member: str) -> str:
    from providers.incus_client import addresses_of

    return addresses_of(incus().get_instance(member))["inet"][0]


def etcd_issuers(name: str) -> set[str]:
    from providers.pki import issuer_cn
    from tests.integration.test_rollout import served_certificate

    return {issuer_cn(served_certificate(address(m), 2379)) for m in members(name)}


def trusted_by_etcd(name: str) -> list[int]:
    """How many CA certificates each member's etcd is told to trust."""
    return [incus().pull_file(m, "/etc/kubernetes/pki/etcd/ca.crt")[0].count(b"BEGIN CERTIFICATE")
            for m in members(name)]


def etcd_opens_for(kubeconfig: str, member: str) -> bool:
    """Whether etcd completes a request for the admin kubeconfig's client certificate."""
    import base64
    import urllib.error
    import urllib.request

    import yaml

    from providers.memfile import MemFile

    user = yaml.safe_load(kubeconfig)["users"][0]["user"]
    pem = base64.b64decode(user["client-certificate-data"]) + base64.b64decode(user["client-key-data"])
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with MemFile(pem) as key:
        ctx.load_cert_chain(key.path)
    request = urllib.request.Request(f"https://{address(member)}:2379/v3/cluster/member/list", data=b"{}",
                                     method="POST")
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ssl.SSLError, ConnectionError):
        return False


def test_a_cluster_made_before_etcd_had_its_own_ca_moves_to_it_with_no_failed_request():
    with pulumi_stack(values(), prefix="eca") as (project, name, stack):
        use_release(project.dir, BEFORE)
        result = stack.up(on_output=quiet)
        kubeconfig = result.outputs["clusters"].value[CLUSTER]["kubeconfig"]
        endpoint = result.outputs["loadBalancers"].value["ecp-api"]["endpoint"].rsplit(":", 1)[0]
        kube = Kubectl(kubeconfig)
        try:
            kube.ok("create", "configmap", "before-move", "--from-literal=value=kept")
            assert etcd_issuers(name) == {f"{CLUSTER}-ca"}
            assert etcd_opens_for(kubeconfig, members(name)[0]), "the old layout: the admin certificate opens etcd"
            ids = sorted(m["ID"] for m in etcd_members(members(name)[0], address(members(name)[0])))

            use_release(project.dir, None)
            preview = stack.preview(on_output=quiet)
            assert "etcd moves to its own CA" in preview.stdout, preview.stdout[-3000:]
            with ApiLoad(kubeconfig, endpoint, 6443) as first:
                stack.up(on_output=quiet)
            assert etcd_issuers(name) == {f"{CLUSTER}-etcd-ca"}
            assert trusted_by_etcd(name) == [2, 2, 2]  # both, until the next `up`
            with ApiLoad(kubeconfig, endpoint, 6443) as second:
                stack.up(on_output=quiet)
            print(f"\netcd's own CA for a cluster made before it: first up {first.counts}, second up {second.counts}")
            assert first.counts["failed"] == 0, first.errors
            assert second.counts["failed"] == 0, second.errors
            assert trusted_by_etcd(name) == [1, 1, 1]
            assert stack.preview(on_output=quiet).change_summary.keys() <= {"same"}
            # The data and the membership are what they were; the admin certificate no longer opens etcd.
            assert kube.ok("get", "configmap", "before-move", "-o", "jsonpath={.data.value}") == "kept"
            assert sorted(m["ID"] for m in etcd_members(members(name)[0], address(members(name)[0]))) == ids
            assert wait_for(lambda: not any(etcd_opens_for(kubeconfig, m) for m in members(name)), 10)
        finally:
            kube.cleanup()
