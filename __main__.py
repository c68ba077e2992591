"""incus-cplb: load the stack config, build one component per balancer, export what users need."""

import pulumi

import spec
from components.common import StackContext
from components.instance_group import InstanceGroup, InstanceGroupArgs

try:
    stack_spec = spec.from_pulumi_config()
    ctx = StackContext(stack=pulumi.get_stack(), incus=stack_spec.incus)
    for g in stack_spec.instance_groups:  # every name is checked before anything is registered
        ctx.object_name(g.name, str(max(g.count, 1)))
except (spec.SpecError, ValueError) as exc:
    raise pulumi.RunError(str(exc)) from None

groups = {g.name: InstanceGroup(g.name, InstanceGroupArgs(ctx=ctx, spec=g)) for g in stack_spec.instance_groups}

pulumi.export("instanceGroups", {
    name: {"instances": group.names, "addresses": group.addresses} for name, group in groups.items()
})
