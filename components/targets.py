"""Backends of a balancer: explicit addresses, or instances picked by a label selector.

A selector matches two kinds of instance:
- instances that already exist in Incus (read through `facts`), except those this stack creates itself;
- instances this stack creates (instance groups), matched on their declared labels, so that one `up` on a
  fresh machine builds the control plane and a balancer that already points at it.
Drained instances (`user.cplb.disabled=true`) are left out of the rendered config: see docs/strategies.md.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import pulumi

from facts import Facts, is_disabled, selector_matches
from spec import LoadBalancerSpec, TargetsSpec

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class Backend:
    """One destination. `address` and `uuid` may be Outputs (instances created in this `up`)."""

    name: str
    address: Any
    uuid: Any = ""
    source: str = "address"  # address | instance | stack-instance
    resource: Any = None  # the Instance resource, for instances this stack creates

    def __post_init__(self):
        if not _SAFE_NAME.match(self.name):
            raise ValueError(f"backend name {self.name!r} is not safe for a config file")


def checked_address(value: str, where: str) -> str:
    """Every address that reaches a config file goes through here."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not an IP address") from None


def resolve(lb: LoadBalancerSpec, field: str, facts: Facts, stack: str, stack_instances: dict) -> list[Backend]:
    """`stack_instances`: name -> (labels, Instance resource) for instances this stack creates."""
    return resolve_targets(lb.effective_targets(), field, facts, stack, stack_instances)


def resolve_targets(targets: TargetsSpec, field: str, facts: Facts, stack: str, stack_instances: dict) -> list[Backend]:
    if targets.addresses:
        return [Backend(t.name, checked_address(t.address, f"{field}.targets"), "", "address")
                for t in targets.addresses]
    selector = targets.selector
    backends: list[Backend] = []
    for name, (labels, resource) in sorted(stack_instances.items()):
        if selector_matches(selector, labels) and not is_disabled(labels):
            backends.append(Backend(name, resource.address, resource.uuid, "stack-instance", resource))
    for inst in facts.instances():
        owner = inst.owner_id or ""
        if inst.name in stack_instances or owner.startswith("lb/"):
            continue  # declared above, or any balancer's own instance
        if inst.owner_stack == stack and owner.startswith("group/"):
            continue  # this stack's instance that the config no longer has: `up` deletes it
        if not selector_matches(selector, inst.labels) or is_disabled(inst.labels):
            continue
        if inst.status != "Running" or not inst.ipv4:
            pulumi.log.warn(f"{field}: instance {inst.name} matches the selector but has no address "
                            f"({inst.status}); left out")
            continue
        backends.append(Backend(inst.name, checked_address(inst.ipv4[0], inst.name), inst.uuid, "instance"))
    return sorted(backends, key=lambda b: b.name)


def routing(backends: list[Backend]) -> "pulumi.Output[dict]":
    """Ironcore-style routing: one destination per backend instance (however many ports or roles reach it),
    with its name, address and Incus uuid."""
    rows = [pulumi.Output.all(b.name, b.address, b.uuid) for b in backends]
    return pulumi.Output.all(*rows).apply(lambda rows: {"destinations": [
        {"name": n, "address": a, "uuid": u} for n, a, u in sorted({tuple(r) for r in rows if r[1]})]})
