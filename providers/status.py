"""Dynamic provider `cplb:status:BalancerStatus`: a balancer's conditions, read from the world.

- create / update: read once the balancer is in place. Its inputs are a probe (what to read: instance names,
  endpoints, VIPs, backend names; plain data the strategy's component builds) and a trigger (the hashes of the
  balancer's config files): a changed config or backend set reads again.
- read (`pulumi refresh`, and `make up`, which refreshes first): read again. Live conditions reach the outputs the
  way Pulumi brings live state in, so a preview of an unchanged stack has nothing to show, outputs included.
- diff: the probe and the trigger only.

The reading itself is the strategy's own: `read_status(probe, client)` in `components/<strategy>.py`, beside its
component. Reads only; the engine runs several at once (the provider serves 4 requests at a time, each thread with
its own Incus client).
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from providers.incus_client import Connection, client_for
from providers.values import plain

INPUT_KEYS = ("probe", "trigger", "connection", "credentials")
# Strategies that have a reader (the probe names one); a probe naming anything else is refused, not imported.
READERS = {"lxc", "oci", "keepalived", "ovn", "dns"}


def read(props: dict) -> dict:
    """What the strategy's reader finds: {"conditions": [...], "observed": {...}}."""
    probe = props["probe"]
    strategy = probe.get("strategy")
    if strategy not in READERS:
        raise ValueError(f"no status reader for strategy {strategy!r}")
    module = importlib.import_module(f"components.{strategy}")
    conn = Connection.from_props(props.get("connection") or {}, props.get("credentials") or {})
    found = module.read_status(plain(probe), lambda: client_for(conn))
    # The states of the instances the trigger watches, as this read saw them (see diff).
    watched = ((props.get("trigger") or {}) if isinstance(props.get("trigger"), dict) else {}).get("instances") or {}
    seen = {name: (client_for(conn).get_instance(name) or {}).get("status", "Missing") for name in watched}
    return {"conditions": found["conditions"], "observed": found.get("observed") or {}, "seen": seen}


def _inputs(props: dict) -> dict:
    return {k: props[k] for k in INPUT_KEYS if k in props}


class BalancerStatusProvider(ResourceProvider):
    def create(self, props):
        return CreateResult(id_=f"status/{props['probe'].get('balancer', '')}", outs={**props, **read(props)})

    def update(self, _id, _olds, news):
        return UpdateResult(outs={**news, **read(news)})

    def diff(self, _id, olds, news):
        changed = [k for k in ("probe", "trigger") if plain(olds.get(k)) != plain(news.get(k))]
        # An instance the last read (a refresh, say) saw in another state than `up` leaves it: read again.
        new_states = (news.get("trigger") or {}).get("instances") if isinstance(news.get("trigger"), dict) else None
        if isinstance(new_states, dict) and olds.get("seen") is not None and plain(olds["seen"]) != plain(new_states):
            changed.append("seen")
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def read(self, id_, props):
        # The inputs stay as they were (no `inputs=`): only the conditions are live.
        inputs = _inputs(props)
        return ReadResult(id_=id_, outs={**inputs, **read(inputs)})

    def delete(self, _id, _props):
        pass  # nothing in the world to remove: the status lives in the state only


class BalancerStatus(pulumi.dynamic.Resource, module="status", name="BalancerStatus"):
    """A balancer's conditions and what was observed with them (for example the node holding each VIP)."""

    conditions: pulumi.Output[list]
    observed: pulumi.Output[dict]

    def __init__(self, resource_name: str, *, probe: pulumi.Input[dict], trigger: pulumi.Input[Any],
                 connection: dict, credentials: pulumi.Input[dict],
                 opts: Optional[pulumi.ResourceOptions] = None):
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["credentials"]))
        super().__init__(BalancerStatusProvider(), resource_name, {
            "probe": probe, "trigger": trigger, "connection": connection, "credentials": credentials,
            "conditions": None, "observed": None, "seen": None,
        }, opts)
