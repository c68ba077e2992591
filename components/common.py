"""Pieces every component shares: naming, ownership, and how instances attach to the Incus target."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import pulumi

from spec import IncusSpec, InstanceSpec, LoadBalancerSpec

if TYPE_CHECKING:
    from facts import Facts

_NAME_OK = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class StackContext:
    """What every component needs to know about the stack it belongs to."""

    stack: str
    incus: IncusSpec
    ipv6: bool = False  # some balancer serves IPv6: instances wait for their SLAAC address too
    members: tuple = ()  # the Incus cluster's members by name; () on a standalone server
    upgrade: bool = False  # roll the stack's instances to the newest version of their images (`make upgrade`)
    owner_key: Any = None  # the stack key (a secret Output): proves at creation that an object is the stack's

    def placement(self, target: Optional[str], replica: int) -> Optional[str]:
        """The member replica `replica` (1-based) of a balancer or control plane goes to: the one the config names,
        else the members in turn, so that losing one member loses one replica. The order is by name over every
        member (a member that is down keeps its place), so a placement does not move while the cluster stays."""
        if target or not self.members:
            return target
        return self.members[(replica - 1) % len(self.members)]

    def object_name(self, *parts: str) -> str:
        """`<stack>-<part>-...`: deterministic, so an interrupted `up` can adopt what it made."""
        name = "-".join([self.stack, *parts])
        if not _NAME_OK.fullmatch(name):
            raise ValueError(
                f"the Incus object name {name!r} (from stack {self.stack!r}) is not a valid instance name: use "
                "lower-case letters, digits and '-', at most 63 characters"
            )
        return name

    @property
    def connection(self) -> dict:
        """Connection settings as provider inputs (the client key travels separately, as a secret)."""
        c = self.incus
        return {k: v for k, v in {
            "socket": c.socket, "remote": c.remote, "project": c.project,
            "clientCert": c.client_cert, "serverCert": c.server_cert,
        }.items() if v}

    @property
    def credentials(self) -> pulumi.Input[dict]:
        if self.incus.client_key:
            return pulumi.Output.secret({"clientKey": self.incus.client_key})
        return {}

    @property
    def address_families(self) -> list[str]:
        return ["inet", "inet6"] if self.ipv6 else ["inet"]

    def devices(self, network: Optional[str] = None) -> dict:
        return {
            "root": {"type": "disk", "path": "/", "pool": self.incus.storage_pool},
            "eth0": {"type": "nic", "name": "eth0", "network": network or self.incus.network},
        }


def instance_config(spec: InstanceSpec, labels: Optional[dict] = None) -> dict:
    config = dict(labels or {})
    if spec.limits.cpu:
        config["limits.cpu"] = spec.limits.cpu
    if spec.limits.memory:
        config["limits.memory"] = spec.limits.memory
    return config


@dataclass
class LoadBalancerArgs:
    """What every strategy component gets."""

    ctx: StackContext
    spec: LoadBalancerSpec
    field: str  # config key path, for messages: cplb:loadBalancers[i]
    facts: "Facts"
    backends: list[Any]  # components.targets.Backend
    stack_instances: dict = dataclasses.field(default_factory=dict)  # instances this stack creates
    cluster_ca: Any = None  # PEM of the cluster's CA when the stack has its control plane (verifies checks)
    ready_after: Any = None  # conditions are read once this resolves (the cluster's control plane answering)
