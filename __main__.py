"""incus-cplb: load the stack config, build one component per balancer, export what users need."""

import dataclasses
import os

import pulumi

import spec
from components import strategies
from components.common import StackContext
from components.control_plane import ControlPlane, ControlPlaneArgs
from components.instance_group import InstanceGroup, InstanceGroupArgs
from components.targets import resolve
from facts import Facts
from providers.incus_client import IncusError
from providers.ownership import StackKey

try:
    stack_spec = spec.from_pulumi_config()
    facts = Facts(stack_spec.incus)
    ctx = StackContext(stack=pulumi.get_stack(), incus=stack_spec.incus,
                       ipv6=any("IPv6" in lb.ip_families for lb in stack_spec.load_balancers),
                       members=tuple(facts.cluster_members()),
                       # `make upgrade`: the stack's instances roll to the newest version of their images.
                       upgrade=os.environ.get("CPLB_UPGRADE") == "1")
    strategies.check_all(ctx, stack_spec, facts)  # names, extensions, VIPs: before anything is registered
    if stack_spec.kubernetes.publish and stack_spec.kubernetes.kubeconfig:
        from facts import kubernetes_access

        kubernetes_access("cplb:kubernetes.kubeconfig", stack_spec.kubernetes.kubeconfig)
except (spec.SpecError, ValueError, IncusError) as exc:
    raise pulumi.RunError(str(exc)) from None
# Every pre-flight check passed: the first resource. The key behind every object's proof of ownership
# (providers/ownership.py), made once and kept in the state.
ctx = dataclasses.replace(ctx, owner_key=StackKey("stack-key").key)

try:
    groups = {
        g.name: InstanceGroup(g.name, InstanceGroupArgs(ctx=ctx, spec=g, field=f"cplb:instanceGroups[{i}]", facts=facts))
        for i, g in enumerate(stack_spec.instance_groups)
    }
    # Real control planes: CA and instances now; certificates and services once their balancers exist (below).
    control_planes = {
        c.cluster: ControlPlane(c.name, ControlPlaneArgs(
            ctx=ctx, spec=c, field=f"cplb:controlPlanes[{i}]", facts=facts,
            bind_all=any(lb.cluster == c.cluster and lb.type == "external" and lb.external.kube_vip
                         for lb in stack_spec.load_balancers)))
        for i, c in enumerate(stack_spec.control_planes)
    }
except (ValueError, IncusError) as exc:  # an image that cannot roll without losing data, say
    raise pulumi.RunError(str(exc)) from None
# Instances this stack creates, with their declared labels, so selectors see them in the same `up`.
stack_instances = {
    inst_name: (g.labels, resource)
    for g in stack_spec.instance_groups
    for inst_name, resource in zip(groups[g.name].names, groups[g.name].instances)
}
for c in stack_spec.control_planes:
    cp = control_planes[c.cluster]
    stack_instances.update({n: (c.labels, r) for n, r in zip(cp.names, cp.instances)})
    if cp.workers is not None:
        stack_instances.update({n: (cp.workers.labels, r) for n, r in zip(cp.workers.names, cp.workers.instances)})

# A cluster's service balancers (the ingress in front of the workers) report their conditions once the demo workload's
# pods are ready, as its control-plane balancers do once the members answer: the first `up` reports what serves.
workload_ready = {c.cluster: pulumi.deferred_output() for c in stack_spec.control_planes
                  if c.workers.demo_workload and control_planes[c.cluster].workers is not None}


def ready_after(lb):
    cp = control_planes.get(lb.cluster)
    if cp is None:
        return None
    if lb.role == "service" and lb.cluster in workload_ready:
        return pulumi.Output.all(cp.ready, workload_ready[lb.cluster][0]).apply(lambda v: all(v))
    return cp.ready


balancers = {}
for i, lb in enumerate(stack_spec.load_balancers):
    field = f"cplb:loadBalancers[{i}]"
    try:
        backends = resolve(lb, field, facts, ctx.stack, stack_instances)
    except (ValueError, IncusError) as exc:
        raise pulumi.RunError(str(exc)) from None
    try:
        cp = control_planes.get(lb.cluster)
        balancers[lb.name] = strategies.build(lb.name, ctx, lb, field, facts, backends, stack_instances,
                                              cluster_ca=cp.ca_cert if cp else None, ready_after=ready_after(lb))
    except (ValueError, IncusError) as exc:
        raise pulumi.RunError(str(exc)) from None

# Each control plane's serving certificate names every endpoint of its cluster's balancers; its kubeconfig names
# the first control-plane balancer's endpoint (the VIP where there is one).
for c in stack_spec.control_planes:
    serving = [lb for lb in stack_spec.load_balancers if lb.cluster == c.cluster]
    front = next((lb for lb in serving if lb.role == "control-plane"), None)
    hosts = [getattr(balancers[lb.name], "endpoint_hosts", None) or balancers[lb.name].endpoint.apply(lambda e: [e])
             for lb in serving]
    try:
        control_planes[c.cluster].configure(
            pulumi.Output.all(*hosts).apply(lambda v: [h for hs in v for h in hs]),
            balancers[front.name].endpoint if front else control_planes[c.cluster].addresses.apply(
                lambda a: f"{a[0]}:6443"))
    except (ValueError, IncusError) as exc:  # a pre-flight refusal names its key path: no traceback
        raise pulumi.RunError(str(exc)) from None

# The demo workload on the workers, written through the cluster's balanced endpoint.
for c in stack_spec.control_planes:
    cp = control_planes[c.cluster]
    if c.cluster in workload_ready:
        from components.workload import DemoWorkload, DemoWorkloadArgs

        # Through the control-plane balancers (the kubeconfig's endpoint); the service balancers wait for it.
        fronts = [balancers[lb.name] for lb in stack_spec.load_balancers
                  if lb.cluster == c.cluster and lb.role == "control-plane"]
        workload = DemoWorkload(f"{c.cluster}-demo-workload", DemoWorkloadArgs(
            stack=ctx.stack, cluster=c.cluster, kubeconfig=cp.kubeconfig, after=[cp.workers, *fronts],
            ready=[cp.workers.pushed, *[b.outputs for b in fronts]]))
        workload_ready[c.cluster][1](workload.ready)

# Each balancer published into the cluster it serves, through the cluster's balanced endpoint.
if stack_spec.kubernetes.publish:
    from components.publish import Publication, PublicationArgs, Published

    for cluster in sorted({lb.cluster for lb in stack_spec.load_balancers}):
        # The stack's own clusters: the publication's scoped credential (components/access.py); another cluster:
        # the user's kubeconfig.
        access = (control_planes[cluster].publisher_kubeconfig if cluster in control_planes
                  else pulumi.Output.secret(stack_spec.kubernetes.kubeconfig))
        Publication(f"{cluster}-publish", PublicationArgs(
            stack=ctx.stack, cluster=cluster, kubeconfig=access,
            balancers=[Published(lb, balancers[lb.name].outputs, balancers[lb.name].routing, balancers[lb.name])
                       for lb in stack_spec.load_balancers if lb.cluster == cluster]))

pulumi.export("clusters", {
    cluster: {"controlPlane": cp.names, "addresses": cp.addresses, "kubeconfig": cp.kubeconfig,
              "workers": cp.workers.names if cp.workers else []}
    for cluster, cp in control_planes.items()
})
pulumi.export("instanceGroups", {
    name: {"instances": group.names, "addresses": group.addresses} for name, group in groups.items()
})
pulumi.export("loadBalancers", {
    lb.name: balancers[lb.name].outputs.apply(lambda o, lb=lb: {**o, "cluster": lb.cluster})
    for lb in stack_spec.load_balancers
})
pulumi.export("routing", {name: b.routing for name, b in balancers.items()})
