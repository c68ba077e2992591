"""Status conditions of a balancer as stack outputs (the Cluster API proposal's conditions, Ironcore's status):

- Exists: everything the strategy provisions is there (instances running, the OVN balancer present).
- Ready: the endpoint answers a TCP connection now.
- BackendsHealthy: n of m backends healthy, as the balancer itself sees them where it can tell (haproxy's runtime
  API, the OVN state endpoint) and by a TCP probe of the backend where it cannot (nginx stream, keepalived nodes).
- DNSResolvable (dns only): the stack's DNS server answers the name with exactly the published addresses.

Read when `up` runs, after the config files are in place; a preview reports every condition `Unknown`.
"""

from __future__ import annotations

from typing import Optional

import pulumi


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


def at_up(inputs: pulumi.Input, compute, kinds: tuple[str, ...] = ("Exists", "Ready", "BackendsHealthy"),
          after: pulumi.Input = None):
    """`compute(values)` -> conditions, run at `up` once `inputs` resolve (and `after`: for example the cluster's
    control plane answering); Unknown conditions in a preview."""
    if pulumi.runtime.is_dry_run():
        return pulumi.Output.from_input(
            {"conditions": [condition(k, None, "Preview", "read at `pulumi up`") for k in kinds]})
    if after is not None:
        inputs = pulumi.Output.all(inputs, after).apply(lambda v: v[0])
    return pulumi.Output.from_input(inputs).apply(lambda v: {"conditions": compute(v)})
