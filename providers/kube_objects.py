"""Dynamic provider `cplb:k8s:ClusterObjects`: RBAC objects applied in a cluster the stack runs, straight to its
members' API servers with the admin credential, as kubeadm's init applies its bootstrap RBAC.

Not through the balanced endpoint: what is applied here may be what the endpoint needs to come up (kube-vip's Lease
rights: no VIP before them). Each call goes to the first member that answers.

- create/update: server-side apply of every object (field manager `incus-cplb`); an update also deletes the objects
  that left the list. A first `up` waits (bounded) for a member to answer.
- read (`pulumi refresh`): what the cluster holds of each object, in the fields this resource sets; a deleted or
  edited object shows as a change and the next `up` applies it again.
- delete: each object deleted; a cluster that no longer answers (its members went first) has nothing left to clean.

The admin key is a secret input (`tls`). No import-time side effects; one short-lived TLS context per call.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from providers.memfile import MemFile

FIELD_MANAGER = "incus-cplb"
WAIT_SECONDS = 180.0
DELETE_WAIT_SECONDS = 20.0
# The kinds this provider applies, by (apiVersion, kind): the collection's path and whether it is namespaced.
KINDS = {
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings",
                                                             False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
}
# What an object of these kinds says, besides its identity: compared at refresh.
CONTENT = ("rules", "roleRef", "subjects")


class KubeApiError(Exception):
    pass


class Unreachable(KubeApiError):
    """No member answered."""


def object_path(obj: dict) -> str:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in KINDS:
        raise KubeApiError(f"cplb:k8s:ClusterObjects applies only {sorted(k for _, k in KINDS)}, not {key[1]!r}")
    prefix, plural, namespaced = KINDS[key]
    meta = obj["metadata"]
    where = f"/namespaces/{meta['namespace']}" if namespaced else ""
    return f"{prefix}{where}/{plural}/{meta['name']}"


def identity(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']}/{meta.get('namespace', '')}/{meta['name']}"


def projected(obj: dict, like: dict) -> dict:
    """`obj` as the cluster returns it, cut to what `like` (the object as applied) sets: identity, its labels and
    its content."""
    meta, want = obj.get("metadata") or {}, like["metadata"]
    out = {"apiVersion": like["apiVersion"], "kind": like["kind"],
           "metadata": {k: meta.get(k) for k in ("name", "namespace") if k in want}}
    if "labels" in want:
        have = meta.get("labels") or {}
        out["metadata"]["labels"] = {k: have[k] for k in want["labels"] if k in have}
    for key in CONTENT:
        if key in like:
            out[key] = obj.get(key)
    return out


def _body(raw: bytes) -> dict:
    """An answer's JSON object; a plain-text one (`/readyz` says `ok`) as {"text": ...}."""
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        return {"text": raw.decode(errors="replace")}
    return answer if isinstance(answer, dict) else {"value": answer}


class KubeApi:
    """The cluster's members' API servers, asked in turn, the server verified against the cluster CA."""

    def __init__(self, servers: list[str], tls: dict, timeout: float = 5.0):
        self.servers, self.tls, self.timeout = list(servers), tls, timeout

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.tls["ca"])
        with MemFile(self.tls["cert"] + self.tls["key"], "cplb-kube-client") as pem:
            ctx.load_cert_chain(pem.path)
        return ctx

    def call(self, method: str, path: str, body: Optional[dict] = None,
             content_type: str = "application/json") -> tuple[int, dict]:
        """(status, body) of the first member that answers; Unreachable when none does."""
        ctx, errors = self._context(), []
        for server in self.servers:
            request = urllib.request.Request(f"https://{server}{path}", method=method,
                                             data=json.dumps(body).encode() if body is not None else None,
                                             headers={"Content-Type": content_type, "Accept": "application/json"})
            try:
                with urllib.request.urlopen(request, context=ctx, timeout=self.timeout) as response:
                    return response.status, _body(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code >= 500:  # a member that is starting or stopping: ask the next one
                    errors.append(f"{server}: HTTP {exc.code}")
                    continue
                return exc.code, _body(exc.read())
            except OSError as exc:
                errors.append(f"{server}: {getattr(exc, 'reason', exc)}")
        raise Unreachable("no API server answered: " + "; ".join(errors))

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                status, _ = self.call("GET", "/readyz")
                if status == 200:
                    return
            except Unreachable:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise Unreachable(f"no API server was ready within {seconds:.0f} s")
            time.sleep(1)

    def apply(self, obj: dict) -> None:
        status, answer = self.call("PATCH", f"{object_path(obj)}?fieldManager={FIELD_MANAGER}&force=true", obj,
                                   "application/apply-patch+yaml")
        if status not in (200, 201):
            raise KubeApiError(f"applying {identity(obj)}: HTTP {status} {answer.get('message', '')}")

    def get(self, obj: dict) -> Optional[dict]:
        status, answer = self.call("GET", object_path(obj))
        if status == 404:
            return None
        if status != 200:
            raise KubeApiError(f"reading {identity(obj)}: HTTP {status} {answer.get('message', '')}")
        return answer

    def delete(self, obj: dict) -> None:
        status, answer = self.call("DELETE", object_path(obj))
        if status not in (200, 202, 404):
            raise KubeApiError(f"deleting {identity(obj)}: HTTP {status} {answer.get('message', '')}")


def _api(props: dict) -> KubeApi:
    return KubeApi(props["servers"], props["tls"])


class ClusterObjectsProvider(ResourceProvider):
    def create(self, props):
        api = _api(props)
        api.wait(float(props.get("waitSeconds") or WAIT_SECONDS))
        for obj in props["objects"]:
            api.apply(obj)
        return CreateResult(id_=f"objects-{props['cluster']}", outs=props)

    def diff(self, _id, olds, news):
        # The objects are what the cluster holds; the members and the credential are how it is reached (kept
        # current in the state so that a delete reaches the cluster as it is).
        changed = [k for k in ("objects", "servers", "tls") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=["cluster"] if olds.get("cluster") != news.get("cluster")
                          else [], delete_before_replace=False)

    def update(self, _id, olds, news):
        api = _api(news)
        api.wait(float(news.get("waitSeconds") or WAIT_SECONDS))
        kept = {identity(o) for o in news["objects"]}
        for obj in news["objects"]:
            api.apply(obj)
        for obj in olds.get("objects") or []:
            if identity(obj) not in kept:
                api.delete(obj)
        return UpdateResult(outs=news)

    def read(self, id_, props):
        try:
            api = _api(props)
            held = [(obj, api.get(obj)) for obj in props.get("objects") or []]
        except Unreachable:
            return ReadResult(id_=id_, outs=props)  # nothing answers: what the state says stands
        return ReadResult(id_=id_, outs={**props, "objects": [projected(h, obj) for obj, h in held if h is not None]})

    def delete(self, _id, props):
        api = _api(props)
        try:
            api.wait(DELETE_WAIT_SECONDS)
            for obj in props.get("objects") or []:
                api.delete(obj)
        except Unreachable:
            return  # the cluster is gone (its members are deleted after this): nothing holds the objects


class ClusterObjects(pulumi.dynamic.Resource, module="k8s", name="ClusterObjects"):
    """RBAC objects applied in one cluster of the stack, through its members' API servers (`servers`, host:port)."""

    def __init__(self, resource_name: str, *, cluster: str, servers: pulumi.Input[list], tls: pulumi.Input[dict],
                 objects: list[dict], opts: Optional[pulumi.ResourceOptions] = None):
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["tls"]))
        super().__init__(ClusterObjectsProvider(), resource_name, {
            "cluster": cluster, "servers": servers, "tls": pulumi.Output.secret(tls), "objects": objects}, opts)
