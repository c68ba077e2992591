"""Dynamic providers `cplb:etcd:EtcdMember` and `cplb:etcd:EtcdPromotion`: a control-plane member's place in etcd's
membership, kept through scaling (`count`) without losing quorum or data.

- EtcdMember, create: a founding member (the cluster is being made, or the member is named in the cluster's
  `--initial-cluster`) needs nothing. A member that joins a running cluster is added as a learner (a non-voting
  member: quorum does not change until it has caught up), asked of a peer; output `initialCluster`, the
  `--initial-cluster` it must start with (`--initial-cluster-state=existing`). An `up` stopped after the add finds the
  member listed and goes on from there.
- EtcdMember, delete (scaling down; and a destroy): the member's kube-apiserver is stopped gracefully first (its
  shutdown delay takes it out of the balancers), then a peer removes the member from etcd; the last member is not
  removed. Members are chained (each depends on the one before it), so they leave one at a time, the highest first.
- EtcdPromotion, create: once the learner's etcd runs, promote it to a voting member when it is in sync (bounded).

etcd is asked over its v3 JSON gateway (`POST /v3/cluster/member/...`), from here, with the API server's etcd client
certificate (a secret input), the server verified against etcd's CA and its address. No import-time side effects.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider

from providers.incus_client import Connection, client_for
from providers.memfile import MemFile

PROMOTE_SECONDS = 180.0


class EtcdError(Exception):
    pass


class EtcdRefused(EtcdError):
    """etcd's own answer (a request it refused), as opposed to no answer."""


def _conn(props: dict) -> Connection:
    return Connection.from_props(props.get("connection") or {}, props.get("credentials") or {})


def peer_url(address: str) -> str:
    return f"https://{address}:2380"


def ask(address: str, call: str, body: dict, tls: dict, timeout: float = 10.0) -> dict:
    """One call of etcd's JSON gateway on `address`; EtcdError with etcd's own message when it refuses."""
    ctx = ssl.create_default_context(cadata=tls["ca"])
    with MemFile(tls["cert"] + tls["key"], "cplb-etcd-client") as pem:
        ctx.load_cert_chain(pem.path)
    request = urllib.request.Request(f"https://{address}:2379/v3/cluster/member/{call}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except ValueError:
            pass
        raise EtcdRefused(f"etcd on {address} refused member {call}: {detail}") from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        raise EtcdError(f"etcd on {address} did not answer member {call}: {exc}") from None


def ask_any(peers: list[str], call: str, body: dict, tls: dict) -> dict:
    """The first peer that answers; a refusal (etcd's own answer) is not retried elsewhere."""
    errors = []
    for address in peers:
        try:
            return ask(address, call, body, tls)
        except EtcdRefused:
            raise
        except EtcdError as exc:
            errors.append(str(exc))
    raise EtcdError("no etcd peer answered: " + "; ".join(errors or ["no peers"]))


def other_peers(props: dict, client=None) -> list[str]:
    """The other members' addresses (`peers`: [name, address] pairs, in member order); with `client`, only those
    whose instance is running (while a stack is destroyed, the others may be gone already)."""
    pairs = [(n, a) for n, a in props.get("peers") or [] if n != props["name"] and a]
    if client is not None:
        pairs = [(n, a) for n, a in pairs if (client.get_instance(n) or {}).get("status") == "Running"]
    return [a for _, a in pairs]


def find(members: list[dict], url: str) -> Optional[dict]:
    return next((m for m in members if url in (m.get("peerURLs") or [])), None)


def initial_cluster(members: list[dict], name: str, url: str) -> str:
    """What etcdctl prints after `member add`: every started member, and the new one by its own name (members added
    but not yet started have no name and are left out, as etcd expects)."""
    pairs = []
    for m in members:
        for u in m.get("peerURLs") or []:
            n = name if u == url else m.get("name")
            if n:
                pairs.append(f"{n}={u}")
    return ",".join(sorted(pairs))


class _DecidedOnce(ResourceProvider):
    """Membership is decided once, when the member comes: later changes of peers or credentials say nothing new, and
    only another name is another member. The address is not compared: a member being rebuilt has an unknown address
    at preview (it keeps its own), and a replace of an EtcdMember would remove a member from etcd."""

    def read(self, id_, props):
        return ReadResult(id_=id_, outs=props)

    def diff(self, _id, olds, news):
        replaces = ["name"] if olds.get("name") != news.get("name") else []
        return DiffResult(changes=bool(replaces), replaces=replaces, delete_before_replace=True)

    def update(self, _id, olds, news):
        return pulumi.dynamic.UpdateResult(outs={**news, **{k: olds[k] for k in ("initialCluster",) if k in olds}})


class EtcdMemberProvider(_DecidedOnce):
    def create(self, props):
        outs = {**props, "initialCluster": ""}
        if props.get("join"):
            url = peer_url(props["address"])
            peers = other_peers(props)
            members = ask_any(peers, "list", {}, props["tls"]).get("members") or []
            if find(members, url) is None:  # not added by an `up` that stopped after it
                try:
                    members = ask_any(peers, "add", {"peerURLs": [url], "isLearner": True}, props["tls"])["members"]
                except EtcdRefused as exc:
                    # A peer that timed out may have added it all the same, and the next one then says so.
                    if "already exists" not in str(exc):
                        raise
                    members = ask_any(peers, "list", {}, props["tls"]).get("members") or []
            outs["initialCluster"] = initial_cluster(members, props["name"], url)
        return CreateResult(id_=props["name"], outs=outs)

    def delete(self, _id, props):
        url = peer_url(props["address"])
        client = client_for(_conn(props))
        peers = other_peers(props, client)
        if not peers:
            return  # the last member, or the others are gone: no membership is left to keep
        try:
            members = ask_any(peers, "list", {}, props["tls"]).get("members") or []
        except EtcdRefused:
            raise
        except EtcdError:
            return  # no other member answers: they have left too (a destroy), no membership is left to keep
        member = find(members, url)
        if member is None or len(members) <= 1:
            return
        if (client.get_instance(props["name"]) or {}).get("status") == "Running":
            # Out of the balancers first (its /readyz fails for the shutdown delay), and kept down.
            rc, _, err = client.exec(props["name"], ["sh", "-c", props["stopApiserver"] + "true"],
                                     timeout=float(props.get("stopSeconds") or 90) + 30)
            if rc != 0:
                raise EtcdError(f"{props['name']}: kube-apiserver did not stop: {err.strip()[:200]}")
        ask_any(peers, "remove", {"ID": member["ID"]}, props["tls"])


class EtcdMember(pulumi.dynamic.Resource, module="etcd", name="EtcdMember"):
    """A control-plane member in etcd's membership. Output: initialCluster (for a member that joins)."""

    initialCluster: pulumi.Output[str]

    def __init__(self, resource_name: str, *, name: str, address: pulumi.Input[str], peers: pulumi.Input[list],
                 join: bool, tls: pulumi.Input[dict], stop_apiserver: str, stop_seconds: int, connection: dict,
                 credentials: Optional[pulumi.Input[dict]] = None, opts: Optional[pulumi.ResourceOptions] = None):
        props = {"name": name, "address": address, "peers": peers, "join": join,
                 "tls": pulumi.Output.secret(tls), "stopApiserver": stop_apiserver, "stopSeconds": stop_seconds,
                 "connection": connection, "credentials": credentials or {}, "initialCluster": None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            additional_secret_outputs=["tls", "credentials"]))
        super().__init__(EtcdMemberProvider(), resource_name, props, opts)


class EtcdPromotionProvider(_DecidedOnce):
    def create(self, props):
        url = peer_url(props["address"])
        peers = other_peers(props)
        deadline = time.monotonic() + float(props.get("waitSeconds") or PROMOTE_SECONDS)
        while True:
            member = find(ask_any(peers, "list", {}, props["tls"]).get("members") or [], url)
            if member is None:
                raise EtcdError(f"{props['name']} is not an etcd member: nothing to promote")
            if not member.get("isLearner"):
                return CreateResult(id_=props["name"], outs=props)
            try:
                ask_any(peers, "promote", {"ID": member["ID"]}, props["tls"])
            except EtcdError as exc:
                # A peer that timed out may have promoted it all the same, and the next one then refuses ("can only
                # promote a learner member"): the list above says so on the next turn (seen under a loaded CPU).
                if "can only promote a learner member" in str(exc) and "in sync" not in str(exc):
                    continue
                # A learner is promoted only once it has caught up with the leader's log.
                if "in sync" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)


class EtcdPromotion(pulumi.dynamic.Resource, module="etcd", name="EtcdPromotion"):
    """A joined learner promoted to a voting member once it is in sync."""

    def __init__(self, resource_name: str, *, name: str, address: pulumi.Input[str], peers: pulumi.Input[list],
                 tls: pulumi.Input[dict], opts: Optional[pulumi.ResourceOptions] = None):
        props = {"name": name, "address": address, "peers": peers, "tls": pulumi.Output.secret(tls),
                 "waitSeconds": PROMOTE_SECONDS}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["tls"]))
        super().__init__(EtcdPromotionProvider(), resource_name, props, opts)
