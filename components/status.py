"""Status conditions of a balancer as stack outputs (the Cluster API proposal's conditions, Ironcore's status):

- Exists: everything the strategy provisions is there (instances running, the OVN balancer present).
- Ready: the endpoint answers a TCP connection now.
- BackendsHealthy: n of m backends healthy, as the balancer itself sees them where it can tell (haproxy's runtime
  API, the OVN state endpoint) and by a TCP probe of the backend where it cannot (nginx stream, keepalived nodes).
- DNSResolvable (dns only): the stack's DNS server answers the name with exactly the published addresses.

Read by a BalancerStatus resource (providers/status.py) when `up` creates or changes the balancer, after its config
files are in place, and at every refresh (`make up` refreshes first). Each strategy's `read_status(probe, client)`,
in its own module, does the reading; this module holds what they share.
"""

from __future__ import annotations

from typing import Optional

import pulumi

from providers.status import BalancerStatus


def condition(kind: str, ok: Optional[bool], reason: str, message: str) -> dict:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": kind, "status": status, "reason": reason, "message": message}


def backends_condition(healthy: int, total: int, source: str) -> dict:
    if total == 0:
        return condition("BackendsHealthy", False, "NoBackends", "no backend selected")
    ok = healthy == total
    reason = "AllHealthy" if ok else ("SomeUnhealthy" if healthy else "NoneHealthy")
    return condition("BackendsHealthy", ok, reason, f"{healthy} of {total} healthy ({source})")


def ready_condition(endpoints: list[str], answers) -> dict:
    if not endpoints:
        return condition("Ready", False, "NoEndpoint", "no endpoint address yet")
    down = [e for e in endpoints if not answers(e)]
    if down:
        return condition("Ready", False, "NotAnswering", f"no answer from {', '.join(down)}")
    return condition("Ready", True, "Answering", f"{', '.join(endpoints)} accepted a connection")


def balancer_status(name: str, parent: pulumi.Resource, ctx, probe: pulumi.Input[dict],
                    trigger: pulumi.Input = None, after: pulumi.Input = None,
                    instances: tuple = ()) -> tuple[pulumi.Output, pulumi.Output]:
    """The balancer's `status` output, {"conditions": [...]}, and what was observed with it (for example the node
    holding each VIP), read by a BalancerStatus resource
    (providers/status.py) with the strategy's own `read_status(probe, client)`. Read at `up` once `trigger` (the
    config files' hashes) and `after` (for example the cluster's control plane answering) resolve, and again at
    every refresh; a preview of an unchanged stack shows the conditions of the last read, so nothing changes."""
    if after is not None:
        trigger = pulumi.Output.all(trigger, after).apply(lambda v: v[0])
    # The stack's own instances the balancer runs on or sends to: one that `up` starts again (a refresh found it
    # stopped) changes its `status`, and the conditions are read again once it runs.
    # The provider compares their states with what its last read saw (a refresh that found one stopped, then an
    # `up` that starts it: read again).
    watched = list({id(i): i for i in instances if i is not None}.values())
    trigger = pulumi.Output.all(trigger, *[pulumi.Output.all(i.name, i.status) for i in watched]).apply(
        lambda v: {"config": v[0], "instances": {n: st for n, st in v[1:]}})
    status = BalancerStatus(f"{name}-status", probe=probe, trigger=trigger, connection=ctx.connection,
                            credentials=ctx.credentials, opts=pulumi.ResourceOptions(parent=parent))
    return status.conditions.apply(lambda c: {"conditions": list(c or [])}), status.observed.apply(lambda o: o or {})
