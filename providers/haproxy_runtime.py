"""haproxy's runtime API, reached inside a balancer instance (no socat there: busybox `nc` to the admin socket
the rendered config binds on 127.0.0.1, which only the instance itself can reach).

Used by InstanceFile before it replaces a haproxy.cfg (drain the servers the new config drops, wait for their
connections to end) and by the status outputs (health of every server).
"""

from __future__ import annotations

import re
import shlex
import time

# The port of the runtime API the rendered haproxy.cfg binds on 127.0.0.1 (spec refuses a balanced port on it). Kept
# here, not imported from spec: the provider plugin would load the whole schema (pydantic) for one number.
RUNTIME_PORT = 9999
# The backend a frontend fails open to (templates/haproxy.cfg.j2): the same servers, a connect check only. Its rows
# are not the balancer's health; a drain covers them too.
FAIL_OPEN_SUFFIX = "_open"
_SERVER_LINE = re.compile(r"^\s*server\s+(\S+)\s")
_SECTION = re.compile(r"^(backend|listen|frontend|defaults|global)\s*(\S*)")


def servers_in(config: str) -> set[tuple[str, str]]:
    """(backend, server) pairs of a rendered haproxy.cfg."""
    found, section = set(), None
    for line in config.splitlines():
        head = _SECTION.match(line)
        if head:
            section = head.group(2) if head.group(1) in ("backend", "listen") else None
            continue
        m = _SERVER_LINE.match(line)
        if m and section:
            found.add((section, m.group(1)))
    return found


def command(client, instance: str, cmd: str) -> str:
    """One runtime API command; '' when haproxy is not running."""
    rc, out, _ = client.exec(instance, ["sh", "-c", f"echo {shlex.quote(cmd)} | nc 127.0.0.1 {RUNTIME_PORT}"],
                             timeout=30)
    return out if rc == 0 else ""


def show_stat(client, instance: str, fail_open: bool = False) -> list[dict]:
    """`show stat` as rows (pxname, svname, scur, status, ...), servers only; with `fail_open`, also those of the
    fail-open backends."""
    text = command(client, instance, "show stat")
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines or not lines[0].startswith("# "):
        return []
    header = lines[0][2:].split(",")
    rows = [dict(zip(header, l.split(","))) for l in lines[1:]]
    return [r for r in rows if r.get("svname") not in ("FRONTEND", "BACKEND")
            and (fail_open or not r.get("pxname", "").endswith(FAIL_OPEN_SUFFIX))]


def drain(client, instance: str, servers: set[tuple[str, str]], timeout: float, poll: float = 0.5) -> dict:
    """Put `servers` in drain state (no new connections) and wait until their current sessions are 0 or
    `timeout` passes. Returns what happened, for the resource's outputs."""
    started = time.monotonic()
    live = {(r["pxname"], r["svname"]) for r in show_stat(client, instance, fail_open=True)}
    targets = sorted(servers & live)
    for backend, server in targets:
        command(client, instance, f"set server {backend}/{server} state drain")
    open_sessions = 0
    while targets:
        rows = {(r["pxname"], r["svname"]): r for r in show_stat(client, instance, fail_open=True)}
        open_sessions = sum(int(rows[t].get("scur") or 0) for t in targets if t in rows)
        if open_sessions == 0 or time.monotonic() - started >= timeout:
            break
        time.sleep(poll)
    return {
        "servers": [f"{b}/{s}" for b, s in targets],
        "waitedSeconds": round(time.monotonic() - started, 2),
        "openAtEnd": open_sessions,
        "timedOut": bool(targets) and open_sessions > 0,
    }
