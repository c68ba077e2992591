"""Proof that an Incus object is the stack's own, and the stack key that makes it (`cplb:pki:StackKey`).

Names are deterministic so that an `up` killed while it made an object can adopt it on the next run. Names and the
`user.cplb.stack` / `user.cplb.owner` labels are public, though: anyone who may create instances in the project could
make one first, with the right name and labels, and be handed the cluster's keys. So every object the stack makes
carries `user.cplb.proof`, written in the same request that creates it (no window where it exists unproven):

    v1:<t>:<HMAC-SHA256(stack key, "<kind>|<project>|<name>|<t>")>

`t` is when the stack asked for the object. Only the stack has the key (a Pulumi secret, kept in its state), so only
it can make a proof; and a proof is good only for an object created within PROOF_SKEW_SECONDS of `t` (Incus sets
`created_at`; nobody can choose it), so a proof copied from an object the stack made and later deleted does not
vouch for another made with the same name afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider

from providers.values import unix_time

PROOF = "user.cplb.proof"
# How far the Incus server's clock (created_at) may be from the stack's (t): a remote server's clock may be off.
PROOF_SKEW_SECONDS = 600


def _mac(key: str, kind: str, project: str, name: str, t: int) -> str:
    return hmac.new(bytes.fromhex(key), f"{kind}|{project}|{name}|{t}".encode(), hashlib.sha256).hexdigest()


def make_proof(key: str, kind: str, project: str, name: str, now: Optional[float] = None) -> str:
    t = int(time.time() if now is None else now)
    return f"v1:{t}:{_mac(key, kind, project, name, t)}"


def created_at(obj: dict) -> Optional[float]:
    """Incus's `created_at` as a Unix time; None when absent or unreadable."""
    return unix_time(obj.get("created_at") or "")


def proven(key: str, kind: str, project: str, name: str, obj: dict) -> bool:
    """Whether `obj` (an Incus instance or volume as the API gives it) carries this stack's proof for it."""
    version, _, rest = str((obj.get("config") or {}).get(PROOF) or "").partition(":")
    t, _, mac = rest.partition(":")
    if version != "v1" or not t.isdigit():
        return False
    born = created_at(obj)
    if born is None or abs(born - int(t)) > PROOF_SKEW_SECONDS:
        return False
    return hmac.compare_digest(mac, _mac(key, kind, project, name, int(t)))


def not_proven_message(what: str, name: str) -> str:
    return (f"{what} {name!r} has this stack's name and ownership labels but not its proof of ownership ({PROOF}): "
            "this stack did not make it, so it is not adopted and nothing is pushed into it. Find out who made it; "
            f"if it is yours to remove, delete it and run `up` again.")


class StackKeyProvider(ResourceProvider):
    """32 random bytes, made once and kept in the state for the stack's life."""

    def create(self, props):
        return CreateResult(id_="stack-key", outs={"key": secrets.token_hex(32)})

    def diff(self, _id, _olds, _news):
        return DiffResult(changes=False)

    def read(self, id_, props):
        return ReadResult(id_=id_, outs=props)  # lives in the state only


class StackKey(pulumi.dynamic.Resource, module="pki", name="StackKey"):
    """The stack's ownership key. Output: `key` (secret)."""

    key: pulumi.Output[str]

    def __init__(self, resource_name: str, opts: Optional[pulumi.ResourceOptions] = None):
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["key"]))
        super().__init__(StackKeyProvider(), resource_name, {"key": None}, opts)
