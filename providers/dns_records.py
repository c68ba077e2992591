"""Dynamic provider `cplb:dns:DnsRecordSet`: the A records of one name, kept by RFC 2136 updates signed with TSIG.

- create/update: one signed UPDATE replaces the A rrset (and an owner TXT record beside it: DNS has no labels,
  so the TXT `cplb-owner=<stack>/<owner>` says whose the name is; a name with A records and no such TXT is
  someone else's and is never overwritten). An empty address list deletes the A rrset.
- read (refresh): the A records the server answers (queried over TCP from the server itself).
- delete: removes the A rrset and the owner TXT.
A refused update (unsigned, wrong key, not allowed) is an error that names the key and the server's answer,
and leaves the server as it was (an UPDATE is atomic).
"""

from __future__ import annotations

from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult


class DnsError(Exception):
    pass


def _split(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def _keyring(tsig: dict):
    import dns.tsigkeyring

    return dns.tsigkeyring.from_text({tsig["name"]: (tsig["algorithm"], tsig["secret"])})


def _send(props: dict, update) -> None:
    import dns.exception
    import dns.query
    import dns.rcode
    import dns.tsig

    host, port = _split(props["server"])
    key = props["tsig"]["name"]
    try:
        response = dns.query.tcp(update, host, port=port, timeout=5)
    except dns.tsig.PeerError as exc:
        raise DnsError(f"DNS server {props['server']} refused the update of {props['fqdn']} signed with key {key!r}: "
                       f"{exc} (check the key's secret and algorithm)") from None
    except (OSError, dns.exception.DNSException) as exc:
        raise DnsError(f"DNS update of {props['fqdn']} at {props['server']} (key {key!r}) failed: {exc}") from None
    rcode = response.rcode()
    if rcode != dns.rcode.NOERROR:
        raise DnsError(f"DNS server {props['server']} refused the update of {props['fqdn']} signed with key {key!r}: "
                       f"{dns.rcode.to_text(rcode)} (check the key name, algorithm and secret, and the zone's "
                       "update policy)")


def _query(props: dict, rdtype: str) -> list[str]:
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    host, port = _split(props["server"])
    q = dns.message.make_query(props["fqdn"], rdtype)
    try:
        r = dns.query.tcp(q, host, port=port, timeout=5)
    except (OSError, dns.exception.DNSException) as exc:
        raise DnsError(f"cannot query {props['fqdn']} {rdtype} at {props['server']}: {exc}") from None
    out = []
    for rrset in r.answer:
        for rd in rrset:
            out.append(rd.to_text().strip('"'))
    return sorted(out)


def _owner(props: dict) -> str:
    return f"cplb-owner={props['ownerStack']}/{props['ownerId']}"


def _signed_update(props: dict):
    """An empty RFC 2136 UPDATE of the zone, signed with the stack's TSIG key."""
    import dns.update

    return dns.update.Update(props["zone"], keyring=_keyring(props["tsig"]), keyname=props["tsig"]["name"],
                             keyalgorithm=props["tsig"]["algorithm"])


def _rdtype(address: str) -> str:
    return "AAAA" if ":" in address else "A"


def _update(props: dict, addresses: list[str], *, delete_owner: bool = False):
    relative = props["fqdn"]
    upd = _signed_update(props)
    upd.delete(relative, "A")
    upd.delete(relative, "AAAA")
    if delete_owner:
        upd.delete(relative, "TXT")
        return upd
    for addr in addresses:
        upd.add(relative, int(props["ttl"]), _rdtype(addr), addr)
    upd.replace(relative, int(props["ttl"]), "TXT", f'"{_owner(props)}"')
    return upd


def _change_addresses(props: dict, remove: list[str], add: list[str]):
    """One signed UPDATE that takes `remove` out of the name's A/AAAA records and puts `add` in, nothing else."""
    relative = props["fqdn"]
    upd = _signed_update(props)
    for addr in remove:
        upd.delete(relative, _rdtype(addr), addr)
    for addr in add:
        upd.add(relative, int(props["ttl"]), _rdtype(addr), addr)
    return upd


def withdraw(props: dict, addresses: list[str]) -> None:
    """Take `addresses` out of the name (a proxy node about to go down for a rollout); the others stay."""
    check_owner(props)
    _send(props, _change_addresses(props, addresses, []))


def restore(props: dict, addresses: list[str]) -> None:
    """Put `addresses` back (the node is healthy again), if the name is still ours."""
    check_owner(props)
    _send(props, _change_addresses(props, [], addresses))


def published(props: dict) -> list[str]:
    """The A and AAAA records the server answers now."""
    return sorted(_query(props, "A") + _query(props, "AAAA"))


def check_owner(props: dict) -> None:
    owners = [t for t in _query(props, "TXT") if t.startswith("cplb-owner=")]
    if owners and _owner(props) not in owners:
        raise DnsError(f"{props['fqdn']} belongs to {owners[0].split('=', 1)[1]}; incus-cplb never overwrites it")
    if not owners and published(props):
        raise DnsError(f"{props['fqdn']} already has A/AAAA records not made by incus-cplb; remove them or pick another "
                       "hostname")


class DnsRecordSetProvider(ResourceProvider):
    def _apply(self, props: dict) -> dict:
        addresses = sorted(props.get("addresses") or [])
        _send(props, _update(props, addresses))
        return {**props, "addresses": addresses, "published": published(props)}

    def create(self, props):
        check_owner(props)
        return CreateResult(id_=props["fqdn"], outs=self._apply(props))

    def update(self, _id, _olds, news):
        return UpdateResult(outs=self._apply(news))

    def diff(self, _id, olds, news):
        replaces = [k for k in ("fqdn", "zone", "server") if olds.get(k) != news.get(k)]
        changed = list(replaces)
        addresses = news.get("addresses")
        # What the server answers now, not only what the state last saw: a rollout that was stopped while a proxy
        # node's address was withdrawn (providers/rollout.py) left the name without it, and the next `up` puts it
        # back even without a refresh. The state's figure when the server cannot be asked (a preview offline).
        try:
            live = published(olds) if not replaces else olds.get("published")
        except (DnsError, ValueError, KeyError):
            live = olds.get("published")
        if not isinstance(addresses, (list, tuple)) or sorted(live or []) != sorted(addresses):
            changed.append("addresses")
        if int(float(olds.get("ttl") or 0)) != int(float(news.get("ttl") or 0)):
            changed.append("ttl")
        if (olds.get("tsig") or {}).get("name") != (news.get("tsig") or {}).get("name"):
            changed.append("tsig")
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def read(self, id_, props):
        found = published(props)
        owners = [t for t in _query(props, "TXT") if t.startswith("cplb-owner=")]
        if not owners and not found:
            return ReadResult(id_="", outs={})
        return ReadResult(id_=id_, outs={**props, "published": found})

    def delete(self, _id, props):
        owners = [t for t in _query(props, "TXT") if t.startswith("cplb-owner=")]
        if owners and _owner(props) not in owners:
            return  # someone else's now: leave it
        _send(props, _update(props, [], delete_owner=True))


class DnsRecordSet(pulumi.dynamic.Resource, module="dns", name="DnsRecordSet"):
    """A records for `fqdn` in `zone`, published through a TSIG-signed RFC 2136 UPDATE. Output: published."""

    published: pulumi.Output[list]

    def __init__(
        self,
        resource_name: str,
        *,
        server: str,
        zone: str,
        fqdn: str,
        ttl: int,
        addresses: pulumi.Input[list],
        tsig: pulumi.Input[dict],
        owner_stack: str,
        owner_id: str,
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        props = {"server": server, "zone": zone, "fqdn": fqdn, "ttl": ttl, "addresses": addresses, "tsig": tsig,
                 "ownerStack": owner_stack, "ownerId": owner_id, "published": None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["tsig"]))
        super().__init__(DnsRecordSetProvider(), resource_name, props, opts)
