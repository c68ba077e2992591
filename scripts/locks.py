"""What a killed `pulumi` leaves in the file backend, and its repair.

`python scripts/locks.py stale LOCKS_DIR STACK` exits 0 when a lock of STACK was taken on this host by a process that
is gone, else 1; `held` prints who holds a live lock of STACK and exits 0, else exits 1 (scripts/stack waits on it). `python scripts/locks.py repair BACKEND_DIR STACK` puts back the stack's checkpoint from the backup
the backend wrote before its last save, when the checkpoint itself is empty or cut (a CLI killed while it saved: seen
once in a SIGKILL test, "failed to load checkpoint: EOF", after which no command worked on the stack). What the lost
save recorded is found again by the next `up`: the objects it made carry their proof of ownership and are adopted.

A Pulumi file-backend lock names the process (`pid`, `hostname`) and when it was taken (`timestamp`). `kill -0`
cannot tell a dead process from a live one of another user (both fail, the second with EPERM), and a PID is reused:
so a lock is stale only when /proc has no such process, or the process there started after the lock was taken (then
it is another one with the same PID).
"""

from __future__ import annotations

import glob
import json
import os
import socket
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere
from providers.values import unix_time  # noqa: E402


def started_at(pid: int) -> Optional[float]:
    """When process `pid` started (Unix time), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def taken_at(lock: dict) -> Optional[float]:
    return unix_time(lock.get("timestamp") or "")


def is_stale(lock: dict, host: str) -> bool:
    """A lock of this host whose process is gone (2 s of slack for clocks read at different moments)."""
    if lock.get("hostname") != host or not str(lock.get("pid") or "").isdigit():
        return False
    started, taken = started_at(int(lock["pid"])), taken_at(lock)
    return started is None or (taken is not None and started > taken + 2)


def locks_of(locks_dir: str, stack: str) -> list[dict]:
    """The stack's lock files as they read now (one being written, or just removed, is passed over)."""
    out = []
    for path in glob.glob(os.path.join(locks_dir, "**", stack, "*.json"), recursive=True):
        try:
            with open(path) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            continue
    return out


def stale(locks_dir: str, stack: str, host: Optional[str] = None) -> bool:
    host = host or socket.gethostname()
    return any(is_stale(lock, host) for lock in locks_of(locks_dir, stack))


def held(locks_dir: str, stack: str, host: Optional[str] = None) -> Optional[str]:
    """Who holds a live lock of `stack` ("pid N on HOST since T"), or None: what a second run waits for."""
    host = host or socket.gethostname()
    for lock in locks_of(locks_dir, stack):
        if not is_stale(lock, host):
            return f"pid {lock.get('pid')} on {lock.get('hostname')} since {lock.get('timestamp')}"
    return None


def _readable(path: str) -> bool:
    try:
        with open(path) as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False


def repair(backend_dir: str, stack: str) -> list[str]:
    """Checkpoints of `stack` that were cut and are put back from their backup; [] when none was."""
    repaired = []
    for path in glob.glob(os.path.join(backend_dir, ".pulumi", "stacks", "**", f"{stack}.json"), recursive=True):
        if not _readable(path) and _readable(path + ".bak"):
            os.replace(path, path + ".cut")  # kept for a look, never read again
            with open(path + ".bak") as src, open(path + ".tmp", "w") as dst:
                dst.write(src.read())
            os.replace(path + ".tmp", path)
            repaired.append(path)
    return repaired


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "stale":
        sys.exit(0 if stale(sys.argv[2], sys.argv[3]) else 1)
    if len(sys.argv) == 4 and sys.argv[1] == "held":
        holder = held(sys.argv[2], sys.argv[3])
        if holder:
            print(holder)
        sys.exit(0 if holder else 1)
    if len(sys.argv) == 4 and sys.argv[1] == "repair":
        for path in repair(sys.argv[2], sys.argv[3]):
            print(f"stack {sys.argv[3]}: its checkpoint was cut by a killed run; put back from the backup taken "
                  f"before that run's last save ({path}.cut kept)")
        sys.exit(0)
    sys.exit("usage: locks.py stale|held LOCKS_DIR STACK | locks.py repair BACKEND_DIR STACK")
