"""The `dns` strategy against real nginx proxy nodes, a real BIND server and the real Pulumi CLI."""

import os
import random
import signal
import subprocess
import time

import pytest

from tests.helpers import (
    ROOT, Load, base_config, demo_group, http_get, incus, instances_with_prefix, local_dns_server, pulumi_stack,
    process_users, wait_for,
)

pytestmark = pytest.mark.integration
ZONE = "cplb.test."


@pytest.fixture(scope="module")
def dns_server():
    with local_dns_server() as server:
        yield server


def resolve(server: dict, fqdn: str, rdtype: str = "A") -> list:
    import dns.message
    import dns.query

    r = dns.query.tcp(dns.message.make_query(fqdn, rdtype), "127.0.0.1", port=server["port"], timeout=3)
    return sorted(rd.to_text() for rrset in r.answer for rd in rrset)


def config(server: dict, cluster: str, hostname: str, web_targets=None, ttl: int = 30) -> dict:
    web = {"name": "web", "port": 8080, "targetPort": 8080}
    if web_targets is not None:
        web["targets"] = {"addresses": web_targets}
    return base_config(
        instanceGroups=[demo_group(2, name="cp", cluster=cluster)],
        loadBalancers=[{
            "name": "api", "cluster": cluster, "type": "dns",
            "healthCheck": {"intervalSeconds": 1, "fall": 2},
            "dns": {"nodes": {"count": 2}, "zone": ZONE, "hostname": hostname, "ttl": ttl,
                    "server": server["server"], "tsig": {"name": "cplb-update", "secret": "placeholder00"},
                    "roles": [{"name": "api", "port": 6443, "targetPort": 6443}, web]},
        }])


def set_secret(stack, server):
    from pulumi.automation import ConfigValue

    stack.set_config("cplb:loadBalancers[0].dns.tsig.secret", ConfigValue(server["secret"], secret=True), path=True)


def quiet(_):
    pass


ROLLOUT_TTL = 2  # seconds: test_dns_records_follow_node_health's name, whose proxy nodes roll at its end


def test_dns_records_follow_node_health(dns_server):
    cluster = f"d{random.randrange(16**5):05x}"
    hostname = f"api-{cluster}"
    fqdn = f"{hostname}.{ZONE}"
    with pulumi_stack(config(dns_server, cluster, hostname, ttl=ROLLOUT_TTL)) as (project, name, stack):
        set_secret(stack, dns_server)
        logs = []
        pv = stack.preview(on_output=logs.append, diff=True)
        up = stack.up(on_output=logs.append)
        out = up.outputs["loadBalancers"].value["api"]
        nodes = out["addresses"]
        targets = [f"{name}-cp-1", f"{name}-cp-2"]
        assert len(nodes) == 2 and out["endpoint"] == f"{fqdn.rstrip('.')}:6443"
        # The name resolves to both nodes (asked of the server itself).
        assert resolve(dns_server, fqdn) == sorted(nodes)
        # Requests through each node, on both roles, reach all targets.
        for node in nodes:
            for port in (6443, 8080):
                assert wait_for(lambda: {http_get(node, port) for _ in range(8)} == set(targets), 15), (node, port)

        # The TSIG secret is nowhere in plain text.
        for where, text in (("state", project.state_text()), ("preview", pv.stdout), ("logs", "\n".join(logs)),
                            ("outputs", str(up.outputs))):
            assert dns_server["secret"] not in text, f"the TSIG secret leaked into the {where}"

        # A node dies: the next `up` withdraws its record; it comes back: its record returns.
        node_names = sorted(n for n in instances_with_prefix(name) if "-proxy-" in n)
        incus().set_state(node_names[0], "stop", force=True)
        stack.up(on_output=quiet)  # no refresh: the instance stays stopped, the health check drops it
        remaining = resolve(dns_server, fqdn)
        assert len(remaining) == 1, remaining
        incus().set_state(node_names[0], "start")
        wait_for(lambda: incus().wait_for_address(node_names[0]), 20)
        stack.up(on_output=quiet, refresh=True)
        assert wait_for(lambda: len(resolve(dns_server, fqdn)) == 2, 20)

        # The watch loop withdraws a dead node's record by itself.
        watch = subprocess.Popen(
            [os.path.join(ROOT, ".venv", "bin", "python"), os.path.join(ROOT, "scripts", "watch"), "--stack", name,
             "--work-dir", project.dir, "--interval", "1", "--max-seconds", "120"],
            env={**os.environ, **project.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # The node dies once the watch follows the stack (after its catch-up reconcile: a stack instance that
            # stops during that one is started again by its `up`, as a refresh and `up` do).
            started = []
            for line in watch.stdout:
                started.append(line)
                if "reconcile (watch started)" in line:
                    break
            incus().set_state(node_names[1], "stop", force=True)
            t0 = time.monotonic()
            assert wait_for(lambda: len(resolve(dns_server, fqdn)) == 1, 30, 0.2), "watch did not withdraw the record"
            withdrawn = time.monotonic() - t0
            print(f"\ndns watch: record of a dead node withdrawn {withdrawn:.2f}s after `stop --force`")
        finally:
            watch.send_signal(signal.SIGINT)
            text, _ = watch.communicate(timeout=120)
            text = "".join(started) + text
            print(text)
        assert watch.returncode == 0 and "stopping after" in text
        incus().set_state(node_names[1], "start")
        stack.up(on_output=quiet, refresh=True)
        assert wait_for(lambda: len(resolve(dns_server, fqdn)) == 2, 20)
        proxy_nodes_roll_out_of_the_name_first(project, name, stack, dns_server, fqdn, node_names)


def proxy_nodes_roll_out_of_the_name_first(project, name, stack, dns_server, fqdn, node_names):
    """`make upgrade` of the proxy nodes' image: each node's address leaves the name, the rollout waits the TTL (the
    time a client may still use the answer it has), then the node stops; its address returns once it serves again.
    Whenever a node is down, the name does not resolve to it."""
    import threading

    from providers.incus_client import addresses_of
    from tests.helpers import build_image_version, eth0_addresses

    address = {n: addresses_of(incus().get_instance(n))["inet"][0] for n in node_names}
    new = build_image_version("nginx-proxy", f"roll-{name}")
    samples: list[tuple[float, set, dict]] = []  # (time, the name's addresses, each node's status)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                found = {i["name"]: (i.get("status"), bool(eth0_addresses(i))) for i in incus().list_instances()
                         if i["name"] in node_names}
                samples.append((time.monotonic(), set(resolve(dns_server, fqdn)), found))
            except Exception:  # noqa: BLE001 - an instance read while it starts can fail: look again
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stack.workspace.env_vars["CPLB_UPGRADE"] = "1"
    try:
        stack.up(on_output=quiet)
    finally:
        del stack.workspace.env_vars["CPLB_UPGRADE"]
        stop.set()
        sampler.join(10)
    t0 = samples[0][0]
    for node in node_names:
        down = [t for t, _, found in samples if found.get(node) != ("Running", True)]
        assert down, f"{node} never went down: was it rolled?"
        # While the node was down, and from the TTL before, the name did not give its address.
        published_while_down = [round(t - t0, 1) for t, names, found in samples
                                if address[node] in names and found.get(node) != ("Running", True)]
        assert not published_while_down, (node, published_while_down)
        before = [(t, address[node] in names) for t, names, _ in samples if t < down[0]]
        last_published = max((t for t, published in before if published), default=t0)
        print(f"\n{node}: out of the name {down[0] - last_published:.1f}s before it stopped, "
              f"down {down[-1] - down[0]:.1f}s")
        assert down[0] - last_published >= ROLLOUT_TTL - 0.5, (node, down[0] - last_published)
    assert resolve(dns_server, fqdn) == sorted(address.values())
    assert {incus().get_instance(n)["config"]["volatile.base_image"] for n in node_names} == {new}
    assert dns_server["secret"] not in project.state_text()


def test_dns_role_change_updates_config_without_failed_requests(dns_server):
    cluster = f"d{random.randrange(16**5):05x}"
    with pulumi_stack(config(dns_server, cluster, f"web-{cluster}")) as (project, name, stack):
        set_secret(stack, dns_server)
        up = stack.up(on_output=quiet)
        node = up.outputs["loadBalancers"].value["api"]["addresses"][0]
        targets = up.outputs["instanceGroups"].value["cp"]["addresses"]
        names = [f"{name}-cp-1", f"{name}-cp-2"]
        assert wait_for(lambda: {http_get(node, 8080) for _ in range(8)} == set(names), 15)
        # nginx's master keeps root; its worker runs as nobody (65534).
        users = process_users(f"{name}-api-proxy-1", "nginx")
        assert "0" in users and "65534" in users, users
        with Load(f"{node}:8080", min_requests=1000) as load:
            for web_targets in ([{"name": "only-one", "address": targets[0]}], None):
                project.write_stack_config(name, config(dns_server, cluster, f"web-{cluster}", web_targets))
                set_secret(stack, dns_server)
                pv = stack.preview(on_output=quiet)
                # nginx.conf on both nodes, and the balancer's status (read again once they are in place)
                assert pv.change_summary.get("update") == 3, pv.change_summary
                assert not {"create", "replace", "delete"} & set(pv.change_summary), pv.change_summary
                stack.up(on_output=quiet)
        print(f"\ndns role change under load: {load.total} requests, {len(load.failures)} failed")
        assert load.failures == [], load.failures[:5]


def test_unsigned_and_wrongly_signed_updates_are_refused(dns_server):
    import dns.query
    import dns.rcode
    import dns.update

    from providers.dns_records import DnsError, DnsRecordSetProvider

    unsigned = dns.update.Update(ZONE)
    unsigned.add("rogue", 30, "A", "198.18.10.77")
    assert dns.query.tcp(unsigned, "127.0.0.1", port=dns_server["port"], timeout=3).rcode() == dns.rcode.REFUSED

    props = {"server": dns_server["server"], "zone": ZONE, "fqdn": f"wrong.{ZONE}", "ttl": 30,
             "addresses": ["198.18.10.77"], "ownerStack": "t", "ownerId": "lb/x",
             "tsig": {"name": "cplb-update.", "algorithm": "hmac-sha256", "secret": "d3JvbmdrZXl3cm9uZ2tleQ=="}}
    with pytest.raises(DnsError) as exc:
        DnsRecordSetProvider().create(props)
    assert "cplb-update" in str(exc.value) and "refused" in str(exc.value).lower() or "BADSIG" in str(exc.value)
    assert resolve(dns_server, f"wrong.{ZONE}") == []
    assert resolve(dns_server, f"rogue.{ZONE}") == []


def test_dns_invalid_config_fails_at_preview(dns_server):
    from pulumi.automation import errors

    bad = config(dns_server, "dbad", "api-dbad")
    bad["loadBalancers"][0]["dns"]["roles"][1]["port"] = 65000
    with pulumi_stack(bad) as (_, name, stack):
        with pytest.raises(errors.CommandError) as exc:
            stack.preview(on_output=quiet)
        assert "cplb:loadBalancers[0].dns.roles[1]" in str(exc.value) and "reserved" in str(exc.value)
        assert instances_with_prefix(name) == {}


def signed_update(server: dict, fqdn: str, change) -> None:
    import dns.query
    import dns.tsigkeyring
    import dns.update

    keyring = dns.tsigkeyring.from_text({"cplb-update.": ("hmac-sha256", server["secret"])})
    upd = dns.update.Update(ZONE, keyring=keyring, keyname="cplb-update.", keyalgorithm="hmac-sha256")
    change(upd, fqdn)
    r = dns.query.tcp(upd, "127.0.0.1", port=server["port"], timeout=5)
    assert r.rcode() == 0, r


def test_dns_records_changed_or_deleted_out_of_band_are_seen_by_refresh_and_repaired(dns_server):
    cluster = f"d{random.randrange(16**5):05x}"
    hostname = f"oob-{cluster}"
    fqdn = f"{hostname}.{ZONE}"
    with pulumi_stack(config(dns_server, cluster, hostname)) as (project, name, stack):
        set_secret(stack, dns_server)
        nodes = sorted(stack.up(on_output=quiet).outputs["loadBalancers"].value["api"]["addresses"])
        assert resolve(dns_server, fqdn) == nodes

        # One of our records replaced by a stranger's address.
        def tamper(upd, name):
            upd.delete(name, "A", nodes[0])
            upd.add(name, 30, "A", "198.18.10.250")
        signed_update(dns_server, fqdn, tamper)
        refreshed = stack.refresh(on_output=quiet)
        assert refreshed.summary.resource_changes.get("update", 0) >= 1, refreshed.summary.resource_changes
        pv = stack.preview(on_output=quiet)
        assert pv.change_summary.get("update", 0) >= 1, pv.change_summary
        stack.up(on_output=quiet)
        assert resolve(dns_server, fqdn) == nodes

        # The whole name deleted: refresh drops the record set, up publishes it again.
        signed_update(dns_server, fqdn, lambda upd, name: upd.delete(name))
        assert resolve(dns_server, fqdn) == []
        refreshed = stack.refresh(on_output=quiet)
        assert refreshed.summary.resource_changes.get("delete", 0) >= 1, refreshed.summary.resource_changes
        stack.up(on_output=quiet)
        assert resolve(dns_server, fqdn) == nodes


def test_dns_dual_stack_publishes_aaaa_records_and_proxies_over_ipv6(dns_server):
    cluster = f"d{random.randrange(16**5):05x}"
    hostname = f"api-{cluster}"
    fqdn = f"{hostname}.{ZONE}"
    values = config(dns_server, cluster, hostname)
    values["loadBalancers"][0]["ipFamilies"] = ["IPv4", "IPv6"]
    with pulumi_stack(values) as (project, name, stack):
        set_secret(stack, dns_server)
        logs: list[str] = []
        up = stack.up(on_output=logs.append)
        targets = {f"{name}-cp-1", f"{name}-cp-2"}

        def own(instance: str, family: str) -> set:
            addrs = incus().get_instance(instance)["state"]["network"]["eth0"]["addresses"]
            return {a["address"] for a in addrs if a["family"] == family and a["scope"] == "global"}

        nodes = [f"{name}-api-proxy-{n}" for n in (1, 2)]
        node6 = {n: own(n, "inet6") for n in nodes}
        assert all(len(v) == 1 for v in node6.values()), node6
        # A and AAAA records, each exactly the nodes' addresses of that family.
        out = up.outputs["loadBalancers"].value["api"]
        seen = (out["addresses"], out["healthy"], out["published"], [x for x in logs if "not published" in x])
        assert resolve(dns_server, fqdn, "AAAA") == sorted(a for v in node6.values() for a in v), seen
        assert resolve(dns_server, fqdn, "A") == sorted(a for n in nodes for a in own(n, "inet"))
        conditions = {c["type"]: c["status"] for c in up.outputs["loadBalancers"].value["api"]["status"]["conditions"]}
        assert conditions["DNSResolvable"] == "True" and conditions["Ready"] == "True", conditions
        for node, (address,) in node6.items():
            # Requests to the node's IPv6 address reach both targets, and the targets see the node's IPv6 address:
            # the IPv6 listener proxies to the targets' IPv6 addresses.
            assert wait_for(lambda: {http_get(f"[{address}]", 6443, timeout=5) for _ in range(6)} == targets, 20), node
            peers = {http_get(f"[{address}]", 6443, "/peer", timeout=5) for _ in range(6)}
            assert peers == {address}, (node, peers)
