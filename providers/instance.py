"""Dynamic provider `cplb:incus:Instance`: an Incus instance the stack owns.

- create: makes and starts the instance (or adopts one left by an interrupted `up`: same name and this
  stack's ownership keys), then waits for its DHCP address so outputs carry it.
- read (refresh): the instance as it is; a deleted instance drops out of the state, so `up` recreates it.
- diff: image, name, type, target and project replace; config, profiles and devices update in place.
- delete: stops and deletes, only when the ownership keys say it is ours.
"""

from __future__ import annotations

from typing import Any, Optional

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from providers.incus_client import Connection, IncusError, addresses_of, client_for
from providers.values import plain

OWNER_STACK = "user.cplb.stack"
OWNER_ID = "user.cplb.owner"
REPLACE_KEYS = ("name", "image", "imageFingerprint", "instanceType", "target", "project", "oci")
UPDATE_KEYS = ("config", "profiles", "devices", "running")
# Config keys Incus manages itself; they are kept when we rewrite the config.
SERVER_OWNED_PREFIXES = ("volatile.", "image.")


def _conn(props: dict) -> Connection:
    return Connection.from_props(props.get("connection") or {}, props.get("credentials") or {})


def desired_config(props: dict) -> dict[str, str]:
    config = {k: str(v) for k, v in (props.get("config") or {}).items()}
    config[OWNER_STACK] = props["ownerStack"]
    config[OWNER_ID] = props["ownerId"]
    return config


def create_request(props: dict) -> dict[str, Any]:
    """The body of POST /1.0/instances. `oci` set: an OCI application container from a registry
    (needs the server's `instance_oci` extension); else a system container from a local image alias."""
    oci = props.get("oci") or {}
    if oci:
        source = {"type": "image", "mode": "pull", "protocol": "oci", "server": oci["registry"], "alias": oci["image"]}
    else:
        source = {"type": "image", "alias": props["image"]}
    body: dict[str, Any] = {
        "name": props["name"],
        "type": "container",
        "source": source,
        "profiles": list(props.get("profiles") or []),
        "config": desired_config(props),
        "devices": props.get("devices") or {},
        "start": False,
    }
    if props.get("instanceType"):
        body["instance_type"] = props["instanceType"]
    return body


def check_owner(inst: dict, props: dict) -> None:
    """Refuse to touch an instance that carries no or other ownership keys."""
    cfg = inst.get("config") or {}
    if cfg.get(OWNER_STACK) != props["ownerStack"] or cfg.get(OWNER_ID) != props["ownerId"]:
        owner = cfg.get(OWNER_STACK)
        whose = f"stack {owner!r} ({cfg.get(OWNER_ID)})" if owner else "nobody managed by incus-cplb"
        raise IncusError(
            f"instance {inst['name']!r} already exists and belongs to {whose}; incus-cplb never takes over an "
            f"instance it did not create. Rename the balancer or delete that instance."
        )


def instance_outputs(props: dict, inst: dict) -> dict[str, Any]:
    ignore = frozenset(props.get("ignoreAddresses") or [])
    addrs = addresses_of(inst, ignore)
    cfg = inst.get("config") or {}
    return {
        **props,
        "status": inst.get("status", "Unknown"),
        "running": inst.get("status") == "Running",
        "uuid": cfg.get("volatile.uuid", ""),
        "ipv4": addrs.get("inet", []),
        "ipv6": addrs.get("inet6", []),
        "address": (addrs.get("inet") or addrs.get("inet6") or [""])[0],
        # The stack's own labels as the instance has them (an operator's other user.* keys are not the stack's).
        "userConfig": {k: v for k, v in cfg.items()
                       if k.startswith("user.") and (k in (props.get("config") or {}) or k in (OWNER_STACK, OWNER_ID))},
        "imageFingerprint": cfg.get("volatile.base_image", "") if props.get("imageFingerprint") else "",
        "location": inst.get("location", ""),
    }


class InstanceProvider(ResourceProvider):
    def check(self, _olds, news):
        failures = []
        for key in ("name", "image", "ownerStack", "ownerId"):
            if not news.get(key):
                failures.append(CheckFailure(key, f"{key} is required"))
        return CheckResult(news, failures)

    def create(self, props):
        client = client_for(_conn(props))
        name = props["name"]
        existing = client.get_instance(name)
        if existing is not None:
            check_owner(existing, props)  # ours, left by an interrupted `up`: adopt it
            self._converge(client, name, props)
        else:
            params = {"target": props["target"]} if props.get("target") else None
            client.call("POST", "instances", json=create_request(props), params=params,
                        what=f"create instance {name}")
        inst = client.get_instance(name) or {}
        if inst.get("status") != "Running":
            client.set_state(name, "start")
        inst = client.wait_for_address(name, timeout=float(props.get("addressTimeout") or 60))
        inst = self._wait_ipv6(client, name, props, inst)
        return CreateResult(id_=name, outs=instance_outputs(props, inst))

    @staticmethod
    def _wait_ipv6(client, name: str, props: dict, inst: dict) -> dict:
        """Dual-stack stacks: SLAAC gives the IPv6 address a moment after DHCP gives the IPv4 one, and the address
        is tentative (duplicate address detection) for about a second more: packets to it are dropped, so a
        health probe right after `up` made the node would find it dead."""
        if "inet6" not in (props.get("addressFamilies") or []):
            return inst
        if not addresses_of(inst).get("inet6"):
            inst = client.wait_for_address(name, family="inet6", timeout=20)
        client.wait_ipv6_settled(name, timeout=10)
        return inst

    def _converge(self, client, name: str, props: dict, olds: Optional[dict] = None) -> None:
        current, etag = client.etag_get(f"instances/{name}", what=f"read instance {name}")
        # Kept: what Incus manages, and `user.*` keys the stack has never declared here (an operator's labels, such
        # as user.cplb.disabled=true to drain the instance). A key the stack declared before and no longer does is
        # the stack's to remove.
        owned = set((olds or {}).get("config") or {}) | set(desired_config(props))
        config = {k: v for k, v in (current.get("config") or {}).items()
                  if k.startswith(SERVER_OWNED_PREFIXES) or (k.startswith("user.") and k not in owned)}
        config.update(desired_config(props))
        body = {
            "architecture": current.get("architecture"),
            "config": config,
            "devices": props.get("devices") or {},
            "profiles": list(props.get("profiles") or []),
            "ephemeral": current.get("ephemeral", False),
            "description": current.get("description", ""),
        }
        client.call("PUT", f"instances/{name}", json=body, headers={"If-Match": etag} if etag else None,
                    what=f"update instance {name}")

    def read(self, id_, props):
        client = client_for(_conn(props))
        inst = client.get_instance(id_)
        if inst is None:
            return ReadResult(id_="", outs={})  # gone: drops out of the state; the next `up` recreates it
        cfg = inst.get("config") or {}
        observed = dict(props)
        # What refresh can see drifting: user/limits config, profiles, devices and the image.
        # Undeclared `user.*` keys are the operator's (never drift, never removed): see _converge.
        declared = set(props.get("config") or {})
        observed["config"] = {
            k: v for k, v in cfg.items()
            if not k.startswith(SERVER_OWNED_PREFIXES) and k not in (OWNER_STACK, OWNER_ID)
            and (k in declared or not k.startswith("user."))
        }
        observed["profiles"] = inst.get("profiles") or []
        observed["devices"] = inst.get("devices") or {}
        return ReadResult(id_=id_, outs=instance_outputs(observed, inst))

    def diff(self, _id, olds, news):
        # Absent, empty and null are the same (states written before a key existed have none).
        replaces = [k for k in REPLACE_KEYS if plain(olds.get(k) or None) != plain(news.get(k) or None)]
        if (olds.get("connection") or {}).get("project") != (news.get("connection") or {}).get("project"):
            replaces.append("connection")
        updates = [k for k in UPDATE_KEYS if plain(olds.get(k)) != plain(news.get(k))]
        for k in ("ownerStack", "ownerId"):
            if olds.get(k) != news.get(k):
                updates.append(k)
        changes = replaces + updates
        return DiffResult(changes=bool(changes), replaces=replaces, stables=["name"],
                          delete_before_replace=True)

    def update(self, _id, olds, news):
        client = client_for(_conn(news))
        name = news["name"]
        inst = client.get_instance(name)
        if inst is None:
            raise IncusError(f"instance {name!r} disappeared; run `pulumi refresh` then `pulumi up` to recreate it")
        check_owner(inst, olds)
        self._converge(client, name, news, olds)
        inst = client.get_instance(name) or {}
        if inst.get("status") != "Running":
            client.set_state(name, "start")
            inst = client.wait_for_address(name)
        inst = self._wait_ipv6(client, name, props=news, inst=inst)
        return UpdateResult(outs=instance_outputs(news, inst))

    def delete(self, id_, props):
        client = client_for(_conn(props))
        inst = client.get_instance(id_)
        if inst is None:
            return
        check_owner(inst, props)
        uuid = (inst.get("config") or {}).get("volatile.uuid")
        if props.get("uuid") and uuid and uuid != props["uuid"]:
            # Same name and owner, but not the instance this resource made (another resource of the stack made
            # it since, e.g. a replacement under another URN): leave it.
            return
        client.delete_instance(id_)


class Instance(pulumi.dynamic.Resource, module="incus", name="Instance"):
    """An Incus instance owned by this stack. Outputs: address, ipv4, ipv6, uuid, status, userConfig."""

    address: pulumi.Output[str]
    ipv4: pulumi.Output[list]
    ipv6: pulumi.Output[list]
    uuid: pulumi.Output[str]
    status: pulumi.Output[str]

    @property
    def user_config(self) -> pulumi.Output[dict]:
        return getattr(self, "userConfig")

    def __init__(
        self,
        resource_name: str,
        *,
        name: str,
        image: str,
        connection: dict,
        owner_stack: str,
        owner_id: str,
        credentials: Optional[pulumi.Input[dict]] = None,
        profiles: Optional[list] = None,
        config: Optional[dict] = None,
        devices: Optional[dict] = None,
        instance_type: Optional[str] = None,
        target: Optional[str] = None,
        ignore_addresses: Optional[list] = None,
        image_fingerprint: Optional[str] = None,
        oci: Optional[dict] = None,
        address_families: Optional[list] = None,
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        props = {
            "name": name,
            "image": image,
            "connection": connection,
            "credentials": credentials or {},
            "ownerStack": owner_stack,
            "ownerId": owner_id,
            "profiles": profiles or [],
            "config": config or {},
            "devices": devices or {},
            "instanceType": instance_type,
            "target": target,
            "ignoreAddresses": ignore_addresses or [],
            "running": True,
            "oci": oci or {},
            # Not compared by diff: only how long create waits for addresses.
            "addressFamilies": address_families or ["inet"],
            "imageFingerprint": image_fingerprint or "",
            "project": connection.get("project", "default"),
            # outputs
            "address": None, "ipv4": None, "ipv6": None, "uuid": None, "status": None,
            "userConfig": None, "location": None,
        }
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["credentials"]))
        super().__init__(InstanceProvider(), resource_name, props, opts)
