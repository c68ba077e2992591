"""Each balancer published, through its own endpoint, into the cluster it serves (pulumi-kubernetes).

Two custom resource definitions, shaped after Ironcore's networking objects and the Cluster API load balancer
proposal's conditions:
- `LoadBalancer` (loadbalancers.cplb.incus.dev): spec = type, role, ipFamilies, ports, selector; status = the
  endpoint and its addresses, the conditions read at `up`, "n of m" backends;
- `LoadBalancerRouting` (loadbalancerroutings.cplb.incus.dev): the destinations (instance, Incus uuid, address,
  port, family), owned by its LoadBalancer, as Ironcore keeps routing beside the load balancer.

The objects live in kube-system (a control plane without kube-controller-manager never finishes deleting a
namespace, so the project creates none). Their status is written with the object: the CRD has no status
subresource, because the writer is this program, not a controller.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi

GROUP = "cplb.incus.dev"
VERSION = "v1alpha1"
NAMESPACE = "kube-system"
READY_WAIT_SECONDS = 180.0
MANAGED_BY = {"app.kubernetes.io/managed-by": "incus-cplb"}
# pulumi-kubernetes deletes with foreground propagation by default, which leaves the object to the garbage collector
# (kube-controller-manager) to finish: a control plane without it (as here) never would, and `up` would wait on the
# deletion forever. Background deletion is done by the API server itself.
BACKGROUND_DELETE = {"pulumi.com/deletionPropagationPolicy": "background"}


def _crd(kind: str, plural: str, columns: list[dict], properties: dict) -> dict:
    return {
        "group": GROUP,
        "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List",
                  "categories": ["cplb"]},
        "scope": "Namespaced",
        "versions": [{
            "name": VERSION, "served": True, "storage": True,
            "additionalPrinterColumns": columns,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                **properties}}},
        }],
    }


_CONDITION = {"type": "object", "required": ["type", "status"], "properties": {
    "type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
    "reason": {"type": "string"}, "message": {"type": "string"}}}
_PORT = {"type": "object", "properties": {
    "name": {"type": "string"}, "port": {"type": "integer"}, "endPort": {"type": "integer"},
    "targetPort": {"type": "integer"}, "protocol": {"type": "string"}}}
_DESTINATION = {"type": "object", "properties": {
    "name": {"type": "string"}, "uid": {"type": "string"}, "address": {"type": "string"},
    "port": {"type": "integer"}, "family": {"type": "string", "enum": ["IPv4", "IPv6"]}}}

LOAD_BALANCER_CRD = _crd("LoadBalancer", "loadbalancers", [
    {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
    {"name": "Backends", "type": "string", "jsonPath": ".status.backends"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
], {
    "spec": {"type": "object", "properties": {
        "type": {"type": "string"}, "role": {"type": "string"},
        "ipFamilies": {"type": "array", "items": {"type": "string"}},
        "ports": {"type": "array", "items": _PORT},
        "selector": {"type": "object", "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {"type": "array", "items": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            "addresses": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "address": {"type": "string"}}}}}},
    }},
    "status": {"type": "object", "properties": {
        "endpoint": {"type": "string"},
        "endpoints": {"type": "array", "items": {"type": "string"}},
        "addresses": {"type": "array", "items": {"type": "string"}},
        "backends": {"type": "string"},
        "conditions": {"type": "array", "items": _CONDITION},
        "lastDrain": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    }},
})
ROUTING_CRD = _crd("LoadBalancerRouting", "loadbalancerroutings", [
    {"name": "Destinations", "type": "integer", "jsonPath": ".status.destinationCount"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
], {
    "destinations": {"type": "array", "items": _DESTINATION},
    "status": {"type": "object", "properties": {"destinationCount": {"type": "integer"}}},
})


def labels(stack: str, balancer: str) -> dict:
    return {**MANAGED_BY, f"{GROUP}/stack": stack, f"{GROUP}/balancer": balancer}


def backends_text(conditions: list[dict]) -> str:
    """"2 of 3" from the BackendsHealthy condition's message (the printer column)."""
    message = next((c.get("message", "") for c in conditions if c.get("type") == "BackendsHealthy"), "")
    match = re.match(r"(\d+ of \d+)", message)
    return match.group(1) if match else ""


def load_balancer_fields(lb, outputs: dict) -> dict:
    """spec and status of one balancer's LoadBalancer object, from its spec and its stack outputs."""
    targets = lb.effective_targets()
    selector: dict[str, Any] = {}
    if targets.selector:
        selector = targets.selector.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    if targets.addresses:
        selector["addresses"] = [{"name": a.name, "address": str(a.address)} for a in targets.addresses]
    ports = []
    for p in lb.ports:
        port = {"name": p.name, "port": p.port, "targetPort": p.backend_port, "protocol": p.protocol}
        if p.end_port:
            port["endPort"] = p.end_port
        ports.append(port)
    conditions = list((outputs.get("status") or {}).get("conditions", []))
    status = {
        "endpoint": outputs.get("endpoint", ""),
        "endpoints": list(outputs.get("endpoints") or ([outputs["endpoint"]] if outputs.get("endpoint") else [])),
        "addresses": list(outputs.get("addresses") or []),
        "backends": backends_text(conditions),
        "conditions": conditions,
    }
    if outputs.get("lastDrain"):
        status["lastDrain"] = outputs["lastDrain"]
    return {"spec": {"type": lb.type, "role": lb.role, "ipFamilies": list(lb.ip_families), "ports": ports,
                     "selector": selector},
            "status": status}


def routing_destinations(routing: dict) -> list[dict]:
    """Ironcore's LoadBalancerRouting destinations (`uid` is the Incus instance uuid)."""
    return [{"name": d["name"], "uid": d.get("uuid", ""), "address": d["address"], "port": d["port"],
             "family": d["family"]} for d in routing.get("destinations", [])]


class KubeObject(pulumi.CustomResource):
    """Any Kubernetes object through the Kubernetes provider, with whatever top-level fields it has (pulumi-kubernetes'
    CustomResource class only carries `spec`; a LoadBalancerRouting has `destinations`, and both have `status`)."""

    def __init__(self, name: str, api_version: str, kind: str, fields: dict, opts: pulumi.ResourceOptions):
        props = {"apiVersion": api_version, "kind": kind, **fields}
        super().__init__(f"kubernetes:{api_version}:{kind}", name, props, opts)


def server_of(kubeconfig: str) -> tuple[str, str]:
    """(server URL, CA PEM or '') of a kubeconfig's first cluster."""
    import base64

    import yaml

    cluster = yaml.safe_load(kubeconfig)["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority-data")
    return cluster["server"], base64.b64decode(ca).decode() if ca else ""


def answers(server: str, ca_pem: str, timeout: float = 3.0) -> bool:
    """`GET /readyz` through `server` (https://host:port) answers 200, TLS verified against the kubeconfig's CA,
    names included."""
    import urllib.parse

    import health

    url = urllib.parse.urlsplit(server)
    return health.https_probe(url.hostname, url.port or 443, "/readyz", ca_pem, server_name=url.hostname,
                              timeout=timeout) == "ok"


def when_answering(kubeconfig: str) -> str:
    """The kubeconfig, once its server answers (a balancer's first `up`: the endpoint is new), bounded; at preview,
    at once."""
    if pulumi.runtime.is_dry_run():
        return kubeconfig
    server, ca = server_of(kubeconfig)
    deadline = time.monotonic() + READY_WAIT_SECONDS
    while not answers(server, ca):
        if time.monotonic() > deadline:
            raise pulumi.RunError(f"kubernetes.publish: the cluster's endpoint {server} did not answer /readyz within "
                                  f"{READY_WAIT_SECONDS:.0f} s; nothing was published")
        time.sleep(1)
    return kubeconfig


@dataclass
class Published:
    """One balancer to publish: its spec, stack outputs and routing."""

    spec: Any
    outputs: pulumi.Output
    routing: pulumi.Output
    component: Optional[pulumi.Resource] = None


@dataclass
class PublicationArgs:
    stack: str
    cluster: str
    kubeconfig: pulumi.Input[str]  # a secret
    balancers: list[Published] = field(default_factory=list)


class Publication(pulumi.ComponentResource):
    """The CRDs and one LoadBalancer + LoadBalancerRouting per balancer of one cluster, written through a Kubernetes
    provider whose kubeconfig names the cluster's balanced endpoint."""

    TYPE = "cplb:k8s:Publication"

    def __init__(self, name: str, args: PublicationArgs, opts: Optional[pulumi.ResourceOptions] = None):
        import pulumi_kubernetes as k8s

        super().__init__(self.TYPE, name, None, opts)
        # Wait for the endpoint after every balancer's status is read (their config files are in place by then).
        kubeconfig = pulumi.Output.secret(pulumi.Output.all(args.kubeconfig, *[b.outputs for b in args.balancers])
                                          .apply(lambda v: when_answering(v[0])))
        # The kubeconfig changes when the endpoint does (lxc -> a VIP) and is unknown while a balancer updates; the
        # provider would then plan to replace every object (a cluster it takes for another one). The cluster is the
        # same as long as its name in the stack is: only a change of this identifier replaces.
        provider = k8s.Provider(
            f"{name}-provider", kubeconfig=kubeconfig, enable_server_side_apply=True,
            cluster_identifier=f"incus-cplb/{args.stack}/{args.cluster}",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[b.component for b in args.balancers if b.component]))
        in_cluster = pulumi.ResourceOptions(parent=self, provider=provider)
        crds = [
            k8s.apiextensions.v1.CustomResourceDefinition(
                f"{name}-crd-{crd['names']['plural']}",
                metadata={"name": f"{crd['names']['plural']}.{GROUP}", "labels": MANAGED_BY,
                          "annotations": BACKGROUND_DELETE},
                spec=crd, opts=in_cluster)
            for crd in (LOAD_BALANCER_CRD, ROUTING_CRD)
        ]
        after_crds = pulumi.ResourceOptions.merge(in_cluster, pulumi.ResourceOptions(depends_on=crds))
        api_version = f"{GROUP}/{VERSION}"
        self.objects: dict[str, KubeObject] = {}
        for b in args.balancers:
            lb = b.spec
            meta = {"name": lb.name, "namespace": NAMESPACE, "labels": labels(args.stack, lb.name),
                    "annotations": BACKGROUND_DELETE}
            fields = b.outputs.apply(lambda o, lb=lb: load_balancer_fields(lb, o))
            obj = KubeObject(f"{name}-{lb.name}-loadbalancer", api_version, "LoadBalancer",
                             {"metadata": meta, "spec": fields["spec"], "status": fields["status"]}, after_crds)
            uid = obj.metadata.apply(lambda m: (m or {}).get("uid", ""))
            owner = uid.apply(lambda u, lb=lb: [{"apiVersion": api_version, "kind": "LoadBalancer", "name": lb.name,
                                                 "uid": u, "controller": True}] if u else [])
            destinations = b.routing.apply(routing_destinations)
            KubeObject(f"{name}-{lb.name}-routing", api_version, "LoadBalancerRouting", {
                "metadata": {**meta, "ownerReferences": owner},
                "destinations": destinations,
                "status": destinations.apply(lambda d: {"destinationCount": len(d)}),
            }, after_crds)
            self.objects[lb.name] = obj
        self.register_outputs({"cluster": args.cluster})
