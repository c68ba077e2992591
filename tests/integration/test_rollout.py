"""Every change rolls: image upgrades of a real control plane and of an `lxc` VRRP pair in front of it, one member at a
time, with the data kept and clients served throughout, and an upgrade killed midway that the next `up` finishes.

One stack serves the module (a 3-member control plane with etcd and kube-apiserver, behind an lxc pair on a VIP);
each test builds a new version of an image, as a Debian update or a changed recipe does, and upgrades to it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from bench.failover import Prober, outage
from components.haproxy import MONITOR_PORT
from providers import rollout
from tests.helpers import (
    base_config, build_image_version, incus, pulumi_stack, vip_holders, volumes_with_prefix, wait_for,
)
from tests.k8s import ApiLoad, Kubectl, etcd_members, kubeconfig_ca, readyz_check, real_control_plane
from tests.reliability.interrupted import start_cli_up

pytestmark = pytest.mark.integration
CLUSTER = "itroll"
# A probe's patience. Two 3-member control planes (the dev stack's and this one) keep a 2-core machine busy, and an
# image rebuild saturates it: 3 busy CPU loops alone fail 11% of 200 ms probes against an idle endpoint. A refused
# or reset connection still fails at once; an endpoint that is gone still shows as the gap between answers.
PROBE_TIMEOUT = 1.0
VIP = "198.18.10.40"  # this module's own VIP and router ID: no other module's pair answers for them
ROUTER_ID = 140
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.rollout.cplb.test"},
    "spec": {"group": "rollout.cplb.test", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def quiet(_):
    pass


# The embedded default's advert interval. A rollout's handover does not wait on it (the leaving holder advertises
# priority 0); at 0.02 s the standby once took the VIP for 0.2 s while `up` started on a busy 2-core machine (a
# false failover: 3 adverts missed in 0.07 s), and an in-flight probe failed (2026-12-08).
ADVERT_SECONDS = 0.1


def stack_values(count: int = 3) -> dict:
    return base_config(
        controlPlanes=[real_control_plane("rcp", CLUSTER, count=count)],
        loadBalancers=[{
            "name": "roll-api", "cluster": CLUSTER, "type": "lxc",
            "ports": [{"name": "api", "port": 6443, "targetPort": 6443}], "healthCheck": readyz_check(),
            "lxc": {"replicas": 2, "vip": VIP, "virtualRouterID": ROUTER_ID, "advertIntervalSeconds": ADVERT_SECONDS,
                    "instanceSpec": {"image": "cplb/haproxy", "limits": {"memory": "128MiB"}}},
        }])


@pytest.fixture(scope="module")
def rolling():
    with pulumi_stack(stack_values(), prefix="roll") as (project, name, stack):
        result = stack.up(on_output=quiet)
        kubeconfig = result.outputs["clusters"].value[CLUSTER]["kubeconfig"]
        kube = Kubectl(kubeconfig)
        try:
            kube.ok("apply", "-f", "-", stdin=json.dumps(CRD))
            assert wait_for(lambda: kube.run("get", "widgets").returncode == 0, 30)
            yield project, name, stack, kube, kubeconfig
        finally:
            kube.cleanup()
    # `destroy` leaves nothing: no instance and no state volume.
    assert volumes_with_prefix(name) == [], volumes_with_prefix(name)
    # Back to the images the checkout's recipes make (the tests' variants stay only while something runs them).
    for image in ("control-plane", "haproxy"):
        build_image_version(image)


def members(name: str) -> list[str]:
    return [f"{name}-rcp-{n}" for n in (1, 2, 3)]


def write_data(kube: Kubectl, tag: str) -> None:
    kube.ok("create", "configmap", f"before-{tag}", f"--from-literal=value={tag}")
    widget = {"apiVersion": "rollout.cplb.test/v1", "kind": "Widget",
              "metadata": {"name": f"w-{tag}", "namespace": "default"}, "spec": {"tag": tag}}
    kube.ok("apply", "-f", "-", stdin=json.dumps(widget))


def data_kept(kube: Kubectl, tags: list[str]) -> None:
    for tag in tags:
        assert kube.ok("get", "configmap", f"before-{tag}", "-o", "jsonpath={.data.value}") == tag
        assert kube.ok("get", "widget", f"w-{tag}", "-o", "jsonpath={.spec.tag}") == tag


def console_tail(name: str, lines: int = 40) -> str:
    # The console log file itself: `incus console --show-log` refuses a long one ("message too long").
    run = subprocess.run(["tail", "-n", str(lines), f"/var/log/incus/{name}/console.log"], capture_output=True,
                         text=True)
    return run.stdout or run.stderr


def etcd_state(name: str) -> list[tuple[str, str, bool]]:
    """(member ID, name, learner) of every etcd member, as the first member's etcd reports them."""
    first = incus().get_instance(members(name)[0])
    from providers.incus_client import addresses_of

    found = etcd_members(members(name)[0], addresses_of(first)["inet"][0])
    return sorted((m["ID"], m.get("name", ""), bool(m.get("isLearner"))) for m in found)


def base_images(names: list[str]) -> dict[str, str]:
    return {n: incus().get_instance(n)["config"]["volatile.base_image"] for n in names}


class UpdateLog:
    """When each Instance update began and ended, from the engine's events."""

    def __init__(self):
        self.began: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.ops: list[tuple[str, str]] = []

    def __call__(self, event):
        for attr, box in (("resource_pre_event", self.began), ("res_outputs_event", self.ended)):
            step = getattr(event, attr, None)
            if step is None:
                continue
            resource, op = step.metadata.urn.rsplit("::", 1)[-1], str(step.metadata.op).rsplit(".", 1)[-1].lower()
            if attr == "resource_pre_event" and op not in ("same", "read", "refresh"):
                self.ops.append((resource, op))
            if step.metadata.type == "pulumi-python:dynamic/incus:Instance":
                box.setdefault(resource, time.monotonic())

    def changed(self) -> set[tuple[str, str]]:
        return set(self.ops)

    def one_at_a_time(self, resources: list[str]) -> list[str]:
        """The resources in the order they were updated, asserting that no two updates overlapped."""
        spans = sorted((self.began[r], self.ended[r], r) for r in resources)
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            assert end <= start, f"{a} and {b} were updated at the same time"
        return [r for _, _, r in spans]


class Timeline:
    """Each member's status and image as Incus shows them, every 0.2 s, in a thread (what a failure is set against)."""

    def __init__(self, names: list[str]):
        import threading

        self.names, self.seen, self.t0 = names, [], time.monotonic()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        last: dict = {}
        while not self.stop_event.is_set():
            for n in self.names:
                try:
                    inst = incus().get_instance(n) or {}
                except Exception:  # noqa: BLE001 - a diagnostic only
                    continue
                now = (inst.get("status"), (inst.get("config") or {}).get("volatile.base_image", "")[:6])
                if last.get(n) != now:
                    last[n] = now
                    self.seen.append((round(time.monotonic() - self.t0, 1), n.rsplit("-", 1)[-1], *now))
            time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join(timeout=10)


class HolderLog(Timeline):
    """Which replicas have the VIP on eth0, every 0.1 s, in a thread: (seconds since start, holders) at each change."""

    def __init__(self, prefix: str, vip: str):
        super().__init__([])
        self.prefix, self.vip = prefix, vip

    def _run(self):
        last = None
        while not self.stop_event.is_set():
            try:
                now = [h.rsplit("-", 1)[-1] for h in vip_holders(self.prefix, self.vip)]
            except Exception:  # noqa: BLE001 - a diagnostic only
                now = last
            if now != last:
                last = now
                self.seen.append((round(time.monotonic() - self.t0, 2), now))
            time.sleep(0.1)


def etcd_unchanged(name: str, before: list) -> None:
    after = etcd_state(name)
    assert after == before, (before, after)
    assert len(after) == 3 and all(n for _, n, _ in after) and not any(learner for *_, learner in after)


def test_image_upgrade_of_the_control_plane_rolls_one_member_at_a_time_and_keeps_the_data(rolling):
    project, name, stack, kube, kubeconfig = rolling
    write_data(kube, "upgrade")
    before = etcd_state(name)
    old = base_images(members(name))
    new = build_image_version("control-plane", f"roll-{name}-1")
    assert set(old.values()) != {new}

    # A new version reaches nobody by itself: a plain preview changes nothing.
    plain = stack.preview(on_output=quiet)
    assert plain.change_summary.get("update", 0) == 0 and plain.change_summary.get("replace", 0) == 0, \
        plain.change_summary
    stack.workspace.env_vars["CPLB_UPGRADE"] = "1"
    try:
        preview = stack.preview(on_output=quiet)
        said = " ".join(line for line in preview.stdout.splitlines() if "controlPlanes[0]" in line)
        assert f"rolling {name}-rcp-3, then {name}-rcp-2, then {name}-rcp-1 to image {new[:12]}" in said, \
            [line for line in preview.stdout.splitlines() if "info" in line]
        assert preview.change_summary.get("replace", 0) == 0, preview.change_summary

        log = UpdateLog()
        with ApiLoad(kubeconfig, VIP, 6443) as load:
            stack.up(on_output=quiet, on_event=log)
    finally:
        del stack.workspace.env_vars["CPLB_UPGRADE"]
    print(f"\ncontrol-plane upgrade through the VIP: {load.counts}")
    assert load.counts["failed"] == 0, load.errors
    assert load.counts["ok"] > 100, load.counts
    assert log.one_at_a_time(["rcp-3", "rcp-2", "rcp-1"]) == ["rcp-3", "rcp-2", "rcp-1"]
    # Nothing but the members changed: no replacement, no certificate reissued, no file rewritten.
    assert log.changed() == {("rcp-3", "update"), ("rcp-2", "update"), ("rcp-1", "update")}, log.ops
    assert set(base_images(members(name)).values()) == {new}
    data_kept(kube, ["upgrade"])
    etcd_unchanged(name, before)
    # Once rolled, the stack is stable on the new version.
    assert stack.preview(on_output=quiet).change_summary.get("update", 0) == 0


def first_rebuilt_and_second_going_down(first: str, second: str, image: str) -> bool:
    from providers.incus_client import IncusError

    try:
        going = (incus().get_instance(second) or {}).get("status")
        # None: not readable at this instant (Incus answered not found for it once, mid-stop): look again.
        return base_images([first])[first] == image and going not in (None, "Running")
    except IncusError:
        # An instance read while it starts can fail ("Invalid PID"): not there yet, look again.
        return False


def test_upgrade_killed_after_the_first_member_is_finished_by_the_next_plain_up(rolling):
    project, name, stack, kube, kubeconfig = rolling
    write_data(kube, "killed")
    before = etcd_state(name)
    new = build_image_version("control-plane", f"roll-{name}-2")
    first, second = f"{name}-rcp-3", f"{name}-rcp-2"
    with ApiLoad(kubeconfig, VIP, 6443, max_seconds=400) as load, Timeline(members(name)) as timeline:
        t_start = time.monotonic()
        proc = start_cli_up(project, name, capture=False, env={"CPLB_UPGRADE": "1"})
        try:
            # Killed once the first member is rebuilt and the second one is on its way down.
            assert wait_for(lambda: first_rebuilt_and_second_going_down(first, second, new) or
                            proc.poll() is not None, 300, interval=0.1)
            assert proc.poll() is None, "the upgrade finished before it could be killed"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            proc.wait(timeout=30)
            project.after_a_kill(name, stack)  # the killed CLI left the stack locked (scripts/stack does it too)
        killed_at = base_images(members(name))
        # A plain `up` (no upgrade asked): the group is found on two versions and goes on to the newer one.
        t_resume = time.monotonic()
        resumed = UpdateLog()
        stack.up(on_output=quiet, refresh=True, on_event=resumed)
        t_done = time.monotonic()
    print(f"\nkilled upgrade, then up: images at the kill {sorted(v[:12] for v in killed_at.values())}; load "
          f"{load.counts}; killed {t_kill - t_start:.1f}s after the start, resumed {t_resume - t_start:.1f}s, done "
          f"{t_done - t_start:.1f}s; failures at {[round(t - t_start, 1) for t in load.failed_at]}; members "
          f"(seconds from the load's start) {timeline.seen}; the resumed up changed {resumed.ops}")
    assert killed_at[first] == new and killed_at[f"{name}-rcp-1"] != new, killed_at
    if load.counts["failed"]:
        for member in members(name):
            print(f"--- {member} console (the services' output)\n{console_tail(member)}")
    # The kill and the resumption cost a client-go client nothing. Under the whole suite on 2 cores the server side
    # has closed a few new connections (a reset within 2 s of a member's stop; twice a TLS handshake closed 3.6 s
    # after a rebuilt member came back, 2026-12-07/08, cause not found, docs/upgrades.md known gaps): client-go
    # retries a GET on those after 1 s (ApiLoad `retried`), so they are printed, not failures.
    print(f"GETs retried after a reset or EOF: {[(round(t - t_start, 1), why) for t, why in load.resets]}")
    assert load.counts["failed"] == 0, load.errors
    assert set(base_images(members(name)).values()) == {new}
    data_kept(kube, ["upgrade", "killed"])
    etcd_unchanged(name, before)


def test_a_leaving_holder_finishes_its_connections_through_the_peer_that_took_the_vip(rolling):
    """What a rollout does for the connections open at the VIP's move, seen on one of them: a kept-alive TLS
    connection through the VIP to the holder goes on answering on the same socket after the VIP has moved to the
    peer (which sends its packets on: cplb-takeover), while the old holder drains. Without the takeover its next
    request after the move is reset by the new holder (the second half: the same, after `release`)."""
    import http.client
    import ssl
    import threading

    from providers.incus_client import addresses_of

    _project, name, _stack, _kube, kubeconfig = rolling
    prefix = f"{name}-roll-api-haproxy"
    ctx = ssl.create_default_context(cadata=kubeconfig_ca(kubeconfig))
    ctx.check_hostname = False

    def move_vip(takeover: bool) -> list[str]:
        """Requests on one kept-alive connection while its holder stops; what each got after the move."""
        assert wait_for(lambda: len(vip_holders(prefix, VIP)) == 1, 60)
        holder = vip_holders(prefix, VIP)[0]
        peer = next(r for r in (f"{prefix}-1", f"{prefix}-2") if r != holder)
        address = addresses_of(incus().get_instance(holder))["inet"][0]
        rc, _, err = incus().exec(peer, ["/usr/local/bin/cplb-takeover", "accept" if takeover else "release",
                                         address, "30"])
        assert rc == 0, err
        conn = http.client.HTTPSConnection(VIP, 6443, context=ctx, timeout=3)
        conn.request("GET", "/readyz")
        assert conn.getresponse().read() == b"ok"
        sock = conn.sock
        stopping = threading.Thread(target=incus().set_state, args=(holder, "stop"), kwargs={"timeout": 60})
        stopping.start()
        seen = []
        try:
            assert wait_for(lambda: vip_holders(prefix, VIP) == [peer], 20, 0.05), vip_holders(prefix, VIP)
            for _ in range(5):
                try:
                    conn.request("GET", "/readyz")
                    seen.append(conn.getresponse().read().decode() if conn.sock is sock else "reconnected")
                except (OSError, http.client.HTTPException) as e:
                    seen.append(type(e).__name__)
                    break
                time.sleep(0.1)
        finally:
            conn.close()
            stopping.join(timeout=90)
            incus().exec(peer, ["/usr/local/bin/cplb-takeover", "release", address])
            incus().set_state(holder, "start")
            # Back in the pair: haproxy with a server UP, keepalived running with its check passing.
            health = {"kind": "haproxy", "port": 6443, "vrrp": True, "monitorPort": MONITOR_PORT}
            assert rollout.wait_healthy(incus(), [holder], health, 120) is None
        return seen

    taken_over = move_vip(takeover=True)
    print(f"\nrequests on one kept-alive connection after the VIP moved, with the takeover: {taken_over}")
    assert taken_over == ["ok"] * 5
    # Without it, a request the old holder answered (sent before the clients had the new holder's ARP) may come
    # first; the connection then fails, where with the takeover it did not.
    without = move_vip(takeover=False)
    print(f"without: {without}")
    assert without != ["ok"] * 5 and without[-1] != "ok", without


def test_image_upgrade_of_an_lxc_pair_moves_the_vip_gracefully(rolling):
    project, name, stack, kube, kubeconfig = rolling
    replicas = [f"{name}-roll-api-haproxy-{n}" for n in (1, 2)]
    holder = vip_holders(f"{name}-roll-api-haproxy", VIP)
    assert len(holder) == 1, holder
    standby = next(r for r in replicas if r != holder[0])
    new = build_image_version("haproxy", f"roll-{name}-1")
    prober = Prober(VIP, 6443, kubeconfig_ca(kubeconfig), timeout=PROBE_TIMEOUT)
    try:
        assert wait_for(prober.steady, 20), "the prober never saw the endpoint steady"
        t0 = time.monotonic()
        log = UpdateLog()
        stack.workspace.env_vars["CPLB_UPGRADE"] = "1"
        try:
            with HolderLog(f"{name}-roll-api-haproxy", VIP) as holders:
                with ApiLoad(kubeconfig, VIP, 6443) as load:
                    stack.up(on_output=quiet, on_event=log)
                t1 = time.monotonic()
                assert wait_for(prober.steady, 10)
        finally:
            del stack.workspace.env_vars["CPLB_UPGRADE"]
        probes = prober.probes(t0 - 1, answered=True)
        seen = outage(probes, t0, t1)
        # How each failed probe failed: a refusal, a reset or a close without an answer ("0"), or no answer in time.
        kinds = [(start, result) for start, _, result in prober.results(t0 - 0.2) if result in ("0", "t")]
    finally:
        prober.stop()
    order = log.one_at_a_time([r.split(f"{name}-", 1)[1] for r in replicas])
    assert log.changed() == {(r, "update") for r in order}, log.ops
    print(f"\nlxc pair upgrade under a 10 ms prober: longest gap {seen['outage']:.3f}s, {seen['failed']} failed "
          f"probes; kept-alive and new-connection load {load.counts}, failed on {load.failed_on}; order {order}")
    since = lambda t: round(t - t0, 2)  # noqa: E731
    print("timeline (s since the up began): updates "
          f"{[(r.rsplit('-', 1)[-1], since(log.began[r]), since(log.ended[r])) for r in order]}; VIP holders "
          f"{[(since(holders.t0) + t, h) for t, h in holders.seen]}; failed probes "
          f"{[(since(start), result) for start, result in kinds]}; failed requests "
          f"{[since(t) for t in load.failed_at]}; GETs retried after a reset {[(since(t), w) for t, w in load.resets]}")
    assert order[0] == standby.split(f"{name}-", 1)[1], (order, holder)  # the standby first, the holder last
    # The VIP moved once, to the rebuilt standby, and stayed there when the old holder came back (equal priorities:
    # no preemption, whose move would be abrupt for every connection the standby had taken).
    singles = [h[0] for _, h in holders.seen if len(h) == 1]
    moves = [h for i, h in enumerate(singles) if i == 0 or h != singles[i - 1]]
    assert moves == [holder[0].rsplit("-", 1)[-1], standby.rsplit("-", 1)[-1]], holders.seen
    # The connections open on the old holder when the VIP moves finish there (its peer sends their packets on,
    # cplb-takeover; the old holder keeps the VIP on lo while it drains): no probe is refused, reset or closed, and
    # no request fails, on new connections or on the kept-alive one (whose close at the end of the old holder's
    # drain is retried, as Go's transport does). The gap between answers is printed, not asserted (bench/rollout.py
    # measures it), and so are probes that only ran out of time: under the suite on 2 cores the machine stalls (the
    # CI of 2026-12-08: 0.77 s with no answer ending, then every probe of it answered but one, 1.0 s, while the VIP
    # stayed put). A VIP that sends clients nowhere does not look like that: a dropped SYN is sent again after 1 s,
    # so every probe started while it lasts runs out of time; at most 3 may.
    assert seen["recovered"] and not [k for k in kinds if k[1] == "0"], (seen, kinds)
    assert len(kinds) <= 3, (seen, kinds)
    assert load.failed_on["fresh"] == 0, load.errors
    assert load.failed_on["kept"] == 0, load.errors
    assert set(base_images(replicas).values()) == {new}
    assert len(vip_holders(f"{name}-roll-api-haproxy", VIP)) == 1


def served_certificate(address: str, port: int):
    """The certificate a member serves on `port` (a handshake, nothing sent)."""
    import socket
    import ssl

    from cryptography import x509

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=3) as sock, ctx.wrap_socket(sock) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_certificates_renew_before_they_expire_and_are_served_without_a_restart(rolling):
    """A short life (14.4 minutes) and renewBeforeDays scaled to it (renewal due 8.6 s after issue): the next `up`
    renews, the preview first says so, the members serve the new serials on 6443 and 2379, no process restarted."""
    import datetime

    from providers.incus_client import addresses_of

    project, name, stack, kube, kubeconfig = rolling
    values = stack_values()
    values["controlPlanes"][0]["certificates"] = {"validityDays": 0.01, "renewBeforeDays": 0.0099}
    project.write_stack_config(name, values)
    stack.up(on_output=quiet)  # the new life: a config change, reissued at once
    addresses = {m: addresses_of(incus().get_instance(m))["inet"][0] for m in members(name)}
    issued = {m: (served_certificate(a, 6443).serial_number, served_certificate(a, 2379).serial_number)
              for m, a in addresses.items()}
    expires = served_certificate(addresses[members(name)[0]], 6443).not_valid_after_utc
    due = expires - datetime.timedelta(days=0.0099)
    assert wait_for(lambda: datetime.datetime.now(datetime.timezone.utc) > due, 30)
    pids = {m: incus().exec(m, ["pidof", "etcd", "kube-apiserver"])[1].split() for m in members(name)}
    preview = stack.preview(on_output=quiet)
    assert "renewing the node certificates" in preview.stdout and preview.change_summary.get("update", 0) >= 1
    with ApiLoad(kubeconfig, VIP, 6443) as load:
        stack.up(on_output=quiet)
    print(f"\ncertificate renewal under load: {load.counts}")
    assert load.counts["failed"] == 0, load.errors
    for m, a in addresses.items():
        # kube-apiserver and etcd load the renewed files by themselves: new serials, the same processes.
        assert wait_for(lambda: served_certificate(a, 6443).serial_number != issued[m][0], 30), m
        assert served_certificate(a, 2379).serial_number != issued[m][1], m
        assert incus().exec(m, ["pidof", "etcd", "kube-apiserver"])[1].split() == pids[m], m
    kube.becomes_ready()


def test_count_up_joins_etcd_as_a_learner_and_count_down_leaves_it_with_no_failed_request(rolling):
    """`count` 3 -> 4: the new member joins the running etcd as a learner, is promoted, and serves; nobody else
    restarts. 4 -> 3: it leaves etcd (its kube-apiserver stopped gracefully first) before its instance goes. Both
    under API load through the VIP, the data and the founding members' IDs kept."""
    project, name, stack, kube, kubeconfig = rolling
    write_data(kube, "scale")
    before = etcd_state(name)
    pids = {m: incus().exec(m, ["pidof", "etcd"])[1].split() for m in members(name)}
    joiner = f"{name}-rcp-4"

    project.write_stack_config(name, stack_values(count=4))
    preview = stack.preview(on_output=quiet)
    assert f"{joiner} join the running etcd cluster" in preview.stdout, preview.stdout[-2000:]
    with ApiLoad(kubeconfig, VIP, 6443) as grow:
        stack.up(on_output=quiet)
    grown = etcd_state(name)
    flags = incus().pull_file(joiner, "/etc/kubernetes/etcd.args")[0].decode()
    project.write_stack_config(name, stack_values(count=3))
    with ApiLoad(kubeconfig, VIP, 6443) as shrink:
        stack.up(on_output=quiet)
    print(f"\ncount 3 -> 4: {grow.counts}; 4 -> 3: {shrink.counts}")

    assert grow.counts["failed"] == 0, grow.errors
    assert len(grown) == 4 and all(n for _, n, _ in grown) and not any(learner for *_, learner in grown), grown
    assert set(before) < set(grown), (before, grown)
    assert "--initial-cluster-state=existing\n" in flags, flags
    # The founding members kept their flags: their etcd did not restart for the new member.
    assert {m: incus().exec(m, ["pidof", "etcd"])[1].split() for m in members(name)} == pids
    assert shrink.counts["failed"] == 0, shrink.errors
    assert incus().get_instance(joiner) is None
    etcd_unchanged(name, before)
    data_kept(kube, ["scale"])
    assert stack.preview(on_output=quiet).change_summary.keys() <= {"same"}
