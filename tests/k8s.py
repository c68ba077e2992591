"""kubectl through a balancer's endpoint, with TLS verified against the cluster CA (never skipped)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import Optional

from tests.helpers import TOOLS_BIN

KUBECTL = os.path.join(TOOLS_BIN, "kubectl")


def real_control_plane(name: str, cluster: str, count: int = 3, **extra) -> dict:
    return {"name": name, "cluster": cluster, "count": count,
            "instance": {"image": "cplb/control-plane", "limits": {"memory": "768MiB"}}, **extra}


def readyz_check(**over) -> dict:
    return {"mode": "https", "path": "/readyz", "intervalSeconds": 1, "rise": 1, "fall": 2, **over}


class Kubectl:
    """kubectl with the stack's kubeconfig (written 0600 to a temp dir), optionally to another server."""

    def __init__(self, kubeconfig: str, server: Optional[str] = None):
        import yaml

        doc = yaml.safe_load(kubeconfig)
        if server:
            doc["clusters"][0]["cluster"]["server"] = f"https://{server}"
        self.dir = tempfile.mkdtemp(prefix="cplb-kube-")
        self.path = os.path.join(self.dir, "kubeconfig")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f)
        self.server = doc["clusters"][0]["cluster"]["server"]

    def run(self, *args: str, timeout: float = 30, stdin: Optional[str] = None) -> subprocess.CompletedProcess:
        return subprocess.run([KUBECTL, "--kubeconfig", self.path, "--request-timeout=10s", *args],
                              capture_output=True, text=True, timeout=timeout, input=stdin)

    def ok(self, *args: str, **kw) -> str:
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"kubectl {' '.join(args)} via {self.server}: {r.stdout}{r.stderr}"
        return r.stdout

    def readyz(self) -> str:
        return self.ok("get", "--raw", "/readyz").strip()

    def configmap_roundtrip(self, name: str, value: str) -> dict:
        manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
                    "data": {"value": value}}
        self.ok("apply", "-f", "-", stdin=json.dumps(manifest))
        return json.loads(self.ok("get", "configmap", name, "-n", "default", "-o", "json"))["data"]

    def cleanup(self):
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
