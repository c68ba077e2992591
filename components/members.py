"""The instances of a group (control-plane members, haproxy replicas, proxy nodes, plain instances), made so that
every later change rolls one member at a time. What every component that makes instances shares:

- the image is a version the group keeps (facts.image_plan): a rebuilt image waits for `make upgrade`;
- each member that holds pushed state has its own state volume (providers/volume.py), so an image change rebuilds its
  root disk in place and keeps its name, address, certificates, configs and etcd data;
- members are chained in their rollout order (each depends on the one before), so the engine starts a member's
  rebuild only once the one before it is back and healthy (providers/instance.py waits for that, and for the
  others to be healthy before it takes one down);
- the preview says what will roll, in which order, and what a single member's rollout costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Optional

import pulumi

from components.common import StackContext
from facts import ImagePlan
from providers.instance import Instance
from providers.volume import STATE_DEVICE, StorageVolume, state_device


@dataclass
class Members:
    """A group of instances, by position (1-based member n is `names[n - 1]`)."""

    resource_names: list[str]  # Pulumi resource names
    names: list[str]  # Incus instance names
    image: str  # the configured image alias
    image_field: str  # its stack-config key path, for messages
    owner_id: str
    config: dict
    devices: dict  # root and eth0 (StackContext.devices)
    health: pulumi.Input[dict]  # what healthy means for a member (providers/rollout.py)
    stateful: bool = True  # the stack pushes files into the members: they need a state volume to be rebuilt
    order: Optional[list[int]] = None  # positions (0-based) in rollout order; default: the last member first
    stop_seconds: int = 30
    wait_seconds: int = 600
    per_member: Any = None  # n (1-based) -> extra Instance keyword arguments (target, ignore_addresses, oci...)
    common: dict = dc_field(default_factory=dict)  # Instance keyword arguments every member shares
    singleton_note: str = ""  # a group of one: what its rollout costs, said in the preview
    # Where a member's address is withdrawn from before it goes down (providers/rollout.withdrawn_from_dns): a secret,
    # since it carries the key that signs the updates.
    withdraw: Optional[pulumi.Input[dict]] = None


def build_members(parent: pulumi.Resource, ctx: StackContext, facts, group: Members) -> list[Instance]:
    """The group's instances, in position order (their volumes and chain made here)."""
    # An OCI application container comes from a registry, not a local image version: it is replaced, not rebuilt.
    rebuildable = group.common.get("oci") is None
    plan = facts.image_plan(group.image_field, group.image, group.names, ctx.stack, ctx.upgrade) if rebuildable \
        else ImagePlan("", "", {})
    order = group.order if group.order is not None else list(reversed(range(len(group.names))))
    out: list[Optional[Instance]] = [None] * len(group.names)
    previous: Optional[Instance] = None
    for i in order:
        name, n = group.names[i], i + 1
        exists = facts.exists(name)
        volume_device = group.stateful and rebuildable and (not exists or facts.has_device(name, STATE_DEVICE))
        # Rebuilt in place only where nothing is lost: what the stack pushed is on the state volume, or it pushes
        # nothing. An instance from before state volumes keeps its image (a rebuild would lose its data).
        rebuild = rebuildable and (not group.stateful or not exists or facts.keeps_state(name))
        if plan.rolls(name) and not rebuild:
            raise ValueError(
                f"{group.image_field}: {name} keeps its etcd data and pushed files on its root disk (it was made "
                f"before instances had a state volume), so rolling it to image {plan.fingerprint[:12]} would lose "
                "them. Run a plain `make up` to keep the image it runs; to move it, recreate it")
        devices = dict(group.devices)
        depends = []
        placement = {**group.common, **(group.per_member(n) if group.per_member else {})}
        if volume_device:
            # On the member the instance is placed on (an Incus cluster's local pool keeps a volume on one member).
            volume = StorageVolume(f"{group.resource_names[i]}-state", name=f"{name}-state", pool=ctx.incus.storage_pool,
                                   connection=ctx.connection, credentials=ctx.credentials, owner_stack=ctx.stack,
                                   owner_id=group.owner_id, owner_key=ctx.owner_key, target=placement.get("target"),
                                   opts=pulumi.ResourceOptions(parent=parent))
            devices[STATE_DEVICE] = state_device(f"{name}-state", ctx.incus.storage_pool)
            depends.append(volume)
        rollout = pulumi.Output.all(group.health, group.withdraw).apply(lambda v: {
            "health": v[0], "peers": list(group.names), "stopSeconds": group.stop_seconds,
            "waitSeconds": group.wait_seconds, **({"withdraw": v[1]} if v[1] else {})})
        secret = pulumi.ResourceOptions(additional_secret_outputs=["rollout"]) if group.withdraw is not None else None
        out[i] = Instance(
            group.resource_names[i], name=name, image=group.image, image_fingerprint=plan.fingerprint,
            connection=ctx.connection, credentials=ctx.credentials, address_families=ctx.address_families,
            owner_stack=ctx.stack, owner_id=group.owner_id, owner_key=ctx.owner_key, config=group.config,
            devices=devices, rebuild=rebuild, rollout=rollout,
            opts=pulumi.ResourceOptions.merge(
                pulumi.ResourceOptions(parent=parent, depends_on=depends + ([previous] if previous else [])), secret),
            **placement,
        )
        previous = out[i]
    say_plan(group, plan, order)
    return [inst for inst in out if inst is not None]


def say_plan(group: Members, plan, order: list[int]) -> None:
    """The preview's (and up's) word on the group's image: what rolls, in which order, what a newer version waits for."""
    rolling = [group.names[i] for i in order if plan.rolls(group.names[i])]
    if rolling:
        pulumi.log.info(f"{group.image_field}: rolling {', then '.join(rolling)} to image {plan.fingerprint[:12]}, "
                        "one at a time: each member is rebuilt in place (its name and address kept, and its state volume where it has one) once "
                        "the others are healthy, and the next waits until it is healthy again")
        if len(group.names) == 1 and group.singleton_note:
            pulumi.log.warn(f"{group.image_field}: {group.names[0]} is the only replica: {group.singleton_note}")
    elif plan.running and plan.latest != plan.fingerprint:
        pulumi.log.info(f"{group.image_field}: a newer version of {group.image} is built ({plan.latest[:12]}); the "
                        f"stack keeps {plan.fingerprint[:12]} until `make upgrade` rolls it, one member at a time")
