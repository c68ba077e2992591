"""`make watch` (scripts/watch, reconcile.py) against real Incus events, real stacks and real balancers: instances
launched, stopped and relabelled by hand are followed without anyone running `up`, for `lxc`, `ovn` and
`keepalived`. And the loop itself: a burst of events, incusd restarting, SIGTERM during an `up`.
(`dns` runs through the same loop in tests/integration/test_dns.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from tests.helpers import (
    fresh_router_id, fresh_vip,
    ROOT, base_config, demo_group, http_get, incus, launch_external, pulumi_stack, set_label, wait_for,
)
from tests.integration.test_keepalived import config as keepalived_config
from tests.integration.test_ovn_oci_external import OVN_NETWORK, listen_address, ovn  # noqa: F401

pytestmark = pytest.mark.integration
DISABLED = "user.cplb.disabled"


def quiet(_):
    pass


class Watch:
    """scripts/watch for one stack, as a process; its log in a file."""

    def __init__(self, project, name: str, *extra: str):
        self.log_path = os.path.join(project.dir, "watch.log")
        self.proc = subprocess.Popen(
            [os.path.join(ROOT, ".venv", "bin", "python"), os.path.join(ROOT, "scripts", "watch"), "--stack", name,
             "--work-dir", project.dir, "--debounce", "0.5", "--interval", "1", "--max-seconds", "900", *extra],
            env={**os.environ, **project.env}, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)
        self.project = project
        assert wait_for(lambda: "watching stack" in self.text(), 60), self.text()

    def text(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def reconciles(self) -> list[str]:
        return [line for line in self.text().splitlines() if "] reconcile (" in line]

    def idle(self) -> bool:
        """No reconcile under way (every `reconciling` has its result line)."""
        lines = self.text().splitlines()
        return sum("] reconciling (" in x for x in lines) == sum("] reconcile (" in x for x in lines)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=300)


class Strategy:
    """How a test stack of one strategy is built, and how to read what its balancer serves now."""

    def __init__(self, kind: str, cluster: str):
        self.kind, self.cluster = kind, cluster
        self.labels = {"user.cluster-name": cluster, "user.cluster-role": "control-plane"}
        self.image = "cplb/demo-node" if kind == "keepalived" else "cplb/demo-apiserver"
        self.network = OVN_NETWORK if kind == "ovn" else None
        self.listen = listen_address() if kind == "ovn" else None
        self.vip = fresh_vip() if kind == "keepalived" else None

    def values(self) -> dict:
        if self.kind == "keepalived":
            return keepalived_config(self.cluster, self.vip, fresh_router_id())
        group = demo_group(2, name="cp", cluster=self.cluster)
        lb = {"name": "api", "cluster": self.cluster, "type": self.kind,
              "healthCheck": {"mode": "tcp", "intervalSeconds": 1, "rise": 1, "fall": 2}}
        if self.kind == "ovn":
            group["instance"]["network"] = OVN_NETWORK
            lb["ovn"] = {"networkName": OVN_NETWORK, "listenAddress": self.listen}
        return base_config(instanceGroups=[group], loadBalancers=[lb])

    def group_members(self, name: str) -> list[str]:
        count = 3 if self.kind == "keepalived" else 2
        return [f"{name}-cp-{n}" for n in range(1, count + 1)]

    def served(self, name: str, instance: str) -> bool:
        """The balancer's config names `instance` now (what `up` writes; health checks act sooner)."""
        client = incus()
        if self.kind == "ovn":
            lb = client.call("GET", f"networks/{OVN_NETWORK}/load-balancers/{self.listen}")
            inst = client.get_instance(instance)
            network = ((inst or {}).get("state") or {}).get("network") or {}  # none while stopped
            address = next((a["address"] for a in network.get("eth0", {}).get("addresses", [])
                            if a["family"] == "inet"), None)
            return any(b.get("target_address") == address for b in lb.get("backends") or []) if address else \
                any(b.get("name") == instance for b in lb.get("backends") or [])
        holder = f"{name}-api-haproxy-1" if self.kind == "lxc" else self.group_members(name)[0]
        rc, out, _ = client.exec(holder, ["cat", "/etc/haproxy/haproxy.cfg"])
        return rc == 0 and f"server {instance} " in out

    def answers_from(self, name: str, up_result, instance: str) -> bool:
        endpoint = up_result.outputs["loadBalancers"].value["api"]["endpoint"]
        host, port = endpoint.rsplit(":", 1)
        return instance in {http_get(host, int(port), timeout=2) for _ in range(12)}


def follows_without_up(kind: str, request):
    if kind == "ovn":
        request.getfixturevalue("ovn")
    s = Strategy(kind, f"w{random.randrange(16**5):05x}")
    with pulumi_stack(s.values(), prefix="wa") as (project, name, stack):
        up = stack.up(on_output=quiet)
        outside = f"{name}-ext"
        watch = Watch(project, name)
        try:
            # Launched by hand with the cluster's labels, as an outside tool would: served, no `up` run by anyone.
            t0 = time.monotonic()
            launch_external(outside, s.labels, image=s.image, network=s.network or "cplbbr0")
            assert wait_for(lambda: s.served(name, outside), 90, 0.2), watch.text()
            print(f"\n{kind}: a launched instance is in the config {time.monotonic() - t0:.1f}s after the launch")
            assert wait_for(lambda: s.answers_from(name, up, outside), 30), "no answer from the new instance"
            # Stopped by hand: out of the config.
            incus().set_state(outside, "stop", force=True)
            t0 = time.monotonic()
            assert wait_for(lambda: not s.served(name, outside), 60, 0.2), watch.text()
            print(f"{kind}: a stopped instance is out of the config {time.monotonic() - t0:.1f}s after the stop")
            incus().set_state(outside, "start")
            assert wait_for(lambda: s.served(name, outside), 90, 0.2), watch.text()
            # Drained by the label, on the outside instance and on a stack-managed one.
            managed = s.group_members(name)[-1]
            for instance in (outside, managed):
                set_label(instance, DISABLED, "true")
                assert wait_for(lambda i=instance: not s.served(name, i), 60, 0.2), watch.text()
            assert wait_for(watch.idle, 120), watch.text()
            assert incus().get_instance(managed)["config"].get(DISABLED) == "true", "the reconcile removed the label"
        finally:
            assert watch.stop() == 0, watch.text()
        # A later `make up` keeps the operator's label, and the drain.
        stack.up(on_output=quiet)
        assert incus().get_instance(managed)["config"].get(DISABLED) == "true", "`up` removed the label"
        assert not s.served(name, managed) and s.served(name, s.group_members(name)[0])
        incus().delete_instance(outside)
        return watch


@pytest.mark.parametrize("kind", ["lxc", "ovn", "keepalived"])
def test_the_watch_follows_instances_launched_stopped_and_drained_by_hand(kind, request):
    follows_without_up(kind, request)


def test_a_balancer_added_while_the_watch_runs_is_followed():
    """A second balancer (another cluster, selecting by its labels) added to the stack file and brought up by a
    person while the watch runs: an instance launched by hand with that cluster's labels is in the new balancer's
    config without restarting the watch (the watch reads the stack's config again when its file or state changes)."""
    first = Strategy("lxc", f"w{random.randrange(16**5):05x}")
    second = f"w{random.randrange(16**5):05x}"
    with pulumi_stack(first.values(), prefix="wf") as (project, name, stack):
        stack.up(on_output=quiet)
        watch = Watch(project, name)
        outside = f"{name}-ext"
        try:
            values = first.values()
            values["loadBalancers"].append({"name": "api2", "cluster": second, "type": "lxc",
                                            "healthCheck": {"mode": "tcp", "intervalSeconds": 1, "rise": 1,
                                                            "fall": 2}})
            values["instanceGroups"].append(demo_group(1, name="cp2", cluster=second))
            project.write_stack_config(name, values)
            stack.up(on_output=quiet)  # as `make up` would, beside the watch
            assert wait_for(lambda: "following 2 selector(s)" in watch.text(), 60), watch.text()
            assert wait_for(watch.idle, 120), watch.text()
            launch_external(outside, {"user.cluster-name": second, "user.cluster-role": "control-plane"})

            def served() -> bool:
                rc, out, _ = incus().exec(f"{name}-api2-haproxy-1", ["cat", "/etc/haproxy/haproxy.cfg"])
                return rc == 0 and f"server {outside} " in out

            assert wait_for(served, 90, 0.2), watch.text()
        finally:
            assert watch.stop() == 0, watch.text()
            if incus().get_instance(outside):
                incus().delete_instance(outside)


def test_make_up_and_the_watch_wait_for_each_other():
    """Both orders, on one stack: the watch reconciling when a person runs `make up` (which waits for the lock and
    succeeds), and `make up` running when an event comes (the watch waits, then reconciles). Neither fails, and the
    state is whole: a preview after both has nothing to change."""
    s = Strategy("lxc", f"w{random.randrange(16**5):05x}")
    with pulumi_stack(s.values(), prefix="wc") as (project, name, stack):
        stack.up(on_output=quiet)
        env = {**os.environ, **project.env, "CPLB_PROJECT_DIR": project.dir}
        locks = os.path.join(project.dir, ".backend", ".pulumi", "locks")
        managed = s.group_members(name)[-1]

        def make_up() -> subprocess.Popen:
            return subprocess.Popen([os.path.join(ROOT, "scripts", "stack"), "up", name], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def locked() -> bool:
            return any(files for _, _, files in os.walk(locks))

        watch = Watch(project, name)
        try:
            assert wait_for(watch.idle, 120), watch.text()
            # 1. The watch reconciles (a drain by label), then `make up` starts: it waits, then succeeds.
            set_label(managed, DISABLED, "true")
            assert wait_for(lambda: not watch.idle() and locked(), 30, 0.05), watch.text()
            person = make_up()
            out, _ = person.communicate(timeout=900)
            assert person.returncode == 0, out[-3000:]
            assert "locked by pid" in out, out[-3000:]  # it did wait for the watch's lock
            assert wait_for(watch.idle, 120) and not s.served(name, managed), watch.text()
            # 2. `make up` holds the lock, then an event comes: the watch waits for it, then reconciles.
            person = make_up()
            assert wait_for(locked, 60, 0.05), "make up never took the lock"
            set_label(managed, DISABLED, None)
            out, _ = person.communicate(timeout=900)
            assert person.returncode == 0, out[-3000:]
            assert wait_for(lambda: s.served(name, managed), 120, 0.2), watch.text()
            assert wait_for(watch.idle, 120), watch.text()
            assert "waits: the stack is locked by another run" in watch.text(), watch.text()
            assert not [line for line in watch.reconciles() if "failed" in line], watch.text()
        finally:
            assert watch.stop() == 0, watch.text()
        preview = stack.preview(on_output=quiet)
        assert set(preview.change_summary) <= {"same"}, preview.change_summary


@pytest.mark.alone  # kills incusd
def test_the_loop_coalesces_reconnects_and_ends_after_its_up():
    """A burst of 10 instance events within 2 s: at most 2 `up` runs. incusd killed and started again: the loop
    reconnects and the next change is reconciled. SIGTERM during an `up`: the `up` finishes, no lock is left."""
    s = Strategy("lxc", f"w{random.randrange(16**5):05x}")
    with pulumi_stack(s.values(), prefix="wl") as (project, name, stack):
        stack.up(on_output=quiet)
        outside = f"{name}-ext"
        launch_external(outside, s.labels)
        watch = Watch(project, name)
        try:
            assert wait_for(lambda: s.served(name, outside), 90, 0.2), watch.text()
            assert wait_for(watch.idle, 120)
            before = len(watch.reconciles())
            for n in range(10):  # relabelled 10 times within 2 s
                set_label(outside, "user.burst", str(n))
                time.sleep(0.15)
            time.sleep(3)
            assert wait_for(watch.idle, 120)
            burst = len(watch.reconciles()) - before
            print(f"\nwatch: 10 events within 2 s -> {burst} up(s)")
            assert 1 <= burst <= 2, watch.text()

            # incusd goes away and comes back (instances keep running): the loop reconnects.
            subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh && restart_incusd"], check=True,
                           stdout=subprocess.DEVNULL)
            assert wait_for(lambda: "reconnected to Incus" in watch.text(), 90), watch.text()
            assert wait_for(watch.idle, 120)
            set_label(outside, DISABLED, "true")
            assert wait_for(lambda: not s.served(name, outside), 60, 0.2), watch.text()
            assert wait_for(watch.idle, 120)

            # SIGTERM while an `up` runs: it finishes, then the loop ends.
            count = len(watch.reconciles())
            set_label(outside, DISABLED, None)
            assert wait_for(lambda: not watch.idle(), 30, 0.05), watch.text()
            watch.proc.send_signal(signal.SIGTERM)
            assert watch.proc.wait(timeout=300) == 0
            assert len(watch.reconciles()) == count + 1 and "failed" not in watch.reconciles()[-1], watch.text()
            assert s.served(name, outside), "the `up` under way when SIGTERM came did not finish"
            locks = [f for _, _, files in os.walk(os.path.join(project.dir, ".backend", ".pulumi", "locks"))
                     for f in files]
            assert locks == [], locks
        finally:
            if watch.proc.poll() is None:
                watch.stop()
            incus().delete_instance(outside)


def test_an_outside_rollout_under_the_watch_keeps_the_endpoint_serving():
    """Cluster API's way of replacing control-plane machines, done by hand under `make watch`: for each member, a new
    instance with the cluster's labels is started, and once the balancer serves it the old one is stopped and
    deleted. New connections through the endpoint all the while: none fails, and at the end only the new members
    answer."""
    from tests.helpers import Load

    s = Strategy("lxc", f"w{random.randrange(16**5):05x}")
    # As a balancer in front of kube-apiserver checks it: /readyz, which the demo backend (like kube-apiserver) fails
    # from the moment its graceful stop begins while it still serves (images/demo-apiserver, its shutdown delay).
    lb = {"name": "api", "cluster": s.cluster, "type": "lxc",
          "healthCheck": {"mode": "http", "path": "/readyz", "intervalSeconds": 1, "rise": 1, "fall": 1}}
    with pulumi_stack(base_config(loadBalancers=[lb]), prefix="wr") as (project, name, stack):
        old = [f"{name}-m{n}" for n in (1, 2)]
        new = [f"{name}-n{n}" for n in (1, 2)]
        watch = None
        try:
            for member in old:
                launch_external(member, s.labels)
            up = stack.up(on_output=quiet)
            assert all(s.served(name, m) for m in old)
            host, port = up.outputs["loadBalancers"].value["api"]["endpoint"].rsplit(":", 1)
            watch = Watch(project, name)
            with Load(f"{host}:{port}", min_requests=500) as load:
                for before, after in zip(old, new):
                    launch_external(after, s.labels)
                    assert wait_for(lambda a=after: s.served(name, a) and s.answers_from(name, up, a), 90, 0.2), \
                        watch.text()
                    incus().set_state(before, "stop", timeout=30)
                    incus().delete_instance(before)
                    assert wait_for(lambda b=before: not s.served(name, b), 60, 0.2), watch.text()
            assert wait_for(watch.idle, 120), watch.text()
            print(f"\noutside rollout of 2 members under the watch: {load.total} requests, "
                  f"{len(load.failures)} failed, answers {dict(load.answers)}")
            assert load.failures == [], load.failures[:5]
            assert set(new) <= set(load.answers) <= set(old) | set(new)
            assert {http_get(host, int(port)) for _ in range(12)} == set(new)
        finally:
            if watch is not None:
                assert watch.stop() == 0, watch.text()
            for member in old + new:
                incus().delete_instance(member)
