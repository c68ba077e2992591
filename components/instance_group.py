"""InstanceGroup: plain instances the stack owns (stand-in workers, test backends). The stack pushes nothing into
them, so an image upgrade rebuilds each in place, one at a time (components/members.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pulumi

from components.common import StackContext, instance_config
from components.members import Members, build_members
from spec import InstanceGroupSpec

if TYPE_CHECKING:
    from facts import Facts


@dataclass
class InstanceGroupArgs:
    ctx: StackContext
    spec: InstanceGroupSpec
    field: str
    facts: "Facts"


class InstanceGroup(pulumi.ComponentResource):
    def __init__(self, name: str, args: InstanceGroupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("cplb:group:InstanceGroup", name, None, opts)
        ctx, spec = args.ctx, args.spec
        self.names = [ctx.object_name(spec.name, str(n)) for n in range(1, spec.count + 1)]
        self.instances = build_members(self, ctx, args.facts, Members(
            resource_names=[f"{name}-{n}" for n in range(1, spec.count + 1)], names=self.names,
            image=spec.instance.image, image_field=f"{args.field}.instance.image", owner_id=f"group/{spec.name}",
            config=instance_config(spec.instance, spec.labels), devices=ctx.devices(spec.instance.network),
            health={}, stateful=False,
            common={"profiles": spec.instance.profiles, "instance_type": spec.instance.instance_type},
            per_member=lambda n: {"target": ctx.placement(spec.instance.target, n)},
        ))
        self.addresses = pulumi.Output.all(*[i.address for i in self.instances])
        self.register_outputs({"addresses": self.addresses})
