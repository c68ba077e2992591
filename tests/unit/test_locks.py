"""scripts/locks.py: a stack lock is cleared only when the process that took it is gone."""

import datetime
import importlib.util
import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("cplb_locks", os.path.join(ROOT, "scripts", "locks.py"))
locks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(locks)

HOST = socket.gethostname()


def go_time(t: float) -> str:
    """As Go's time.Time marshals: RFC 3339 with nanoseconds."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")


def lock(pid: int, taken: float, host: str = HOST) -> dict:
    return {"pid": pid, "username": "root", "hostname": host, "timestamp": go_time(taken)}


def gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_whose_process_is_gone_is_stale():
    assert locks.is_stale(lock(gone_pid(), locks.started_at(os.getpid()) + 1), HOST)


def test_a_lock_held_by_a_live_process_is_not_stale_even_when_another_user_s():
    # PID 1 is not ours to signal as a non-root user (kill -0 fails with EPERM): it is alive all the same.
    assert not locks.is_stale(lock(1, locks.started_at(1) + 60), HOST)
    assert not locks.is_stale(lock(os.getpid(), locks.started_at(os.getpid()) + 1), HOST)


def test_a_reused_pid_does_not_keep_a_lock_alive():
    # The process with that PID started after the lock was taken: it is another one.
    me = os.getpid()
    assert locks.is_stale(lock(me, locks.started_at(me) - 3600), HOST)


def test_another_host_s_lock_is_never_ours_to_judge():
    assert not locks.is_stale(lock(gone_pid(), 0, host="elsewhere"), HOST)


def test_the_stack_s_lock_file_is_found_in_the_backend_layout(tmp_path):
    directory = tmp_path / "locks" / "organization" / "incus-cplb" / "dev"
    directory.mkdir(parents=True)
    (directory / "x.json").write_text(json.dumps(lock(gone_pid(), locks.started_at(os.getpid()) + 1)))
    assert locks.stale(str(tmp_path / "locks"), "dev")
    assert not locks.stale(str(tmp_path / "locks"), "prod")


def test_a_checkpoint_cut_by_a_killed_save_is_put_back_from_the_backup(tmp_path):
    stacks = tmp_path / ".pulumi" / "stacks" / "incus-cplb"
    stacks.mkdir(parents=True)
    (stacks / "dev.json").write_text("")  # "failed to load checkpoint: EOF"
    (stacks / "dev.json.bak").write_text('{"version": 3, "checkpoint": {"stack": "dev"}}')
    (stacks / "prod.json").write_text('{"version": 3}')
    (stacks / "prod.json.bak").write_text('{"version": 2}')
    assert locks.repair(str(tmp_path), "dev") == [str(stacks / "dev.json")]
    assert json.loads((stacks / "dev.json").read_text())["checkpoint"]["stack"] == "dev"
    assert (stacks / "dev.json.cut").read_text() == ""
    assert locks.repair(str(tmp_path), "prod") == []  # a readable checkpoint is never touched
    assert json.loads((stacks / "prod.json").read_text()) == {"version": 3}


def test_a_live_lock_is_held_and_names_its_process_a_stale_one_is_not(tmp_path):
    directory = tmp_path / "locks" / "organization" / "incus-cplb" / "dev"
    directory.mkdir(parents=True)
    me = os.getpid()
    live = lock(me, locks.started_at(me) + 1)
    (directory / "live.json").write_text(json.dumps(live))
    assert locks.held(str(tmp_path / "locks"), "dev") == f"pid {me} on {HOST} since {live['timestamp']}"
    assert locks.held(str(tmp_path / "locks"), "prod") is None
    (directory / "live.json").write_text(json.dumps(lock(gone_pid(), locks.started_at(me) + 1)))
    assert locks.held(str(tmp_path / "locks"), "dev") is None  # stale: scripts/stack clears it, never waits on it
