"""Least privilege in the clusters the stack runs: what kube-vip and the publication may do, as RBAC objects.

Each has its own client certificate (providers/pki.py `ClientCertificates`), bound here to what it does and nothing
else; neither is `system:masters`, so neither reads Secrets:
- kube-vip (`cplb:kube-vip`): its leader election, the Lease `plndr-cp-lock` in kube-system (create it; read and
  renew that one);
- the publication (`cplb:publisher`): the two cplb CRDs by name, and the LoadBalancer and LoadBalancerRouting
  objects in kube-system. Listing and watching CRDs (not their contents' objects) is what pulumi-kubernetes' await
  needs.
"""

from __future__ import annotations

from components.publish import GROUP, LOAD_BALANCER_CRD, MANAGED_BY, NAMESPACE, ROUTING_CRD
from providers.pki import SCOPED_CLIENTS

RBAC = "rbac.authorization.k8s.io/v1"
KUBE_VIP_LEASE = "plndr-cp-lock"
# kube-vip's own kubeconfig on the stack's control-plane members (written by components/control_plane.py, read by the
# static pod components/external.py renders).
KUBE_VIP_KUBECONFIG = "/etc/kubernetes/kube-vip.conf"


def _meta(name: str, namespace: str = "") -> dict:
    return {"name": name, **({"namespace": namespace} if namespace else {}), "labels": dict(MANAGED_BY)}


def _bound(kind: str, name: str, user: str, namespace: str = "") -> dict:
    binding = "RoleBinding" if kind == "Role" else "ClusterRoleBinding"
    return {"apiVersion": RBAC, "kind": binding, "metadata": _meta(name, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}


def _role(kind: str, name: str, rules: list[dict], namespace: str = "") -> dict:
    return {"apiVersion": RBAC, "kind": kind, "metadata": _meta(name, namespace), "rules": rules}


def kube_vip_objects() -> list[dict]:
    user = SCOPED_CLIENTS["kube-vip"]
    rules = [
        # A create names no object at authorization time, so it cannot be limited to one name.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [KUBE_VIP_LEASE],
         "verbs": ["get", "update", "patch"]},
    ]
    return [_role("Role", user, rules, NAMESPACE), _bound("Role", user, user, NAMESPACE)]


def publisher_objects() -> list[dict]:
    user = SCOPED_CLIENTS["publisher"]
    crds = [f"{crd['names']['plural']}.{GROUP}" for crd in (LOAD_BALANCER_CRD, ROUTING_CRD)]
    cluster_rules = [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "resourceNames": crds,
         "verbs": ["get", "create", "update", "patch", "delete"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    ]
    objects = [crd["names"]["plural"] for crd in (LOAD_BALANCER_CRD, ROUTING_CRD)]
    namespace_rules = [{"apiGroups": [GROUP], "resources": objects,
                        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]
    return [_role("ClusterRole", user, cluster_rules), _bound("ClusterRole", user, user),
            _role("Role", user, namespace_rules, NAMESPACE), _bound("Role", user, user, NAMESPACE)]


def scoped_objects() -> list[dict]:
    return [*kube_vip_objects(), *publisher_objects()]
