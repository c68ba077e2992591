"""What killed test runs left on this machine's Incus, and its removal at the start of the next run.

A test stack is destroyed when its test ends, even a failing one. A run that is killed (CI's time limit, ^C, a
machine that stops) destroys nothing: its instances, state volumes and OVN balancers stay, and the next run's
selectors find them. That happened: three killed runs' control planes, all of cluster `itk8s`, made the next run's
balancer count 10 backends, and a killed run's VRRP pair kept answering on a VIP that a later module uses.

So every stack the harness makes is written down here before it exists (its name and the process that owns it) and
struck off once it is destroyed. The next run removes what belongs to a written-down stack whose process is gone:
only instances, volumes and balancers whose `user.cplb.stack` names that stack, never anything else. The list is the
machine's (under ~/.local/state), since the leftovers are the machine's, not a checkout's.
"""

from __future__ import annotations

import json
import os
import shutil

REGISTRY = os.path.expanduser(os.environ.get("CPLB_TEST_STACKS", "~/.local/state/incus-cplb-tests/stacks"))
OWNER = "user.cplb.stack"


def _started(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): a PID alone may have been reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def register(name: str, project_dir: str) -> None:
    os.makedirs(REGISTRY, exist_ok=True)
    entry = {"pid": os.getpid(), "started": _started(os.getpid()), "project": project_dir}
    with open(os.path.join(REGISTRY, name), "w") as f:
        json.dump(entry, f)


def unregister(name: str) -> None:
    try:
        os.remove(os.path.join(REGISTRY, name))
    except FileNotFoundError:
        pass


def _abandoned() -> dict[str, dict]:
    """Written-down stacks whose process is gone."""
    if not os.path.isdir(REGISTRY):
        return {}
    found = {}
    for name in os.listdir(REGISTRY):
        try:
            with open(os.path.join(REGISTRY, name)) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            entry = {}
        if entry.get("pid") and _started(entry["pid"]) == entry.get("started"):
            continue  # its run is still going (another checkout's, say)
        found[name] = entry
    return found


def _remove_from(client, stacks: set[str], pools: list[str]) -> list[str]:
    removed = []
    for inst in client.list_instances():
        if inst.get("config", {}).get(OWNER) in stacks:
            client.delete_instance(inst["name"])
            removed.append(inst["name"])
    for pool in pools:
        for volume in client.call("GET", f"storage-pools/{pool}/volumes/custom", params={"recursion": 1}) or []:
            if (volume.get("config") or {}).get(OWNER) in stacks:
                client.call("DELETE", f"storage-pools/{pool}/volumes/custom/{volume['name']}")
                removed.append(f"volume {volume['name']}")
    for network in client.call("GET", "networks", params={"recursion": 1}) or []:
        if network.get("type") != "ovn":
            continue
        for lb in client.call("GET", f"networks/{network['name']}/load-balancers", params={"recursion": 1}) or []:
            if (lb.get("config") or {}).get(OWNER) in stacks:
                client.call("DELETE", f"networks/{network['name']}/load-balancers/{lb['listen_address']}")
                removed.append(f"load balancer {lb['listen_address']}")
    return removed


def sweep() -> None:
    """Remove what abandoned test stacks left, on this machine's Incus and on the nested servers of
    scripts/incus7-up when they are there. Never fails the run: it reports what it could not remove."""
    stacks = _abandoned()
    if not stacks:
        return
    from tests.helpers import POOL, incus

    removed: list[str] = []
    try:
        removed += _remove_from(incus(), set(stacks), [POOL])
    except Exception as exc:  # noqa: BLE001 - reported; the tests then show what is in the way
        print(f"\nleftovers of killed test runs: could not remove them all from this machine's Incus: {exc}")
        return
    from tests import incus7

    if os.path.exists(incus7.ENV_FILE):
        try:
            with open(incus7.ENV_FILE) as f:
                env = json.load(f)
            for key in ("clientCert", "clientKey", "serverCert"):
                with open(env[f"{key}File"]) as f:
                    env[key] = f.read()
            removed += _remove_from(incus7.client(env), set(stacks), ["default"])
        except Exception as exc:  # noqa: BLE001 - the servers may be gone; incus7-up makes them again
            print(f"\nleftovers of killed test runs: the nested Incus servers did not answer ({exc})")
    for name, entry in stacks.items():
        if entry.get("project", "").startswith("/tmp/"):
            shutil.rmtree(entry["project"], ignore_errors=True)
        unregister(name)
    print(f"\nleftovers of {len(stacks)} killed test stack(s) removed: {', '.join(sorted(removed)) or 'nothing left'}")
