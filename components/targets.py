"""Backends of a balancer: explicit addresses, or instances picked by a label selector.

A selector matches two kinds of instance:
- instances that already exist in Incus (read through `facts`), except those this stack creates itself;
- instances this stack creates (instance groups), matched on their declared labels, so that one `up` on a
  fresh machine builds the control plane and a balancer that already points at it.
Drained instances (`user.cplb.disabled=true`) are left out of the rendered config: see docs/strategies.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pulumi

from facts import Facts, is_disabled, selector_matches
from spec import LoadBalancerSpec, TargetsSpec, ip_object

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class Backend:
    """One destination. `address` and `uuid` may be Outputs (instances created in this `up`)."""

    name: str
    address: Any
    uuid: Any = ""
    source: str = "address"  # address | instance | stack-instance
    resource: Any = None  # the Instance resource, for instances this stack creates
    address6: Any = ""  # the instance's IPv6 address (dual stack), or ""
    location: Any = ""  # the Incus cluster member it runs on ("" for an address, or on a standalone server)

    def __post_init__(self):
        if not _SAFE_NAME.fullmatch(self.name):
            raise ValueError(f"backend name {self.name!r} is not safe for a config file")


def checked_address(value: str, where: str) -> str:
    """Every address that reaches a config file goes through here."""
    try:
        return str(ip_object(value))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def resolve(lb: LoadBalancerSpec, field: str, facts: Facts, stack: str, stack_instances: dict) -> list[Backend]:
    """`stack_instances`: name -> (labels, Instance resource) for instances this stack creates."""
    return resolve_targets(lb.effective_targets(), field, facts, stack, stack_instances)


def resolve_targets(targets: TargetsSpec, field: str, facts: Facts, stack: str, stack_instances: dict) -> list[Backend]:
    if targets.addresses:
        out = []
        for t in targets.addresses:
            address = checked_address(t.address, f"{field}.targets")
            v6 = ":" in address
            out.append(Backend(t.name, "" if v6 else address, "", "address", address6=address if v6 else ""))
        return out
    selector = targets.selector
    backends: list[Backend] = []
    live = {inst.name: inst.labels for inst in facts.instances()}
    for name, (declared, resource) in sorted(stack_instances.items()):
        # Selected on the declared labels; drained by the operator's user.cplb.disabled=true on the instance too
        # (a label the stack does not declare: `up` and refresh never remove it).
        if selector_matches(selector, declared) and not is_disabled(declared) and not is_disabled(live.get(name, {})):
            backends.append(Backend(name, resource.address, resource.uuid, "stack-instance", resource,
                                    address6=resource.ipv6.apply(lambda v6: (v6 or [""])[0]),
                                    location=resource.location.apply(lambda loc: "" if loc in (None, "none") else loc)))
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
        backends.append(Backend(inst.name, checked_address(inst.ipv4[0], inst.name), inst.uuid, "instance",
                                address6=checked_address(inst.ipv6[0], inst.name) if inst.ipv6 else "",
                                location=inst.location))
    return sorted(backends, key=lambda b: b.name)


def routing(pairs: list[tuple[Backend, int]], families=("IPv4",)) -> "pulumi.Output[dict]":
    """Ironcore-style routing (LoadBalancerRouting): every resolved destination, one row per backend instance,
    address family and backend port, with the instance's name, Incus uuid and cluster member (`location`)."""
    rows = [(b.name, b.uuid, b.address, b.address6, port, b.location) for b, port in pairs]

    def table(rows):
        out = set()
        for name, uuid, v4, v6, port, location in rows:
            for family, address in (("IPv4", v4), ("IPv6", v6)):
                if address and family in families:
                    out.add((name, uuid or "", address, int(port), family, location or ""))
        return {"destinations": [{"name": n, "uuid": u, "address": a, "port": p, "family": f, "location": loc}
                                 for n, u, a, p, f, loc in sorted(out)]}

    return rows_of(rows).apply(table)


def rows_of(rows: list[tuple]) -> "pulumi.Output[list[tuple]]":
    """One Output of a list of rows whose values may be Outputs. Rows of plain values (explicit addresses, instances
    that exist) cost nothing: an Output per row is what made a balancer of 50 targets slow to preview."""
    def has_output(row) -> bool:
        return any(isinstance(v, pulumi.Output) for v in row)

    # (Output.from_input of a list would wrap every value of every row in an Output of its own: apply does not.)
    plain = pulumi.Output.from_input(None)
    if not any(has_output(r) for r in rows):
        return plain.apply(lambda _: [tuple(r) for r in rows])
    return pulumi.Output.all(*[pulumi.Output.all(*r) if has_output(r) else plain.apply(lambda _, r=r: list(r))
                               for r in rows]).apply(lambda done: [tuple(r) for r in done])


def port_pairs(backends: list[Backend], ports) -> list[tuple[Backend, int]]:
    """(backend, backend port) for every balanced port (a range is routed by its first port)."""
    return [(b, p.backend_port) for p in ports for b in backends]
