import fcntl
import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# No test writes into the working tree (a test once removed stacks/Pulumi.oci.yaml, and it was committed): what
# `git status` shows must be the same after the run as before it. Tests write into copies of the program instead.
def _working_tree() -> set[str]:
    import subprocess

    r = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=all"], capture_output=True,
                       text=True)
    return set(r.stdout.splitlines()) if r.returncode == 0 else set()


def pytest_configure(config):
    # A directory of this run's own, made before the workers start (they inherit the environment): the lock files of
    # `alone` tests below, and what must be undone once the last test has ended.
    if not hasattr(config, "workerinput") and "CPLB_TEST_RUN_DIR" not in os.environ:
        os.environ["CPLB_TEST_RUN_DIR"] = tempfile.mkdtemp(prefix="cplb-tests-")
        config._cplb_run_dir = os.environ["CPLB_TEST_RUN_DIR"]


def pytest_sessionstart(session):
    session.config._cplb_tree = _working_tree()
    if not hasattr(session.config, "workerinput") and _uses_incus(session.config):
        from tests import leftovers

        leftovers.sweep()  # what killed runs left, before any worker starts


def _uses_incus(config) -> bool:
    """Anything beyond tests/unit was asked for (unit tests run without incusd)."""
    args = [a for a in config.args if not a.startswith("-")] or ["tests"]
    return any("unit" not in os.path.relpath(os.path.abspath(a), ROOT).split(os.sep) for a in args)


def _end_of_run(config) -> None:
    """What only the end of the whole run may do: take OVN down (scripts/ovn-down restarts incusd)."""
    import shutil
    import subprocess

    directory = getattr(config, "_cplb_run_dir", None)
    if not directory:
        return
    if os.path.exists(os.path.join(directory, "ovn-up")):
        subprocess.run([os.path.join(ROOT, "scripts", "ovn-down")], check=False)
    shutil.rmtree(directory, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_cplb_tree", None)
    if hasattr(session.config, "workerinput"):
        return
    _end_of_run(session.config)
    if before is None:
        return
    changed = _working_tree() ^ before
    if changed:
        print("\nthe tests changed the working tree (git status --porcelain, before ^ after):\n  "
              + "\n  ".join(sorted(changed)))
        session.exitstatus = 1


# --- parallel runs (pytest-xdist, `--dist loadgroup`: scripts/run-tests) -------------------------------------------
# A module is one unit of work: its tests run in order on one worker, so a fixture booted once per module (a real
# control plane) is booted once. Modules that share something global go in one group, on one worker, one after the
# other: the OVN networks that scripts/ovn-up makes and scripts/ovn-down removes.
GROUPS = {
    "integration/test_ovn_oci_external.py": "ovn",
    "integration/test_control_plane_ovn.py": "ovn",
    "integration/test_migration.py": "ovn",
}
# How long each group ran one after the other (seconds; `make test-times`, 2026-12-04): the longest start first, so
# that no worker is left with a long module at the end while the others idle. Groups not listed come after.
EXPECTED_SECONDS = {
    "integration/test_control_plane.py": 365, "ovn": 268, "integration/test_rollout.py": 242,
    "integration/test_etcd_ca.py": 187, "integration/test_watch.py": 153, "integration/test_lxc.py": 129,
    "integration/test_incus7.py": 128, "integration/test_dns.py": 87, "reliability/test_invalid_configs.py": 80,
    "integration/test_kube_vip.py": 63, "integration/test_workflow.py": 61, "integration/test_model.py": 56,
    "reliability/test_remote_incus.py": 46, "reliability/test_out_of_band.py": 43, "integration/test_make_up.py": 37,
    "integration/test_keepalived.py": 35, "integration/test_instances.py": 28, "reliability/test_incusd_down.py": 19,
    "reliability/test_hostile_preview.py": 16, "unit/test_reconcile.py": 15,
}


def group_of(module: str, test: str) -> str:
    """The parallel group of a test (`module`: its file under tests/, `integration/test_watch.py`; `test`: the test's
    name, with its parameters)."""
    if module == "integration/test_watch.py" and "[ovn]" in test:
        return "ovn"
    return GROUPS.get(module, module)


def _group(item) -> str:
    if item.get_closest_marker("alone") is not None:
        return ALONE
    path = item.nodeid.split("::", 1)[0]
    return group_of(path.split("tests/", 1)[-1], item.name)


# The tests that restart incusd run first, while no other test has begun: a module's fixtures hold instances, event
# streams and background loops (the watch) between its tests, which an incusd restart in the middle of the run cut
# (the first parallel runs failed so: another module's Incus calls refused, incusd slow to stop).
ALONE = "alone"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    # On an xdist worker `dist` reads "no" (xdist resets it there) and `loadgroup` says how the run distributes: the
    # group markers must be added there, before xdist's own hook turns them into `@group` node ids (checking `dist`
    # alone added none, and each test went to any worker: one module's fixture was booted on three workers).
    if config.getoption("loadgroup", False) or config.getoption("dist", "no") == "loadgroup":
        order = {id(item): n for n, item in enumerate(items)}
        items.sort(key=lambda item: (_group(item) != ALONE, -EXPECTED_SECONDS.get(_group(item), 0), _group(item),
                                     order[id(item)]))
        for item in items:
            item.add_marker(pytest.mark.xdist_group(_group(item)))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    # After xdist's own hook has turned the group markers into `@group` node ids: a worker whose items carry none
    # would distribute each test on its own (pytest-dev/pytest-xdist#1386), booting one module's fixture on every
    # worker. Refuse to run so rather than fail in a hundred confusing ways.
    if session.config.getoption("loadgroup", False) and session.items and \
            not any("@" in item.nodeid for item in session.items):
        raise pytest.UsageError("pytest-xdist did not apply the test groups (no `@group` node id): this pytest and "
                                "pytest-xdist do not work together for --dist loadgroup; see requirements.txt")


def _alone_done_file() -> str:
    return os.path.join(os.environ["CPLB_TEST_RUN_DIR"], "alone-done")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    # Controller: a run with no `alone` test (say, `-k lxc`) has nothing to wait for.
    if not any(i.endswith(f"@{ALONE}") for i in ids):
        open(_alone_done_file(), "a").close()


def _wait_for_the_alone_tests() -> None:
    import time

    # The alone group is the first work unit (scripts/run-tests keeps the sorted order), so it starts at once; a
    # crashed or misscheduled worker must not hang the run: the tests then just go on.
    deadline = time.monotonic() + 600
    while not os.path.exists(_alone_done_file()) and time.monotonic() < deadline:
        time.sleep(0.2)


# A test marked `alone` restarts incusd: while it runs, no other test runs (each would see its Incus calls refused).
# Every test holds a shared lock for its whole protocol (fixtures' set-up and teardown included); an `alone` test
# takes it exclusively. The gate makes the exclusive one first in line: no test starts while it waits.
class _IncusdTurns:
    def __init__(self, directory: str):
        self.gate = open(os.path.join(directory, "gate"), "a+")
        self.room = open(os.path.join(directory, "room"), "a+")

    def enter(self, alone: bool) -> None:
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        fcntl.flock(self.room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(self.gate, fcntl.LOCK_UN)

    def leave(self) -> None:
        fcntl.flock(self.room, fcntl.LOCK_UN)
        fcntl.flock(self.gate, fcntl.LOCK_UN)


def _turns(config):
    if not hasattr(config, "workerinput"):
        return None  # one process: nothing runs beside a test
    if not hasattr(config, "_cplb_turns"):
        config._cplb_turns = _IncusdTurns(os.environ["CPLB_TEST_RUN_DIR"])
    return config._cplb_turns


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    turns = _turns(item.config)
    if turns is None:
        yield
        return
    alone = item.get_closest_marker("alone") is not None
    if not alone:
        _wait_for_the_alone_tests()
    turns.enter(alone=alone)
    try:
        yield
    finally:
        turns.leave()
        if alone and (nextitem is None or nextitem.get_closest_marker("alone") is None):
            open(_alone_done_file(), "a").close()
