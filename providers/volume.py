"""Dynamic provider `cplb:incus:StorageVolume`: an instance's state volume, a custom volume the stack owns.

Everything the stack pushes into an instance (configs, certificates) and etcd's data live on it, mounted at
/var/lib/cplb (the images link /etc/kubernetes, /etc/haproxy, /etc/keepalived and /var/lib/etcd into it). An image
upgrade rebuilds the instance's root disk from the new image and keeps this volume, so a member comes back as itself:
same name, address, certificates and etcd identity, with its data.

- create: makes the volume (or adopts one left by an interrupted `up`: same name and this stack's ownership keys).
- read (refresh): a deleted volume drops out of the state.
- diff: name and pool replace (a replaced volume is a new, empty one: the names are deterministic, so only a config
  change of the pool does that); nothing else is compared.
- delete: only when the ownership keys say it is ours (after the instance that uses it: it depends on this).
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider

from providers.incus_client import Connection, IncusError, client_for
from providers.ownership import PROOF, make_proof, not_proven_message, proven

OWNER_STACK = "user.cplb.stack"
OWNER_ID = "user.cplb.owner"
# Where the images expect it (images/common/etc/init.d/rcS) and the device name on the instance.
STATE_PATH = "/var/lib/cplb"
STATE_DEVICE = "cplb-state"


def _conn(props: dict) -> Connection:
    return Connection.from_props(props.get("connection") or {}, props.get("credentials") or {})


def _path(props: dict, name: Optional[str] = None) -> str:
    base = f"storage-pools/{quote(props['pool'], safe='')}/volumes/custom"
    return f"{base}/{quote(name, safe='')}" if name else base


def _where(props: dict) -> Optional[dict]:
    """In an Incus cluster a local pool's volume lives on one member: the one its instance is placed on."""
    return {"target": props["target"]} if props.get("target") else None


def get_volume(client, props: dict) -> Optional[dict]:
    try:
        return client.call("GET", _path(props, props["name"]), params=_where(props),
                           what=f"read volume {props['name']}")
    except IncusError as exc:
        if exc.status == 404:
            return None
        raise


def check_owner(volume: dict, props: dict) -> None:
    cfg = volume.get("config") or {}
    if cfg.get(OWNER_STACK) != props["ownerStack"] or cfg.get(OWNER_ID) != props["ownerId"]:
        raise IncusError(f"storage volume {props['name']!r} in pool {props['pool']!r} already exists and is not this "
                         "stack's; incus-cplb never takes over a volume it did not create. Delete or rename it.")


def check_adoptable(volume: dict, props: dict) -> None:
    """Adopted (an `up` was killed while it made it) only with our labels and our proof: a volume made by someone
    else would be mounted into our instance, its files read as the stack's."""
    check_owner(volume, props)
    project = (props.get("connection") or {}).get("project") or "default"
    if props.get("ownerKey") and not proven(props["ownerKey"], "volume", project, props["name"], volume):
        raise IncusError(not_proven_message(f"storage volume (pool {props['pool']!r})", props["name"]))


def state_device(volume: str, pool: str) -> dict:
    return {"type": "disk", "pool": pool, "source": volume, "path": STATE_PATH}


class StorageVolumeProvider(ResourceProvider):
    def create(self, props):
        client = client_for(_conn(props))
        existing = get_volume(client, props)
        if existing is not None:
            check_adoptable(existing, props)  # ours, left by an interrupted `up`: adopt it
        else:
            config = {OWNER_STACK: props["ownerStack"], OWNER_ID: props["ownerId"]}
            if props.get("ownerKey"):
                project = (props.get("connection") or {}).get("project") or "default"
                config[PROOF] = make_proof(props["ownerKey"], "volume", project, props["name"])
            client.call("POST", _path(props), json={
                "name": props["name"], "type": "custom", "content_type": "filesystem", "config": config,
            }, params=_where(props), what=f"create volume {props['name']}")
        return CreateResult(id_=f"{props['pool']}/{props['name']}", outs=dict(props))

    def read(self, id_, props):
        if get_volume(client_for(_conn(props)), props) is None:
            return ReadResult(id_="", outs={})
        return ReadResult(id_=id_, outs=dict(props))

    def diff(self, _id, olds, news):
        replaces = [k for k in ("name", "pool", "target") if (olds.get(k) or None) != (news.get(k) or None)]
        return DiffResult(changes=bool(replaces), replaces=replaces, delete_before_replace=True)

    def delete(self, _id, props):
        client = client_for(_conn(props))
        volume = get_volume(client, props)
        if volume is None:
            return
        check_owner(volume, props)
        client.call("DELETE", _path(props, props["name"]), params=_where(props), what=f"delete volume {props['name']}")


class StorageVolume(pulumi.dynamic.Resource, module="incus", name="StorageVolume"):
    """A custom storage volume owned by this stack (an instance's state). Output: name."""

    name: pulumi.Output[str]

    def __init__(self, resource_name: str, *, name: str, pool: str, connection: dict, owner_stack: str,
                 owner_id: str, credentials: Optional[pulumi.Input[dict]] = None, target: Optional[str] = None,
                 owner_key: Optional[pulumi.Input[str]] = None, opts: Optional[pulumi.ResourceOptions] = None):
        props = {"name": name, "pool": pool, "connection": connection, "credentials": credentials or {},
                 "ownerStack": owner_stack, "ownerId": owner_id}
        if target:  # only when set, so existing resources see no new input
            props["target"] = target
        if owner_key is not None:  # proves at creation that the volume is ours; not compared by diff
            props["ownerKey"] = pulumi.Output.secret(owner_key)
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            additional_secret_outputs=["credentials", "ownerKey"]))
        super().__init__(StorageVolumeProvider(), resource_name, props, opts)
