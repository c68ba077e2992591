"""incus-cplb: load the stack config, build one component per balancer, export what users need."""

import pulumi

import spec
from components import strategies
from components.common import StackContext
from components.instance_group import InstanceGroup, InstanceGroupArgs
from components.targets import resolve
from facts import Facts
from providers.incus_client import IncusError

try:
    stack_spec = spec.from_pulumi_config()
    ctx = StackContext(stack=pulumi.get_stack(), incus=stack_spec.incus,
                       ipv6=any("IPv6" in lb.ip_families for lb in stack_spec.load_balancers))
    facts = Facts(stack_spec.incus)
    strategies.check_all(ctx, stack_spec, facts)  # names, extensions, VIPs: before anything is registered
except (spec.SpecError, ValueError, IncusError) as exc:
    raise pulumi.RunError(str(exc)) from None

groups = {
    g.name: InstanceGroup(g.name, InstanceGroupArgs(
        ctx=ctx, spec=g, image_fingerprint=facts.image_fingerprint(f"cplb:instanceGroups[{i}].instance.image",
                                                                   g.instance.image)))
    for i, g in enumerate(stack_spec.instance_groups)
}
# Instances this stack creates, with their declared labels, so selectors see them in the same `up`.
stack_instances = {
    inst_name: (g.labels, resource)
    for g in stack_spec.instance_groups
    for inst_name, resource in zip(groups[g.name].names, groups[g.name].instances)
}

balancers = {}
for i, lb in enumerate(stack_spec.load_balancers):
    field = f"cplb:loadBalancers[{i}]"
    try:
        backends = resolve(lb, field, facts, ctx.stack, stack_instances)
    except (ValueError, IncusError) as exc:
        raise pulumi.RunError(str(exc)) from None
    try:
        balancers[lb.name] = strategies.build(lb.name, ctx, lb, field, facts, backends, stack_instances)
    except (ValueError, IncusError) as exc:
        raise pulumi.RunError(str(exc)) from None

pulumi.export("instanceGroups", {
    name: {"instances": group.names, "addresses": group.addresses} for name, group in groups.items()
})
pulumi.export("loadBalancers", {name: b.outputs for name, b in balancers.items()})
pulumi.export("routing", {name: b.routing for name, b in balancers.items()})
