"""Dynamic provider `cplb:ovn:NetworkLoadBalancer`: an Incus network load balancer on an OVN network.

- create: one request with listen address, backends, ports and config (health check and ownership keys).
  A balancer already on that address that does not carry this stack's ownership keys is a conflict error:
  it is never taken over. One left by an interrupted `up` with our keys is adopted and updated.
- update: PUT with the ETag (backends, ports, health check change in place).
- read (refresh): the balancer as Incus has it (backend health is the status's: components/ovn.py).
- delete: only when the ownership keys say it is ours.
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import quote

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from providers.incus_client import Connection, IncusError, client_for
from providers.values import plain

OWNER_STACK = "user.cplb.stack"
OWNER_ID = "user.cplb.owner"
REPLACE_KEYS = ("network", "listenAddress")
UPDATE_KEYS = ("backends", "ports", "config", "description")


def _conn(props: dict) -> Connection:
    return Connection.from_props(props.get("connection") or {}, props.get("credentials") or {})


def _path(props: dict) -> str:
    return f"networks/{quote(props['network'])}/load-balancers/{quote(props['listenAddress'])}"


def request_body(props: dict) -> dict[str, Any]:
    """The Incus representation of the balancer (used for create, and without listen_address for PUT)."""
    config = {k: str(v) for k, v in (props.get("config") or {}).items()}
    config[OWNER_STACK] = props["ownerStack"]
    config[OWNER_ID] = props["ownerId"]
    return {
        "listen_address": props["listenAddress"],
        "description": props.get("description") or "",
        "config": config,
        "backends": [
            {"name": b["name"], "description": b.get("description", ""), "target_address": b["address"],
             "target_port": str(int(float(b["port"])))}
            for b in props.get("backends") or []
        ],
        "ports": [
            {"description": p.get("description", ""), "protocol": p["protocol"].lower(),
             "listen_port": str(int(float(p["listenPort"]))), "target_backend": list(p["targetBackends"])}
            for p in props.get("ports") or []
        ],
    }


def check_owner(existing: dict, props: dict) -> None:
    cfg = existing.get("config") or {}
    if cfg.get(OWNER_STACK) != props["ownerStack"] or cfg.get(OWNER_ID) != props["ownerId"]:
        who = f"stack {cfg[OWNER_STACK]!r}" if cfg.get(OWNER_STACK) else "someone else (no incus-cplb ownership keys)"
        raise IncusError(
            f"a network load balancer on {props['listenAddress']} already exists in network {props['network']!r} "
            f"and belongs to {who}; incus-cplb never takes it over. Pick another listen address or remove it."
        )


def backend_health(client, network: str, listen_address: str) -> Optional[dict[str, str]]:
    """Backend name -> online | offline | unknown, from the state endpoint (network_load_balancer_state); None when
    there is no such balancer. Read by the `ovn` strategy's status, not kept in this resource's state: it changes
    on its own, and a refresh would call that drift."""
    try:
        state = client.call("GET", f"{_path({'network': network, 'listenAddress': listen_address})}/state",
                            what="read load balancer state") or {}
    except IncusError as exc:
        return None if exc.status == 404 else {}
    out: dict[str, str] = {}
    for name, entry in (state.get("backend_health") or {}).items():  # keyed by backend name
        statuses = {p.get("status", "unknown") for p in (entry or {}).get("ports") or []}
        status = "online" if statuses == {"online"} else "offline" if "offline" in statuses else "unknown"
        out[name] = status
    return out


class NetworkLoadBalancerProvider(ResourceProvider):
    @staticmethod
    def _outs(_client, props: dict) -> dict:
        return {k: v for k, v in props.items() if k != "health"}

    def create(self, props):
        client = client_for(_conn(props))
        existing = self._get(client, props)
        body = request_body(props)
        if existing is not None:
            check_owner(existing, props)
            self._put(client, props)
        else:
            client.call("POST", f"networks/{quote(props['network'])}/load-balancers", json=body,
                        what=f"create network load balancer {props['listenAddress']}")
        return CreateResult(id_=f"{props['network']}/{props['listenAddress']}", outs=self._outs(client, props))

    @staticmethod
    def _get(client, props: dict) -> Optional[dict]:
        try:
            return client.call("GET", _path(props), what="read network load balancer")
        except IncusError as exc:
            if exc.status == 404:
                return None
            raise

    @staticmethod
    def _put(client, props: dict) -> None:
        _, etag = client.etag_get(_path(props), what="read network load balancer")
        body = request_body(props)
        body.pop("listen_address")
        client.call("PUT", _path(props), json=body, headers={"If-Match": etag} if etag else None,
                    what=f"update network load balancer {props['listenAddress']}")

    def update(self, _id, olds, news):
        client = client_for(_conn(news))
        existing = self._get(client, news)
        if existing is None:
            raise IncusError(f"network load balancer {news['listenAddress']} disappeared; run `pulumi refresh`")
        check_owner(existing, olds)
        self._put(client, news)
        return UpdateResult(outs=self._outs(client, news))

    def diff(self, _id, olds, news):
        replaces = [k for k in REPLACE_KEYS if olds.get(k) != news.get(k)]
        updates = [k for k in UPDATE_KEYS if plain(olds.get(k)) != plain(news.get(k))]
        return DiffResult(changes=bool(replaces or updates), replaces=replaces, delete_before_replace=True)

    def read(self, id_, props):
        client = client_for(_conn(props))
        existing = self._get(client, props)
        if existing is None:
            return ReadResult(id_="", outs={})
        cfg = existing.get("config") or {}
        observed = dict(props)
        observed["config"] = {k: v for k, v in cfg.items() if k not in (OWNER_STACK, OWNER_ID)}
        observed["backends"] = [
            {"name": b["name"], "address": b["target_address"], "port": int(b["target_port"]),
             **({"description": b["description"]} if b.get("description") else {})}
            for b in existing.get("backends") or []
        ]
        observed["ports"] = [
            {"protocol": p["protocol"].upper(), "listenPort": int(p["listen_port"]),
             "targetBackends": list(p.get("target_backend") or []),
             **({"description": p["description"]} if p.get("description") else {})}
            for p in existing.get("ports") or []
        ]
        observed["description"] = existing.get("description", "")
        return ReadResult(id_=id_, outs=self._outs(client, observed))

    def delete(self, _id, props):
        client = client_for(_conn(props))
        existing = self._get(client, props)
        if existing is None:
            return
        check_owner(existing, props)
        client.call("DELETE", _path(props), what=f"delete network load balancer {props['listenAddress']}")


class NetworkLoadBalancer(pulumi.dynamic.Resource, module="ovn", name="NetworkLoadBalancer"):
    """An Incus OVN network load balancer."""

    def __init__(
        self,
        resource_name: str,
        *,
        network: str,
        listen_address: str,
        backends: pulumi.Input[list],
        ports: list,
        config: dict,
        connection: dict,
        owner_stack: str,
        owner_id: str,
        credentials: Optional[pulumi.Input[dict]] = None,
        description: str = "",
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        props = {
            "network": network, "listenAddress": listen_address, "backends": backends, "ports": ports,
            "config": config, "connection": connection, "credentials": credentials or {},
            "ownerStack": owner_stack, "ownerId": owner_id, "description": description,
        }
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["credentials"]))
        super().__init__(NetworkLoadBalancerProvider(), resource_name, props, opts)
