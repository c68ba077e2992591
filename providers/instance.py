"""Dynamic provider `cplb:incus:Instance`: an Incus instance the stack owns.

- create: makes and starts the instance (or adopts one left by an interrupted `up`: same name and this
  stack's ownership keys), then waits for its DHCP address so outputs carry it.
- read (refresh): the instance as it is; a deleted instance drops out of the state, so `up` recreates it.
- diff: name, type, target and project replace; config, profiles and devices update in place. A new image replaces
  the instance, unless the component says it can be rebuilt (`rebuild`: what the stack pushed lives on its state
  volume, or it pushes nothing): then it is an update that rolls (below).
- update with a new image, one member at a time (the component chains its members, so the next one's update starts
  only when this one's has returned): wait until the other members (`rollout.peers`) are healthy, stop this one
  gracefully (its services leave as on any shutdown: keepalived hands the VIP over, kube-apiserver fails /readyz and
  drains), rebuild its root disk from the new image (name, address and state volume kept), start it and wait until it
  is healthy again (`rollout.health`, providers/rollout.py). What the world says decides, not the state: an `up`
  killed midway finds the member on its old image, stopped or rebuilt, and goes on from there.
- delete: stops and deletes, only when the ownership keys say it is ours.
"""

from __future__ import annotations

import contextlib
import threading
import time
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

from providers import rollout
from providers.incus_client import Connection, IncusError, addresses_of, client_for
from providers.ownership import PROOF, make_proof, not_proven_message, proven
from providers.values import plain

OWNER_STACK = "user.cplb.stack"
OWNER_ID = "user.cplb.owner"
REPLACE_KEYS = ("name", "image", "imageFingerprint", "instanceType", "target", "project", "oci")
# With `rebuild`, a new image is an update (a rebuild in place), not a replacement.
IMAGE_KEYS = ("image", "imageFingerprint")
UPDATE_KEYS = ("config", "profiles", "devices", "running")
# How long a rolling rebuild waits: for the other members before this one goes down, and for this one after.
ROLL_WAIT_SECONDS = 600.0
STOP_SECONDS = 30
# One member of the whole stack down at a time. The engine serves every dynamic resource of an `up` from one provider
# process, so this lock spans all groups: the control plane, a balancer's replicas and the workers each roll one
# member at a time, and no two of them overlap (two rebuilds at once, a control-plane member and a worker, stalled a
# 2-CPU machine's every request for 1.4 s: docs/benchmarks.md, the embedded default).
ONE_MEMBER_DOWN = threading.Lock()
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
    if props.get("ownerKey"):  # in the creating request itself: never an instance of ours without it
        body["config"][PROOF] = make_proof(props["ownerKey"], "instance", _project(props), props["name"])
    if props.get("instanceType"):
        body["instance_type"] = props["instanceType"]
    return body


def _project(props: dict) -> str:
    return (props.get("connection") or {}).get("project") or "default"


def check_adoptable(inst: dict, props: dict) -> None:
    """An existing instance with our name is adopted (an `up` was killed while it made it) only when it carries our
    labels and our proof (providers/ownership.py)."""
    check_owner(inst, props)
    if props.get("ownerKey") and not proven(props["ownerKey"], "instance", _project(props), inst["name"], inst):
        raise IncusError(not_proven_message("instance", inst["name"]))


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
    if inst.get("status") != "Running" and not (addrs.get("inet") or addrs.get("inet6")):
        # A stopped instance shows no address, but keeps its own (its MAC keeps the lease, SLAAC the same IPv6): a
        # refresh while a member is down for a rollout must not take its address out of the certificates, the
        # balancers' configs and the etcd flags that name it.
        addrs = {"inet": list(props.get("ipv4") or []), "inet6": list(props.get("ipv6") or [])}
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
            check_adoptable(existing, props)  # ours, left by an interrupted `up`: adopt it
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
        changed = [k for k in REPLACE_KEYS if plain(olds.get(k) or None) != plain(news.get(k) or None)]
        if "target" in changed and not olds.get("target") and news.get("target") == olds.get("location"):
            # A placement newly declared where the instance already runs (a stack made before its group was spread
            # over the cluster's members) moves nothing: recorded by an update, not a replacement.
            changed.remove("target")
            placed = ["target"]
        else:
            placed = []
        rebuilds = [k for k in changed if k in IMAGE_KEYS and news.get("rebuild") and not news.get("oci")]
        replaces = [k for k in changed if k not in rebuilds]
        if (olds.get("connection") or {}).get("project") != (news.get("connection") or {}).get("project"):
            replaces.append("connection")
        updates = rebuilds + placed + [k for k in UPDATE_KEYS if plain(olds.get(k)) != plain(news.get(k))]
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
        target = news.get("imageFingerprint") or ""
        rolled = bool(news.get("rebuild") and target and
                      (inst.get("config") or {}).get("volatile.base_image") != target)
        # A member that was down (rolled now, or left stopped by a killed rollout) is healthy again before the next goes.
        wait_back = bool(news.get("rebuild")) and (rolled or inst.get("status") != "Running")
        had = addresses_of(inst, frozenset(news.get("ignoreAddresses") or []))
        with contextlib.ExitStack() as down:
            if wait_back:
                down.enter_context(ONE_MEMBER_DOWN)
            if rolled:
                self._roll(client, name, news, inst, down)
            self._converge(client, name, news, olds)
            inst = client.get_instance(name) or {}
            if inst.get("status") != "Running":
                client.set_state(name, "start")
                inst = client.wait_for_address(name)
            inst = self._wait_ipv6(client, name, props=news, inst=inst)
            if wait_back:
                self._wait_back(client, name, news)
        if rolled:
            # The same MAC brings the same addresses back (DHCP lease, SLAAC), the IPv6 one a moment after the IPv4
            # one: outputs taken before it would drop it, and reissue every certificate that names it.
            inst = self._wait_addresses(client, name, had) or inst
        return UpdateResult(outs=instance_outputs(news, inst))

    @staticmethod
    def _roll(client, name: str, props: dict, inst: dict, down: contextlib.ExitStack) -> None:
        """Take this member down for its rebuild: only while the others serve, and gracefully."""
        plan = props.get("rollout") or {}
        health = plan.get("health") or {}
        wait = float(plan.get("waitSeconds") or ROLL_WAIT_SECONDS)
        peers = [p for p in plan.get("peers") or [] if p != name]
        # A member that is not serving (stopped, or left half-done by a killed `up`) costs nothing to take down; one
        # that serves waits until every other member does too (for etcd: quorum with this one gone).
        if peers and rollout.member_health(client, name, health)[0]:
            problem = rollout.wait_healthy(client, peers, health, wait)
            if problem:
                raise IncusError(f"not rolling {name} to its new image: the other members are not all healthy after "
                                 f"{wait:.0f}s ({problem}); a rollout takes a member down only while the others "
                                 "serve. Nothing was changed; run `up` again once they are.")
        if inst.get("status") != "Stopped":
            # Out of its name's records (a dns proxy node) until it is back and healthy: the end of `down`.
            down.enter_context(rollout.withdrawn_from_dns(name, inst, plan.get("withdraw")))
            seconds = int(plan.get("stopSeconds") or STOP_SECONDS)
            with rollout.connections_handed_over(client, name, inst, peers, health, props.get("ignoreAddresses")):
                try:
                    client.set_state(name, "stop", timeout=seconds)
                except IncusError:
                    # A stop already under way (asked by an `up` that was killed) gets its bound too: a forced stop
                    # cuts etcd and the API server's requests in flight. Forced only when the member is still up after.
                    if not InstanceProvider._stopped_within(client, name, seconds):
                        client.set_state(name, "stop", force=True)
        fingerprint = props["imageFingerprint"]
        client.call("POST", f"instances/{name}/rebuild", json={"source": {"type": "image", "fingerprint": fingerprint}},
                    what=f"rebuild instance {name} from image {fingerprint[:12]}")

    @staticmethod
    def _stopped_within(client, name: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (client.get_instance(name) or {}).get("status") not in ("Stopped", None):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)
        return True

    @staticmethod
    def _wait_addresses(client, name: str, had: dict, seconds: float = 20.0) -> Optional[dict]:
        """The instance once every address it had before its rebuild is back (bounded); None if some is not."""
        wanted = set(had.get("inet", []) + had.get("inet6", []))
        deadline = time.monotonic() + seconds
        while True:
            inst = client.get_instance(name) or {}
            found = addresses_of(inst)
            if wanted <= set(found.get("inet", []) + found.get("inet6", [])):
                return inst
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.25)

    @staticmethod
    def _wait_back(client, name: str, props: dict) -> None:
        """The next member goes down only once this one is healthy again."""
        plan = props.get("rollout") or {}
        wait = float(plan.get("waitSeconds") or ROLL_WAIT_SECONDS)
        problem = rollout.wait_healthy(client, [name], plan.get("health") or {}, wait)
        if problem:
            raise IncusError(f"{name} runs its new image but is not healthy after {wait:.0f}s ({problem}); the "
                             "rollout stops here, with the other members untouched. Fix it and run `up` again.")

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
        owner_key: Optional[pulumi.Input[str]] = None,
        oci: Optional[dict] = None,
        address_families: Optional[list] = None,
        rebuild: bool = False,
        rollout: Optional[pulumi.Input[dict]] = None,
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
        # Only when set, so existing resources see no new input. Neither is compared by diff: they say how an image
        # change is applied, not what the instance is.
        # The stack key proves at creation that the instance is ours (providers/ownership.py); not compared by diff.
        props |= {k: v for k, v in {"rebuild": rebuild or None, "rollout": rollout,
                                    "ownerKey": pulumi.Output.secret(owner_key) if owner_key is not None else None,
                                    }.items() if v is not None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            additional_secret_outputs=["credentials", "ownerKey"]))
        super().__init__(InstanceProvider(), resource_name, props, opts)
