"""The reconcile loop behind `make watch`: Incus events in, one `up` at a time out.

As the cluster-api-provider-incus controller follows its machines, this loop follows the instances a stack's
balancers select:
- it subscribes to the Incus events API (lifecycle events: created, started, stopped, deleted, updated, which is how
  labels change) with the stack's own connection settings (local socket, or remote HTTPS with the client
  certificate);
- it keeps the events about instances that can change a balancer: owned by the stack, matched by a balancer's
  selector now, or served at the last reconcile (a deleted or relabelled one); for `dns` balancers it also probes the
  proxy nodes, as `up` does, and reconciles when the healthy set differs from the published records;
- after a short debounce it runs `up`; when a stack-owned instance was touched, a refresh of just those instances and
  a second `up` follow, so a stopped one is started again; events that arrive during an `up` are coalesced into at
  most one more;
- one log line per reconcile: the events that caused it, what changed, how long it took.

It reconnects when incusd goes away (and reconciles once when it is back), backs off and retries a failed `up`, and
on SIGTERM ends after the current `up`. `--once` reconciles once and exits.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional
from urllib.parse import unquote

from facts import selector_matches

INSTANCE_ACTIONS = frozenset({
    "instance-created", "instance-started", "instance-stopped", "instance-shutdown", "instance-restarted",
    "instance-deleted", "instance-updated", "instance-renamed",
})
RECONNECTED = ("incus-reconnected", "")
LOCKED = "the stack is currently locked"  # what Pulumi answers a second run on a locked stack


def log(msg: str) -> None:
    print(f"[watch {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def instance_event(event: dict, project: str = "default") -> Optional[tuple[str, str]]:
    """(action, instance name) of an Incus lifecycle event about an instance of `project`, else None."""
    if event.get("type") != "lifecycle" or (event.get("project") or "default") != project:
        return None
    meta = event.get("metadata") or {}
    action = meta.get("action", "")
    match = re.match(r"^/1\.0/instances/([^/?]+)", meta.get("source", ""))
    return (action, unquote(match.group(1))) if action in INSTANCE_ACTIONS and match else None


@dataclass
class Interest:
    """Which instances can change one of the stack's balancers."""

    stack: str
    selectors: list
    known: set = field(default_factory=set)  # served, or owned by the stack, at the last reconcile

    @classmethod
    def of(cls, stack: str, stack_spec) -> "Interest":
        selectors = []
        for lb in stack_spec.load_balancers:
            targets = lb.effective_targets()
            if targets.selector:
                selectors.append(targets.selector)
        return cls(stack, selectors)

    def owned(self, inst: Optional[dict]) -> bool:
        return bool(inst) and (inst.get("config") or {}).get("user.cplb.stack") == self.stack

    def matters(self, name: str, inst: Optional[dict]) -> bool:
        if name in self.known or self.owned(inst):
            return True
        if not inst:
            return False
        labels = {k: v for k, v in (inst.get("config") or {}).items() if k.startswith("user.")}
        return any(selector_matches(s, labels) for s in self.selectors)

    def remember(self, outputs: dict) -> None:
        """Every instance the last `up` served or owns (from its outputs)."""
        known = set()
        for routing in (outputs.get("routing") or {}).values():
            known |= {d["name"] for d in (routing or {}).get("destinations", [])}
        for group in (outputs.get("instanceGroups") or {}).values():
            known |= set(group.get("instances") or [])
        for cluster in (outputs.get("clusters") or {}).values():
            known |= set(cluster.get("controlPlane") or [])
        for lb in (outputs.get("loadBalancers") or {}).values():
            known |= {b["name"] for b in (lb or {}).get("backends") or [] if b.get("name")}
        self.known = known


@dataclass
class Follower:
    """Notices that the stack's config file or state changed (an edit, any `up`, `make up` included) and re-reads
    the balancers and their selectors, so a balancer added while the watch runs is followed without a restart."""

    paths: list  # the stack's config file and its checkpoint in a file backend
    reread: Callable[[], "Interest"]
    last: tuple = ()

    def signature(self) -> tuple:
        import os

        out = []
        for path in self.paths:
            try:
                st = os.stat(path)
                out.append((path, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((path, None, None))
        return tuple(out)

    def start(self) -> None:
        self.last = self.signature()

    def own_write(self) -> None:
        """The watch's own `up` wrote the state: nothing to read again for that (a change of the config file, the
        first path, is still seen at the next poll)."""
        now = self.signature()
        self.last = (self.last[0] if self.last else now[0], *now[1:])

    def poll(self) -> Optional["Interest"]:
        """A new Interest when something changed since the last poll, else None."""
        now = self.signature()
        if now == self.last:
            return None
        self.last = now
        return self.reread()


def stack_files(work_dir: str, stack: str, project: str, backend_url: str) -> list[str]:
    """The stack's config file (in the project's `stackConfigDir`) and, with a file backend, its checkpoint."""
    import glob
    import os

    import yaml

    with open(os.path.join(work_dir, "Pulumi.yaml")) as f:
        config_dir = (yaml.safe_load(f) or {}).get("stackConfigDir") or ""
    paths = [os.path.join(work_dir, config_dir, f"Pulumi.{stack}.yaml")]
    if backend_url.startswith("file://"):
        root = os.path.join(backend_url[len("file://"):], ".pulumi", "stacks")
        paths += glob.glob(os.path.join(root, project, f"{stack}.json")) or [os.path.join(root, f"{stack}.json")]
    return paths


class EventStream(threading.Thread):
    """Incus events into `events` (a queue of (action, name)); reconnects with a backoff when incusd goes away and
    then queues RECONNECTED, so the loop reconciles what it may have missed."""

    def __init__(self, connect: Callable, events: "queue.Queue", stop: threading.Event, project: str):
        super().__init__(daemon=True, name="incus-events")
        self.connect, self.events, self.stop, self.project = connect, events, stop, project
        self.socket = None
        self.connected = threading.Event()

    def run(self):
        from ws4py.client import WebSocketBaseClient

        stream = self

        class Client(WebSocketBaseClient):
            def __init__(self, *args, **kwargs):
                kwargs.setdefault("exclude_headers", []).append("Origin")  # incusd refuses a ws+unix Origin
                super().__init__(*args, **kwargs)

            def handshake_ok(self):
                stream.connected.set()

            def received_message(self, message):
                try:
                    parsed = instance_event(json.loads(message.data.decode()), stream.project)
                except (ValueError, UnicodeDecodeError):
                    return
                if parsed:
                    stream.events.put(parsed)

        backoff, ever = 1.0, False
        while not self.stop.is_set():
            try:
                self.socket = self.connect(Client)
                self.socket.connect()
                if ever:
                    log("reconnected to Incus")
                    self.events.put(RECONNECTED)
                ever, backoff = True, 1.0
                self.socket.run()  # until incusd closes the stream (or close() does)
            except Exception as exc:  # noqa: BLE001 - incusd gone, refused, TLS: all mean "try again later"
                if not self.stop.is_set():
                    log(f"Incus events unavailable ({type(exc).__name__}); retrying in {backoff:.0f}s")
            self.connected.clear()
            if not self.stop.is_set():
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def close(self):
        try:
            if self.socket is not None:
                self.socket.close()
        except Exception:  # noqa: BLE001
            pass


@dataclass
class Loop:
    """The loop itself, with what touches the world passed in (a stack, an Incus client), so it can be driven by a
    real stack in `make watch` and by the tests."""

    stack: object  # pulumi.automation.Stack
    interest: Interest
    get_instance: Callable[[str], Optional[dict]]
    events: "queue.Queue"
    stop: threading.Event
    debounce: float = 1.0
    dns_interval: float = 2.0
    max_backoff: float = 60.0
    outputs: dict = field(default_factory=dict)
    urns: dict = field(default_factory=dict)
    ups: int = 0
    follower: Optional[Follower] = None
    lock_retry: float = 1.0
    # Seconds after a reconcile whose status saw backends not yet healthy before it is read again (None: never; the
    # watch's `up` then reads it at once: CPLB_STATUS_SETTLE_SECONDS=0).
    settle_after: Optional[float] = None
    settle_at: Optional[float] = None
    status_urns: dict = field(default_factory=dict)

    def collect(self, first_wait: float) -> list[tuple[str, str]]:
        """Events until `debounce` seconds pass without one (the first wait is `first_wait`), at most 5 s."""
        got: list[tuple[str, str]] = []
        try:
            got.append(self.events.get(timeout=first_wait))
        except queue.Empty:
            return got
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                got.append(self.events.get(timeout=self.debounce))
            except queue.Empty:
                break
        return got

    def relevant(self, events: list[tuple[str, str]]) -> tuple[list[str], set]:
        """(causes to log, what to refresh first) of the events that can change a balancer: the stack's own
        instances that were touched ("*" for everything, after a reconnect)."""
        causes, refresh = [], set()
        for action, name in dict.fromkeys(events):  # keep order, drop repeats
            if (action, name) == RECONNECTED:
                causes.append("incusd reconnected")
                refresh.add("*")
                continue
            inst = None if action == "instance-deleted" else self.get_instance(name)
            if self.interest.matters(name, inst):
                causes.append(f"{action} {name}")
                if name in self.urns:
                    refresh.add(name)
        return causes, refresh

    def remember_urns(self) -> None:
        """The URN of every instance the stack manages, by instance name (a targeted refresh reads only those)."""
        try:
            resources = self.stack.export_stack().deployment.get("resources") or []
        except Exception:  # noqa: BLE001 - a missing map only makes the refresh wider
            return
        self.urns = {r["outputs"]["name"]: r["urn"] for r in resources
                     if isinstance((r.get("outputs") or {}).get("name"), str) and "ownerStack" in r.get("outputs", {})
                     and "instanceType" in r.get("outputs", {})}
        # Each balancer's status resource (`<balancer>-status`), for the re-read that follows a reconcile.
        statuses = {r["urn"].rsplit("::", 1)[-1]: r["urn"] for r in resources
                    if r.get("type", "").endswith("status:BalancerStatus")}
        self.status_urns = {lb: statuses[f"{lb}-status"] for lb in self.outputs.get("loadBalancers") or {}
                            if f"{lb}-status" in statuses}

    def unsettled(self) -> list[str]:
        """Status resources of the balancers whose last read saw backends not (yet) healthy."""
        out = []
        for lb, values in (self.outputs.get("loadBalancers") or {}).items():
            conditions = ((values or {}).get("status") or {}).get("conditions") or []
            healthy = next((c.get("status") for c in conditions if c.get("type") == "BackendsHealthy"), "True")
            if healthy != "True" and lb in self.status_urns:
                out.append(self.status_urns[lb])
        return sorted(out)

    def settle(self) -> None:
        """The status of the balancers whose backends were not all healthy, read again once their first checks had
        time (their `up` read it at once, so as not to hold the stack), and the publication and outputs with it."""
        urns, self.settle_at = self.unsettled(), None
        if not urns:
            return
        from pulumi import automation as auto

        t0 = time.monotonic()
        try:
            self.stack.refresh(on_output=lambda _: None, target=urns)
            result = self.stack.up(on_output=lambda _: None)
        except auto.errors.CommandError as exc:
            log(f"status re-read of {len(urns)} balancer(s) skipped: {str(exc).strip().splitlines()[-1][:200]}")
            return
        if self.follower:
            self.follower.own_write()
        self.outputs = {k: v.value for k, v in result.outputs.items()}
        self.interest.remember(self.outputs)
        log(f"status re-read of {len(urns)} balancer(s) in {time.monotonic() - t0:.1f}s")

    def dns_drift(self) -> list[str]:
        """dns balancers whose healthy proxy nodes differ from their published records."""
        import health

        out = []
        for name, lb in (self.outputs.get("loadBalancers") or {}).items():
            if (lb or {}).get("type") != "dns":
                continue
            port = int(lb.get("healthPort") or 0)
            probe = health.node_probe(lb.get("healthProbe")) or health.tcp_probe
            now = sorted(a for a in lb.get("addresses") or [] if not port or probe(a, port) == "ok")
            if now != sorted(lb.get("published") or []):
                out.append(f"dns {name}: healthy {now} != published {sorted(lb.get('published') or [])}")
        return out

    def reconcile(self, causes: list[str], refresh: set) -> Optional[bool]:
        """A refresh of the touched stack instances (all of the stack for "*"), then `up`; one log line. False when
        it failed, None when another run held the stack's lock (nothing was done: try again once it is free)."""
        from pulumi import automation as auto

        changed: list[str] = []

        def on_event(event):
            outputs = getattr(event, "res_outputs_event", None)
            meta = outputs.metadata if outputs else None
            if meta and str(getattr(meta.op, "value", meta.op)) not in ("same", "read") \
                    and not meta.type.startswith("pulumi:"):
                changed.append(f"{getattr(meta.op, 'value', meta.op)} {meta.urn.rsplit('::', 1)[-1]}")

        t0 = time.monotonic()
        log(f"reconciling ({'; '.join(causes)})")
        try:
            if refresh and "*" not in refresh:
                # The balancers follow first (a stopped stack instance out of a dns record, say), with an `up` that
                # needs no refresh; then the refresh that lets `up` repair the instance itself (start it again).
                self.stack.up(on_output=lambda _: None, on_event=on_event)
                log(f"balancers followed in {time.monotonic() - t0:.1f}s; refreshing {', '.join(sorted(refresh))}")
            if refresh:
                targets = None if "*" in refresh else sorted(self.urns[n] for n in refresh if n in self.urns)
                self.stack.refresh(on_output=lambda _: None, target=targets)
            result = self.stack.up(on_output=lambda _: None, on_event=on_event)
        except auto.errors.CommandError as exc:
            if LOCKED in str(exc):
                # A person's `make up` (or another run) holds the stack: not a failure; the loop waits for it.
                log(f"reconcile ({'; '.join(causes)}) waits: the stack is locked by another run (make up?)")
                return None
            last = next((line for line in reversed(str(exc).strip().splitlines()) if line.strip()), "")
            log(f"reconcile ({'; '.join(causes)}) failed after {time.monotonic() - t0:.1f}s: {last.strip()[:300]}")
            return False
        self.ups += 1
        if self.follower:
            self.follower.own_write()
        self.outputs = {k: v.value for k, v in result.outputs.items()}
        self.interest.remember(self.outputs)
        self.remember_urns()
        what = "refresh (all) + " if "*" in refresh else (f"refresh ({len(refresh)}) + " if refresh else "")
        log(f"reconcile ({'; '.join(causes)}): {', '.join(changed) or 'no change'}; {what}up in "
            f"{time.monotonic() - t0:.1f}s")
        return True

    def follow(self) -> None:
        """The stack's config or state changed: its balancers and selectors, and what it serves, read again."""
        if not self.follower:
            return
        try:
            interest = self.follower.poll()
            if interest is None:
                return
            self.outputs = {k: v.value for k, v in self.stack.outputs().items()}
        except Exception as exc:  # noqa: BLE001 - a config being written, a CLI that failed: the next poll retries
            self.follower.last = ()
            log(f"could not read the stack's config again: {str(exc).strip().splitlines()[-1][:200]}")
            return
        before = len(self.interest.selectors)
        self.interest = interest
        self.interest.remember(self.outputs)
        self.remember_urns()
        if len(interest.selectors) != before:
            log(f"the stack's config changed: following {len(interest.selectors)} selector(s) (was {before})")

    def run(self, once: bool = False, max_seconds: float = float("inf"), max_ups: int = 10**9) -> int:
        self.outputs = {k: v.value for k, v in self.stack.outputs().items()}
        self.interest.remember(self.outputs)
        self.remember_urns()
        if once:
            return 0 if self.reconcile(["--once"], refresh={"*"}) else 1  # locked: exit 1, as a failure
        deadline = time.monotonic() + max_seconds
        # Catch up first: whatever changed while nothing was watching (as after a reconnect).
        pending: list[str] = ["watch started"]
        pending_refresh: set = {"*"}
        backoff = 0.0
        if self.follower:
            self.follower.start()
        while not self.stop.is_set() and time.monotonic() < deadline and self.ups < max_ups:
            self.follow()
            causes, refresh = self.relevant(self.collect(self.dns_interval if not pending else 0.1))
            causes += self.dns_drift()
            pending += [c for c in causes if c not in pending]
            pending_refresh |= refresh
            if not pending and self.settle_at is not None and time.monotonic() >= self.settle_at \
                    and not self.stop.is_set():
                self.settle()
            if not pending or self.stop.is_set():
                continue
            done = self.reconcile(pending, pending_refresh)
            if done:
                pending, pending_refresh, backoff = [], set(), 0.0
                if self.settle_after is not None and self.unsettled():
                    self.settle_at = time.monotonic() + self.settle_after
            elif done is None:
                self.stop.wait(self.lock_retry)  # the other run's lock: ask again soon, no backoff
            else:
                backoff = min(max(backoff * 2, 2.0), self.max_backoff)
                log(f"retrying in {backoff:.0f}s")
                self.stop.wait(backoff)
        log(f"stopping after {self.ups} up(s)")
        return 0
