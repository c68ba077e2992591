"""Which proxy nodes the dns strategy publishes: the probe loop of components.dns.healthy (probes faked)."""

import components.dns as dns


def fake_probes(monkeypatch, script: dict[str, list[str]]):
    calls: dict[str, int] = {}

    def probe(address, port, timeout=1.0):
        calls[address] = calls.get(address, 0) + 1
        answers = script[address]
        return answers[min(calls[address], len(answers)) - 1]

    monkeypatch.setattr(dns, "tcp_probe", probe)
    monkeypatch.setattr(dns.time, "sleep", lambda s: None)
    return calls


def test_a_new_ipv6_address_of_a_live_node_is_asked_again(monkeypatch):
    calls = fake_probes(monkeypatch, {"198.18.10.5": ["ok"], "fd00::5": ["unreachable", "unreachable", "ok"]})
    assert dns.healthy(["198.18.10.5", "fd00::5"], 6443, wait_seconds=8, siblings={"fd00::5": "198.18.10.5"}) == \
        ["198.18.10.5", "fd00::5"]
    assert calls["fd00::5"] == 3


def test_a_dead_node_is_dropped_at_once_on_both_families(monkeypatch):
    calls = fake_probes(monkeypatch, {"198.18.10.5": ["ok"], "198.18.10.6": ["unreachable"],
                                      "fd00::5": ["ok"], "fd00::6": ["unreachable"]})
    got = dns.healthy(["198.18.10.5", "198.18.10.6", "fd00::5", "fd00::6"], 6443, wait_seconds=8,
                      siblings={"fd00::5": "198.18.10.5", "fd00::6": "198.18.10.6"})
    assert got == ["198.18.10.5", "fd00::5"]
    assert calls["198.18.10.6"] == 1 and calls["fd00::6"] == 1


def test_a_refusing_node_gets_the_wait_and_preview_does_not_wait(monkeypatch):
    calls = fake_probes(monkeypatch, {"198.18.10.7": ["refused", "refused", "ok"]})
    assert dns.healthy(["198.18.10.7"], 6443, wait_seconds=8) == ["198.18.10.7"]
    calls.clear()
    assert dns.healthy(["198.18.10.7"], 6443, wait_seconds=0) == []
    assert calls["198.18.10.7"] == 1


def test_an_ipv6_address_waits_for_its_starting_ipv4_sibling(monkeypatch):
    # First pass: nginx is starting (IPv4 refused) and the IPv6 address does not answer yet; both come up later.
    calls = fake_probes(monkeypatch, {"198.18.10.5": ["refused", "ok"], "fd00::5": ["unreachable", "unreachable", "ok"]})
    assert dns.healthy(["198.18.10.5", "fd00::5"], 6443, wait_seconds=8, siblings={"fd00::5": "198.18.10.5"}) == \
        ["198.18.10.5", "fd00::5"]
    assert calls == {"198.18.10.5": 2, "fd00::5": 3}
