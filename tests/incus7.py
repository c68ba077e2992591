"""The nested Incus 7 servers of scripts/incus7-up, for tests: bring them up, reach them over HTTPS, and the stack
config that targets them (the client key set as a Pulumi secret, never in the stack file in plain text)."""

from __future__ import annotations

import json
import os
import subprocess

from tests.helpers import ROOT

ENV_FILE = os.path.join(ROOT, ".state", "incus7", "env.json")


def up(cluster: bool = False) -> dict:
    """Run scripts/incus7-up (idempotent) and return what it wrote, with the PEMs read in."""
    run = subprocess.run([os.path.join(ROOT, "scripts", "incus7-up"), *(["--cluster"] if cluster else [])],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert run.returncode == 0, f"scripts/incus7-up failed:\n{run.stdout[-3000:]}"
    print(f"\n{run.stdout}")  # the set-up times, for docs/benchmarks.md
    with open(ENV_FILE) as f:
        env = json.load(f)
    for key in ("clientCert", "clientKey", "serverCert"):
        with open(env[f"{key}File"]) as f:
            env[key] = f.read()
    return env


def connection(env: dict, server: int = 0):
    from providers.incus_client import Connection

    return Connection(remote=env["servers"][server]["url"], client_cert=env["clientCert"],
                      client_key=env["clientKey"], server_cert=env["serverCert"])


def client(env: dict, server: int = 0):
    """A client of one nested server (in a cluster, any member answers for the whole cluster)."""
    from providers.incus_client import client_for

    return client_for(connection(env, server))


def incus_config(env: dict, server: int = 0) -> dict:
    """`cplb:incus` for a stack on the nested server(s): HTTPS, the pinned server certificate, instances on the
    macvlan network that puts them on the host's bridge. The key is set apart, as a secret (set_client_key)."""
    return {"remote": env["servers"][server]["url"], "clientCert": env["clientCert"],
            "serverCert": env["serverCert"], "clientKey": "set-below-as-a-secret", "project": "default",
            "storagePool": "default", "network": env["network"], "subnet": env["subnet"]}


def set_client_key(stack, env: dict) -> None:
    from pulumi.automation import ConfigValue

    stack.set_config("cplb:incus.clientKey", ConfigValue(env["clientKey"], secret=True), path=True)


def instances(env: dict, prefix: str) -> dict[str, dict]:
    return {i["name"]: i for i in client(env).list_instances() if i["name"].startswith(prefix + "-")}


def delete_leftovers(env: dict, prefix: str) -> None:
    """What a failed destroy left on the nested servers; nothing to do once scripts/incus7-down removed them."""
    from providers.incus_client import IncusError

    try:
        c = client(env)
        for name in instances(env, prefix):
            c.delete_instance(name)
    except IncusError:
        if os.path.exists(ENV_FILE):  # the servers are still meant to be there: a real failure
            raise


def set_label(env: dict, name: str, key: str, value) -> None:
    from tests.helpers import set_label as set_on

    set_on(name, key, value, client=client(env))


def vip_holders(env: dict, names, vip: str, server: int = 0) -> list[str]:
    """Which of `names` have `vip` on eth0, as the nested server `server` reports them."""
    from tests.helpers import eth0_addresses

    c = client(env, server)
    return sorted(n for n in names if vip in eth0_addresses(c.get_instance(n) or {}))


def unless_electing(read):
    """`read()`, or None while the cluster elects a new database leader (Incus answers 503 until it has one)."""
    from providers.incus_client import IncusError

    try:
        return read()
    except IncusError as exc:
        if "answered 503" in str(exc) and "leader" in str(exc):
            return None
        raise


def database_leader(env: dict, server: int = 0) -> str:
    """The member holding the cluster database's leader role (its loss stalls the API until another is elected)."""
    members = client(env, server).call("GET", "cluster/members", params={"recursion": 1}) or []
    return next((m["server_name"] for m in members if "database-leader" in (m.get("roles") or [])), "")


def wait_member_online(env: dict, member: str, timeout: float = 120) -> None:
    """Until the cluster (asked through another member) sees `member` online again."""
    import time

    other = next(i for i, s in enumerate(env["servers"]) if s["name"] != member)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client(env, other).call("GET", f"cluster/members/{member}").get("status") == "Online":
                return
        except Exception:  # noqa: BLE001 - not answering yet
            pass
        time.sleep(1)
    raise TimeoutError(f"cluster member {member} is not online after {timeout:.0f} s")


def statuses(env: dict, names, server: int = 0) -> list[str]:
    """Each instance's status as member `server` reports it; "Unknown" while the cluster cannot tell yet (a member
    that just came back answers 500 "Missing event connection" for a few seconds)."""
    from providers.incus_client import IncusError

    out = []
    for name in names:
        try:
            out.append((client(env, server).get_instance(name) or {}).get("status", "Missing"))
        except IncusError:
            out.append("Unknown")
    return out
