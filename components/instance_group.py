"""InstanceGroup: plain instances the stack owns (a demo control plane, test backends)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.common import StackContext, instance_config
from providers.instance import Instance
from spec import InstanceGroupSpec


@dataclass
class InstanceGroupArgs:
    ctx: StackContext
    spec: InstanceGroupSpec
    image_fingerprint: str = ""


class InstanceGroup(pulumi.ComponentResource):
    def __init__(self, name: str, args: InstanceGroupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("cplb:group:InstanceGroup", name, None, opts)
        ctx, spec = args.ctx, args.spec
        self.instances: list[Instance] = []
        for n in range(1, spec.count + 1):
            incus_name = ctx.object_name(spec.name, str(n))
            self.instances.append(Instance(
                f"{name}-{n}",
                name=incus_name,
                image=spec.instance.image,
                image_fingerprint=args.image_fingerprint,
                connection=ctx.connection,
                credentials=ctx.credentials,
                address_families=ctx.address_families,
                owner_stack=ctx.stack,
                owner_id=f"group/{spec.name}",
                profiles=spec.instance.profiles,
                config=instance_config(spec.instance, spec.labels),
                devices=ctx.devices(spec.instance.network),
                instance_type=spec.instance.instance_type,
                target=ctx.placement(spec.instance.target, n),
                opts=pulumi.ResourceOptions(parent=self),
            ))
        self.addresses = pulumi.Output.all(*[i.address for i in self.instances])
        self.names = [ctx.object_name(spec.name, str(n)) for n in range(1, spec.count + 1)]
        self.register_outputs({"addresses": self.addresses})
