"""Helpers for tests against the real incusd and the real Pulumi CLI (through the Automation API)."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from typing import Optional

import yaml

from facts import tcp_alive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS_BIN = os.path.join(ROOT, ".tools", "bin")
# What a test project copies: the program, not the checkout's tools, state, stacks or tests.
SKIP_IN_COPY = (".git", ".venv", ".tools", ".state", ".build", "tests", "stacks", "bench", "docs", "images",
                "scripts", "__pycache__", ".pytest_cache")
SOCKET = "/var/lib/incus/unix.socket"
POOL = os.environ.get("CPLB_POOL", "cplb")
BRIDGE = os.environ.get("CPLB_BRIDGE", "cplbbr0")


# Tests run in parallel (pytest-xdist, scripts/run-tests). Every worker takes its own share of the bridge's VIPs and
# VRRP router IDs, so two pairs of different tests never claim one address or one router ID on the same bridge.
# Reserved: the addresses and IDs that modules and benchmarks fix (test_rollout 40/140, bench/rollout 42/142 and
# 43/143, test_ovn_oci_external 98, the preview-only and DNS-record examples 9, 61, 77), the default router ID 51,
# and the embedded default's VIP 10 (router ID 10, below the shares), which a running dev stack holds.
_RESERVED_VIPS = {9, 10, 40, 42, 43, 61, 77, 98}
_RESERVED_ROUTER_IDS = {51, 140, 142, 143}


def run_dir() -> str:
    """A directory of this run's own, shared by its workers (tests/conftest.py makes it and removes it)."""
    return os.environ.get("CPLB_TEST_RUN_DIR") or tempfile.gettempdir()


def _worker() -> tuple[int, int]:
    """(this worker's index, the number of workers); (0, 1) outside pytest-xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:] or 0), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def _share(first: int, last: int, reserved: set[int]):
    import itertools
    import random

    index, count = _worker()
    mine = [n for n in range(first, last + 1) if n not in reserved][index::count]
    start = random.randrange(len(mine))  # another run's leftovers (a killed run) are less likely to be next
    return itertools.cycle(mine[start:] + mine[:start])


_vips = _share(2, 99, _RESERVED_VIPS)  # below the bridge's DHCP range (198.18.10.100-199)
_router_ids = _share(100, 250, _RESERVED_ROUTER_IDS)
_share_lock = threading.Lock()


def fresh_vip() -> str:
    """A VIP on the project bridge that no other test of this run holds (this worker's share, in turn)."""
    with _share_lock:
        return f"198.18.10.{next(_vips)}"


def fresh_router_id() -> int:
    """A VRRP router ID that no other test of this run uses on the bridge."""
    with _share_lock:
        return next(_router_ids)


def embedded_default(rename) -> dict:
    """stacks/Pulumi.dev.yaml's `cplb:` values, its text passed through `rename` (the cluster's and the objects'
    names, so that a running dev stack cannot select the test's instances), with a VIP and router ID of this
    test's own (the dev stack holds the file's)."""
    import yaml

    with open(os.path.join(ROOT, "stacks", "Pulumi.dev.yaml")) as f:
        config = yaml.safe_load(rename(f.read()))["config"]
    values = {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("cplb:")}
    for lb in values["loadBalancers"]:
        if (lb.get("lxc") or {}).get("vip"):
            lb["lxc"].update(vip=fresh_vip(), virtualRouterID=fresh_router_id())
    return values


def unique_stack(prefix: str = "it") -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def incus():
    from providers.incus_client import Connection, client_for

    return client_for(Connection(socket=SOCKET))


def instances_with_prefix(prefix: str) -> dict[str, dict]:
    return {i["name"]: i for i in incus().list_instances() if i["name"].startswith(prefix + "-")}


def volumes_with_prefix(prefix: str, pool: str = POOL) -> list[str]:
    """Custom volumes `<prefix>-...` in the pool (instances' state volumes)."""
    found = incus().call("GET", f"storage-pools/{pool}/volumes/custom") or []
    names = [url.rstrip("/").rsplit("/", 1)[-1] for url in found]
    return sorted(n for n in names if n.startswith(prefix + "-"))


def delete_volume(name: str, pool: str = POOL) -> None:
    from providers.incus_client import IncusError

    try:
        incus().call("DELETE", f"storage-pools/{pool}/volumes/custom/{name}")
    except IncusError as exc:
        if exc.status != 404:
            raise


def build_image_version(name: str, variant: Optional[str] = None) -> str:
    """scripts/build-image NAME [--variant V]: a new version of cplb/NAME beside the old ones (the files are the
    same, the variant makes it another version). Returns the fingerprint `cplb/NAME` names after it."""
    import subprocess

    subprocess.run(["nice", "-n", "10", os.path.join(ROOT, "scripts", "build-image"), name,
                    *(["--variant", variant] if variant else [])],
                   check=True, capture_output=True, text=True)
    return incus().call("GET", f"images/aliases/cplb/{name}")["target"]


def eth0_addresses(inst: dict) -> list[str]:
    """Every address on an instance's eth0 (none while it is stopped)."""
    return [a["address"] for a in (((inst.get("state") or {}).get("network") or {}).get("eth0") or {})
            .get("addresses", [])]


def vip_holders(prefix: str, vip: str) -> list[str]:
    """The instances named `<prefix>-...` that have `vip` on eth0, read from Incus, sorted."""
    return sorted(i["name"] for i in incus().list_instances()
                  if i["name"].startswith(prefix + "-") and vip in eth0_addresses(i))


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


def _yielding_pulumi_bin() -> str:
    """A directory whose `pulumi` runs the project's CLI at a lower CPU priority (nice 10; the language host, the
    program and its providers inherit it). Tests run side by side on a 2-core machine: the harness's own Pulumi runs
    yield to what the tests measure (keepalived's adverts, haproxy, etcd, the probes), which run at the normal one."""
    import hashlib

    checkout = hashlib.sha256(TOOLS_BIN.encode()).hexdigest()[:12]  # one per checkout: each runs its own CLI
    directory = os.path.join(tempfile.gettempdir(), f"cplb-nice-bin-{os.getuid()}-{checkout}")
    wrapper = os.path.join(directory, "pulumi")
    text = f'#!/bin/sh\nexec nice -n 10 {os.path.join(TOOLS_BIN, "pulumi")} "$@"\n'
    try:
        with open(wrapper) as f:
            if f.read() == text:
                return directory
    except OSError:
        pass
    os.makedirs(directory, exist_ok=True)
    temporary = f"{wrapper}.{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
    os.chmod(temporary, 0o755)
    os.replace(temporary, wrapper)  # workers write it at once: each one a whole file
    return directory


class ProjectCopy:
    """A copy of the Pulumi program in a temp dir, with its own backend and PULUMI_HOME."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="cplb-it-")
        for name in sorted(set(os.listdir(ROOT)) - set(SKIP_IN_COPY)):
            src = os.path.join(ROOT, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(self.dir, name), ignore=shutil.ignore_patterns("__pycache__"))
            elif os.path.exists(src):
                shutil.copy(src, self.dir)
        os.makedirs(os.path.join(self.dir, "stacks"))
        os.makedirs(os.path.join(self.dir, ".backend"))
        self.env = {
            "PATH": f"{_yielding_pulumi_bin()}:{TOOLS_BIN}:{os.environ['PATH']}",
            "PULUMI_HOME": os.path.join(self.dir, ".pulumi-home"),
            "PULUMI_BACKEND_URL": f"file://{self.dir}/.backend",
            "PULUMI_CONFIG_PASSPHRASE": "incus-cplb-test",
            "PULUMI_SKIP_UPDATE_CHECK": "1",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
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

    def after_a_kill(self, name: str, stack) -> None:
        """What scripts/stack does before the next command on a stack whose CLI was killed: a checkpoint cut in the
        middle of its save is put back from the backend's backup (scripts/locks.py), and the lock is cleared."""
        import importlib.util

        spec = importlib.util.spec_from_file_location("cplb_locks", os.path.join(ROOT, "scripts", "locks.py"))
        locks = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(locks)
        locks.repair(os.path.join(self.dir, ".backend"), name)
        stack.cancel()

    def state_text(self) -> str:
        """Everything the file backend stores, as text (checkpoints and backups)."""
        out = []
        for dirpath, _, files in os.walk(os.path.join(self.dir, ".backend")):
            for f in files:
                with open(os.path.join(dirpath, f), errors="replace") as fh:
                    out.append(fh.read())
        return "\n".join(out)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def base_config(**extra) -> dict:
    return {"incus": {"socket": SOCKET, "project": "default", "storagePool": POOL, "network": BRIDGE}, **extra}


def demo_group(count: int = 3, name: str = "demo-cp", cluster: str = "itdemo", role: str = "control-plane") -> dict:
    # Not "demo": the dev stack selects cluster demo, and tests must not feed its balancer.
    return {
        "name": name, "count": count,
        "instance": {"image": "cplb/demo-apiserver", "limits": {"memory": "64MiB"}},
        "labels": {"user.cluster-name": cluster, "user.cluster-role": role},
    }


@contextmanager
def pulumi_stack(values: dict, prefix: str = "it", leftovers=None):
    """A fresh stack; destroyed (and checked empty) afterwards even when the test fails. `leftovers(name)` deletes
    what a failed destroy left (default: instances `<name>-*` on this machine's Incus)."""
    from tests import leftovers as killed_runs

    project = ProjectCopy()
    name = unique_stack(prefix)
    killed_runs.register(name, project.dir)  # a killed run's next run removes what this stack left
    stack = project.stack(name, values)
    try:
        yield project, name, stack
    finally:
        try:
            stack.destroy(on_output=lambda _: None)
        finally:
            if leftovers:
                leftovers(name)
            for inst in instances_with_prefix(name):  # never leave instances behind a failed test
                incus().delete_instance(inst)
            for volume in volumes_with_prefix(name):  # nor their state volumes
                delete_volume(volume)
            project.cleanup()
            killed_runs.unregister(name)


def launch_external(name: str, labels: dict, image: str = "cplb/demo-apiserver", network: str = BRIDGE) -> str:
    """An instance made outside the stack (as cluster-api would make a control-plane node). Returns its IPv4."""
    client = incus()
    client.call("POST", "instances", json={
        "name": name, "source": {"type": "image", "alias": image}, "config": labels,
        "devices": {"root": {"type": "disk", "path": "/", "pool": POOL},
                    "eth0": {"type": "nic", "name": "eth0", "network": network}},
        "start": True})
    from providers.incus_client import addresses_of

    inst = client.wait_for_address(name, timeout=30)
    return addresses_of(inst)["inet"][0]


def set_label(name: str, key: str, value, client=None) -> None:
    """Set (or, with None, remove) one config key of an instance, as an operator would (on this machine's Incus
    unless `client` says another)."""
    client = client or incus()
    current, etag = client.etag_get(f"instances/{name}")
    config = dict(current["config"])
    if value is None:
        config.pop(key, None)
    else:
        config[key] = value
    body = {k: current[k] for k in ("architecture", "devices", "profiles", "ephemeral", "description")}
    body["config"] = config
    client.call("PUT", f"instances/{name}", json=body, headers={"If-Match": etag})


class Load:
    """An HTTP client on new connections, in a thread, for the length of a `with` block: counts answers by body and
    failures. It runs until the block ends (and at least `min_requests`); if it ends first (`max_seconds`, or
    `max_requests` when given), the block's end raises, since the figures would not cover what the block did (a
    faster machine once made 50,000 requests before a rollout's last member came in)."""

    def __init__(self, endpoint: str, min_requests: int = 2000, max_requests: int | None = None,
                 max_seconds: float = 300, retries: int = 0):
        import collections
        import threading

        self.endpoint, self.min_requests, self.max_requests, self.max_seconds = endpoint, min_requests, max_requests, max_seconds
        self.answers = collections.Counter()
        self.failures: list[str] = []
        self.retries = retries  # client-side retries of a failed request (as a Kubernetes client does)
        self.retried = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import http.client

        host, port = self.endpoint.rsplit(":", 1)
        start = time.monotonic()
        n = 0
        while (self.max_requests is None or n < self.max_requests) and time.monotonic() - start < self.max_seconds:
            if self.stop.is_set() and n >= self.min_requests:
                break
            n += 1
            for attempt in range(self.retries + 1):
                try:
                    conn = http.client.HTTPConnection(host, int(port), timeout=10)
                    conn.request("GET", "/", headers={"Connection": "close"})
                    resp = conn.getresponse()
                    body = resp.read().decode().strip()
                    conn.close()
                    if resp.status != 200:
                        raise OSError(f"status {resp.status}")
                    self.answers[body] += 1
                    break
                except (OSError, http.client.HTTPException) as exc:
                    if attempt < self.retries:
                        self.retried += 1
                        continue
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    @property
    def total(self) -> int:
        return sum(self.answers.values()) + len(self.failures)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, exc_type, *exc):
        ended_first = not self.thread.is_alive()
        self.stop.set()
        self.thread.join()
        if exc_type is None and ended_first:
            raise AssertionError(f"the load ended ({self.total} requests) before the block it measures: raise "
                                 f"max_seconds ({self.max_seconds}) or max_requests ({self.max_requests})")


def service_down(instance: str, service: str) -> None:
    """Stop a service in one of the project's images and keep it down (see cplb-service)."""
    rc, out, err = incus().exec(instance, ["sh", "-c", f"touch /run/cplb-service.{service}.down; "
                                           f"kill $(pidof nginx haproxy keepalived 2>/dev/null) 2>/dev/null; true"])
    assert rc == 0, err


def service_up(instance: str, service: str) -> None:
    incus().exec(instance, ["rm", "-f", f"/run/cplb-service.{service}.down"])


@contextmanager
def partition(instance: str):
    """Cut an instance off its bridge from the host side, then restore it: its bridge port stops forwarding (STP
    state disabled) while its link stays up, so the instance sees silence, not a dead interface (a true partition:
    VRRP and leader election on both sides keep running)."""
    import subprocess

    veth = incus().get_instance(instance)["config"]["volatile.eth0.host_name"]
    subprocess.run(["bridge", "link", "set", "dev", veth, "state", "0"], check=True)
    try:
        yield veth
    finally:
        subprocess.run(["bridge", "link", "set", "dev", veth, "state", "3"], check=True)


def neighbour_mac(address: str) -> str:
    """The MAC the host sends `address`'s packets to (its neighbour entry), '' when it has none."""
    import subprocess

    out = subprocess.run(["ip", "neigh", "show", address], capture_output=True, text=True).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else ""


def probe_until_back(host: str, port: int, probes: list, interval: float = 0.02, limit: int = 1500) -> None:
    """Append (time, connected) to `probes`, a TCP connection every `interval`, until one is accepted after one
    was not (bounded by `limit` probes): the outage window a client sees, from its first failure to its recovery."""
    failed = False
    for _ in range(limit):
        ok = tcp_alive(host, port, timeout=0.1)
        probes.append((time.monotonic(), ok))
        failed = failed or not ok
        if ok and failed:
            return
        time.sleep(interval)


def clients_reach_only(holder: str, vip: str, port: int = 6443) -> bool:
    """After a split brain healed: the host's neighbour entry for the VIP names the holder's MAC, so no client
    request goes to a node that no longer holds the VIP (its kernel would drop it, or worse, answer it)."""
    # A connection first, so the host has resolved the VIP (the entry is what this request used).
    tcp_alive(vip, port, timeout=2)
    return neighbour_mac(vip) == incus().get_instance(holder)["config"].get("volatile.eth0.hwaddr")


@contextmanager
def local_dns_server():
    """The project's BIND (scripts/dns-server) on a random loopback port, with its TSIG key; stopped afterwards.
    Yields {"server": "127.0.0.1:<port>", "secret": <TSIG secret>, "port": <port>}."""
    import random
    import subprocess

    directory = tempfile.mkdtemp(prefix="cplb-dns-")
    port = random.randrange(20000, 30000)
    env = {**os.environ, "DNS_DIR": directory, "DNS_PORT": str(port)}
    script = os.path.join(ROOT, "scripts", "dns-server")
    subprocess.run([script, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        secret = subprocess.run([script, "key"], env=env, check=True, capture_output=True, text=True).stdout.strip()
        yield {"server": f"127.0.0.1:{port}", "secret": secret, "port": port}
    finally:
        subprocess.run([script, "stop"], env=env, check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(directory, ignore_errors=True)


def up_in_thread(stack) -> tuple[threading.Thread, dict]:
    """`up` in the background (a drain makes it wait); the box gets its result or error, and how long it took."""
    box: dict = {}

    def run():
        t0 = time.monotonic()
        try:
            box["result"] = stack.up(on_output=lambda _: None)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc
        box["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def process_users(instance: str, process: str) -> list[str]:
    """The user of each `process` process in the instance (uid numbers, from /proc: busybox ps has no user column
    for every build), master first."""
    rc, out, err = incus().exec(instance, ["sh", "-c", f"for p in $(pidof {process}); do "
                                          "awk '/^Uid:/ {print $2}' /proc/$p/status; done"])
    assert rc == 0, err
    return out.split()
