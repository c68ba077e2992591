"""The reconcile loop's decisions (reconcile.py) with a fake stack: which events matter, coalescing, back-off.
The same loop runs against real Incus events and a real stack in tests/integration/test_watch.py."""

import queue
import threading
import time

import spec
from reconcile import RECONNECTED, Interest, Loop, instance_event


def interest() -> Interest:
    s = spec.parse({"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc"}]})
    return Interest.of("dev", s)


def test_instance_events_are_parsed_and_others_ignored():
    e = {"type": "lifecycle", "project": "default",
         "metadata": {"action": "instance-started", "source": "/1.0/instances/cp%2D4?project=default"}}
    assert instance_event(e) == ("instance-started", "cp-4")
    assert instance_event({**e, "project": "other"}) is None
    assert instance_event({**e, "metadata": {"action": "image-created", "source": "/1.0/images/x"}}) is None
    assert instance_event({"type": "logging", "metadata": {}}) is None


def test_what_matters():
    i = interest()
    cp = {"config": {"user.cluster-name": "demo", "user.cluster-role": "control-plane"}}
    assert i.matters("x", cp)
    assert not i.matters("x", {"config": {"user.cluster-name": "other", "user.cluster-role": "control-plane"}})
    assert i.matters("mine", {"config": {"user.cplb.stack": "dev"}})
    # Deleted or relabelled away: it matters when the last reconcile served it.
    assert not i.matters("gone", None)
    i.remember({"routing": {"api": {"destinations": [{"name": "gone"}]}}})
    assert i.matters("gone", None) and i.matters("gone", {"config": {}})


class FakeStack:
    """`up` takes `seconds`; events may arrive meanwhile."""

    def __init__(self, seconds=0.3, fail=0):
        self.seconds, self.fail, self.ups, self.refreshes = seconds, fail, 0, 0

    def outputs(self):
        return {}

    def export_stack(self):
        return type("D", (), {"deployment": {"resources": []}})()

    def refresh(self, **_):
        self.refreshes += 1

    def up(self, **_):
        from pulumi import automation as auto

        time.sleep(self.seconds)
        if self.fail:
            self.fail -= 1
            raise auto.errors.CommandError(type("R", (), {"stdout": "", "stderr": "error: boom", "code": 1,
                                                          "__str__": lambda s: "error: boom"})())
        self.ups += 1
        return type("Result", (), {"outputs": {}})()


def run_loop(stack, feed, seconds=4.0, **kw):
    events, stop = queue.Queue(), threading.Event()
    cp = {"config": {"user.cluster-name": "demo", "user.cluster-role": "control-plane"}}
    loop = Loop(stack, interest(), lambda name: cp, events, stop, debounce=0.3, dns_interval=0.2, **kw)
    t = threading.Thread(target=loop.run, kwargs={"max_seconds": seconds}, daemon=True)
    t.start()
    feed(events)
    t.join(seconds + 5)
    return loop


def test_a_burst_of_events_makes_at_most_two_ups():
    def feed(events):
        time.sleep(1.5)  # after the catch-up reconcile at start
        for n in range(10):
            events.put(("instance-started", f"cp-{n}"))
            time.sleep(0.18)

    stack = FakeStack(seconds=0.5)
    loop = run_loop(stack, feed, seconds=7)
    # One catch-up reconcile at start, then at most 2 for the burst.
    assert 2 <= stack.ups <= 3, stack.ups
    assert loop.ups == stack.ups


def test_a_failed_up_is_retried_and_a_reconnect_refreshes():
    stack = FakeStack(fail=1)
    run_loop(stack, lambda events: (time.sleep(4), events.put(RECONNECTED)), seconds=8)
    # The catch-up at start fails once and is retried; the reconnect reconciles again, with a refresh.
    assert stack.ups == 2 and stack.refreshes >= 2, (stack.ups, stack.refreshes)


class UnsettledStack(FakeStack):
    """A stack whose balancer `api` reports its backends not yet healthy; records what each refresh targeted."""

    STATUS = "urn:pulumi:dev::incus-cplb::cplb:lb:LxcLoadBalancer$pulumi-python:dynamic/status:BalancerStatus::api-status"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.targets = []
        self.healthy = "False"

    def outputs_value(self):
        return {"loadBalancers": {"api": {"status": {"conditions": [
            {"type": "BackendsHealthy", "status": self.healthy}]}}}}

    def outputs(self):
        return {k: type("V", (), {"value": v})() for k, v in self.outputs_value().items()}

    def export_stack(self):
        return type("D", (), {"deployment": {"resources": [
            {"urn": self.STATUS, "type": "pulumi-python:dynamic/status:BalancerStatus"}]}})()

    def refresh(self, target=None, **_):
        self.refreshes += 1
        self.targets.append(target)
        if target:
            self.healthy = "True"  # the status read again sees the first checks done

    def up(self, **kw):
        super().up(**kw)
        return type("Result", (), {"outputs": self.outputs()})()


def test_a_status_read_before_the_first_checks_is_read_again_once_and_only_its_own():
    """The watch's `up` reads status at once; a balancer whose backends were not yet healthy has its status (and
    nothing else) refreshed `settle_after` seconds later, once."""
    stack = UnsettledStack(seconds=0.1)
    loop = run_loop(stack, lambda events: None, seconds=3, settle_after=0.5)
    # The catch-up reconcile refreshes everything (None); then the settle pass targets the status resource alone.
    assert stack.targets[1:] == [[UnsettledStack.STATUS]], stack.targets
    assert loop.settle_at is None and stack.ups == 2


def test_without_settle_after_nothing_is_read_again():
    stack = UnsettledStack(seconds=0.1)
    run_loop(stack, lambda events: None, seconds=2)
    assert stack.targets == [None] and stack.ups == 1


def test_the_follower_reads_again_on_a_config_or_foreign_state_change_not_on_its_own_write(tmp_path):
    """The watch reads the stack's config again when its file or the state changes, but not for the state its own
    `up` wrote (that read would delay the next event's reconcile)."""
    import os

    from reconcile import Follower

    config, state = tmp_path / "Pulumi.dev.yaml", tmp_path / "dev.json"
    config.write_text("a")
    state.write_text("1")
    reads = []
    follower = Follower([str(config), str(state)], lambda: reads.append(1) or "interest")
    follower.start()
    assert follower.poll() is None

    def touch(path, text):
        path.write_text(text)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    touch(state, "22")  # the watch's own `up`
    follower.own_write()
    assert follower.poll() is None and reads == []
    touch(state, "333")  # someone else's `up`
    assert follower.poll() == "interest" and reads == [1]
    touch(config, "bb")  # an edit of the config, then the watch's own `up` before its next poll
    touch(state, "4444")
    follower.own_write()
    assert follower.poll() == "interest" and reads == [1, 1]
