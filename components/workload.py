"""DemoWorkload: a real workload on the cluster's workers, for the balancers in front of them to send to.

A DaemonSet `cplb-web` (namespace `cplb-demo`) of `cplb.local/web:1` (Debian's busybox httpd, from the worker image:
no registry is reachable), one pod per worker answering plain HTTP with its pod's name on the worker's ports 80 and
443 (hostPort, through the portmap CNI plugin). It is written through the cluster's balanced endpoint with the
Pulumi Kubernetes provider; `up` waits until every pod is ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from components.publish import MANAGED_BY, when_answering

NAMESPACE = "cplb-demo"
NAME = "cplb-web"
IMAGE = "cplb.local/web:1"  # images/worker carries it (scripts/pod-images)
PORTS = (80, 443)


@dataclass
class DemoWorkloadArgs:
    stack: str
    cluster: str
    kubeconfig: pulumi.Input[str]  # a secret, naming the cluster's balanced endpoint
    after: list  # the workers (and the balancer the kubeconfig names)
    ready: list  # Outputs that resolve once those are in place (the workers' files, the balancers' outputs)


class DemoWorkload(pulumi.ComponentResource):
    def __init__(self, name: str, args: DemoWorkloadArgs, opts: Optional[pulumi.ResourceOptions] = None):
        import pulumi_kubernetes as k8s

        super().__init__("cplb:k8s:DemoWorkload", name, None, opts)
        # Waited for only once what it runs on is in place (the workers' files, the balancers' status read): the
        # wait blocks the program's event loop, so it must not start before the rest of the stack is registered.
        kubeconfig = pulumi.Output.secret(pulumi.Output.all(args.kubeconfig, *args.ready).apply(
            lambda v: when_answering(v[0])))
        provider = k8s.Provider(
            f"{name}-provider", kubeconfig=kubeconfig,
            enable_server_side_apply=True, cluster_identifier=f"incus-cplb/{args.stack}/{args.cluster}",
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.after))
        in_cluster = pulumi.ResourceOptions(parent=self, provider=provider)
        labels = {"app.kubernetes.io/name": NAME, **MANAGED_BY}
        ns = k8s.core.v1.Namespace(f"{name}-namespace", metadata={"name": NAMESPACE, "labels": MANAGED_BY},
                                   opts=in_cluster)
        self.daemon_set = k8s.apps.v1.DaemonSet(
            f"{name}-web",
            # `up` waits for every pod to be ready, bounded (the provider's default is 10 minutes).
            metadata={"name": NAME, "namespace": NAMESPACE, "labels": labels,
                      "annotations": {"pulumi.com/timeoutSeconds": "300"}},
            spec={
                "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                # One node at a time, the next once the new pod is ready: the balancer keeps the others.
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": 5,
                        "containers": [{
                            "name": "web", "image": IMAGE, "imagePullPolicy": "Never",
                            # One httpd per port (a port each: the pod's port list is keyed by container port).
                            "command": ["/bin/busybox", "sh", "-c", "hostname > /tmp/index.html && " + " && ".join(
                                f"busybox httpd -p {8000 + p} -h /tmp" for p in PORTS[1:]) +
                                f" && exec busybox httpd -f -p {8000 + PORTS[0]} -h /tmp"],
                            "ports": [{"name": f"http-{p}", "containerPort": 8000 + p, "hostPort": p} for p in PORTS],
                            "readinessProbe": {"tcpSocket": {"port": 8000 + PORTS[0]}, "periodSeconds": 2},
                            "resources": {"requests": {"cpu": "10m", "memory": "8Mi"},
                                          "limits": {"memory": "32Mi"}},
                            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                                "allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]}},
                        }],
                    },
                },
            },
            opts=pulumi.ResourceOptions.merge(in_cluster, pulumi.ResourceOptions(depends_on=[ns])))
        # Resolves once every pod is ready (the provider waits for the rollout); known at once in a preview.
        self.ready: pulumi.Output[bool] = pulumi.Output.from_input(True) if pulumi.runtime.is_dry_run() else \
            self.daemon_set.status.apply(lambda _: True)
        self.register_outputs({"namespace": NAMESPACE})
