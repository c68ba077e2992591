"""Helpers for tests against the real incusd and the real Pulumi CLI (through the Automation API)."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from typing import Optional

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS_BIN = os.path.join(ROOT, ".tools", "bin")
PROJECT_FILES = ("Pulumi.yaml", "__main__.py", "spec.py", "components", "providers", "templates")
SOCKET = "/var/lib/incus/unix.socket"
POOL = os.environ.get("CPLB_POOL", "cplb")
BRIDGE = os.environ.get("CPLB_BRIDGE", "cplbbr0")


def unique_stack(prefix: str = "it") -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def incus():
    from providers.incus_client import Connection, client_for

    return client_for(Connection(socket=SOCKET))


def instances_with_prefix(prefix: str) -> dict[str, dict]:
    return {i["name"]: i for i in incus().list_instances() if i["name"].startswith(prefix + "-")}


def http_get(host: str, port: int, path: str = "/", timeout: float = 3.0) -> Optional[str]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as resp:
            return resp.read().decode().strip()
    except OSError:
        return None


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class ProjectCopy:
    """A copy of the Pulumi program in a temp dir, with its own backend and PULUMI_HOME."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="cplb-it-")
        for name in PROJECT_FILES:
            src = os.path.join(ROOT, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(self.dir, name), ignore=shutil.ignore_patterns("__pycache__"))
            elif os.path.exists(src):
                shutil.copy(src, self.dir)
        os.makedirs(os.path.join(self.dir, "stacks"))
        os.makedirs(os.path.join(self.dir, ".backend"))
        self.env = {
            "PATH": f"{TOOLS_BIN}:{os.environ['PATH']}",
            "PULUMI_HOME": os.path.join(self.dir, ".pulumi-home"),
            "PULUMI_BACKEND_URL": f"file://{self.dir}/.backend",
            "PULUMI_CONFIG_PASSPHRASE": "incus-cplb-test",
            "PULUMI_SKIP_UPDATE_CHECK": "1",
            "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "1",
        }

    def write_stack_config(self, stack: str, values: dict) -> None:
        config = {f"cplb:{k}": v for k, v in values.items()}
        path = os.path.join(self.dir, "stacks", f"Pulumi.{stack}.yaml")
        existing = {}
        if os.path.exists(path):
            with open(path) as f:
                existing = yaml.safe_load(f) or {}
        existing["config"] = config
        with open(path, "w") as f:
            yaml.safe_dump(existing, f, sort_keys=False)

    def stack(self, name: str, values: dict):
        from pulumi import automation as auto

        self.write_stack_config(name, values)
        os.environ["PATH"] = self.env["PATH"]  # the Automation API looks pulumi up on PATH
        ws = auto.LocalWorkspaceOptions(work_dir=self.dir, env_vars=self.env, pulumi_home=self.env["PULUMI_HOME"])
        return auto.create_or_select_stack(name, work_dir=self.dir, opts=ws)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def base_config(**extra) -> dict:
    return {"incus": {"socket": SOCKET, "project": "default", "storagePool": POOL, "network": BRIDGE}, **extra}


def demo_group(count: int = 3, name: str = "demo-cp", cluster: str = "demo", role: str = "control-plane") -> dict:
    return {
        "name": name, "count": count,
        "instance": {"image": "cplb/demo-apiserver", "limits": {"memory": "64MiB"}},
        "labels": {"user.cluster-name": cluster, "user.cluster-role": role},
    }


@contextmanager
def pulumi_stack(values: dict, prefix: str = "it"):
    """A fresh stack; destroyed (and checked empty) afterwards even when the test fails."""
    project = ProjectCopy()
    name = unique_stack(prefix)
    stack = project.stack(name, values)
    try:
        yield project, name, stack
    finally:
        try:
            stack.destroy(on_output=lambda _: None)
        finally:
            for inst in instances_with_prefix(name):  # never leave instances behind a failed test
                incus().delete_instance(inst)
            project.cleanup()
