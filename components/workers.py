"""Workers: the cluster's worker nodes, which join through the cluster's balanced endpoint.

Each worker is an unprivileged Incus container with nesting (pods are containers in it) running containerd, runc,
the CNI plugins, kubelet and kube-proxy from `cplb/worker`. Its kubeconfigs name the endpoint that clients use (the
VIP where there is one), never a member: what a node sees during a failover is what the endpoint gives it. Its
certificates come from the stack's PKI (WorkerCertificates, renewed like the members'): the kubelet is
`system:node:<name>` for the Node authorizer, and its serving certificate is what the API server verifies for logs
and exec. Pods get addresses from the worker's own /24 of `workers.podCIDR`; each worker routes the others' /24s
to them, so pods talk across nodes with no overlay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import pulumi

from components.common import StackContext, instance_config
from components.kubefiles import kubeconfig, render_flags
from components.members import Members, build_members
from providers.instance_file import InstanceFile
from providers.pki import WorkerCertificates
from spec import ControlPlaneSpec

if TYPE_CHECKING:
    from facts import Facts

KUBE = "/etc/kubernetes"
PKI = f"{KUBE}/pki"
KUBELET_CONF = f"{KUBE}/kubelet.conf"
KUBELET_CONFIG = f"{KUBE}/kubelet-config.yaml"
KUBELET_ARGS = f"{KUBE}/kubelet.args"
KUBE_PROXY_CONF = f"{KUBE}/kube-proxy.conf"
KUBE_PROXY_CONFIG = f"{KUBE}/kube-proxy-config.yaml"
KUBE_PROXY_ARGS = f"{KUBE}/kube-proxy.args"
CNI_CONFIG = f"{KUBE}/cni/10-cplb.conflist"  # containerd's CNI conf_dir (images/worker/etc/containerd)
POD_ROUTES = f"{KUBE}/pod-routes"
# Pods are nested containers; this host mounts cpu and cpuacct as separate cgroup v1 hierarchies, and without
# `force` an unprivileged container gets neither.
WORKER_CONFIG = {"security.nesting": "true", "raw.lxc": "lxc.mount.auto = cgroup:mixed:force"}
ROUTES_COMMAND = ["sh", "-c", f"while read -r net via; do ip route replace \"$net\" via \"$via\"; done < {POD_ROUTES}"]


def restart(process: str) -> list[str]:
    """Restart a node service for its new config (busybox init respawns it); its pods keep running."""
    return ["sh", "-c", f"pid=$(pidof {process}) || exit 0; kill $pid; for i in $(seq 1 300); do "
            f"new=$(pidof {process}) && [ \"$new\" != \"$pid\" ] && exit 0; usleep 100000; done; exit 1"]


def kubelet_config(reserved_memory: str, reserved_cpu: str) -> str:
    """The KubeletConfiguration of an unprivileged, nested node on a cgroup v1 host."""
    import yaml

    return yaml.safe_dump({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": f"{PKI}/ca.crt"}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        "cgroupDriver": "cgroupfs",  # no systemd in the node
        "failCgroupV1": False,  # this host is cgroup v1; 1.35+ refuses it unless told
        "failSwapOn": False,
        "protectKernelDefaults": False,  # the host's kernel settings are not the node's to change
        "localStorageCapacityIsolation": False,  # the root disk is the host's filesystem
        "tlsCertFile": f"{PKI}/kubelet.pem", "tlsPrivateKeyFile": f"{PKI}/kubelet.pem",
        "rotateCertificates": False, "serverTLSBootstrap": False,  # the stack's PKI renews them
        "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "clusterDomain": "cluster.local", "resolvConf": "/etc/resolv.conf",
        # The node sees the whole host: reserve what is not the worker's, so allocatable is what it may use.
        "systemReserved": {"memory": reserved_memory, "cpu": reserved_cpu},
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "5%", "imagefs.available": "5%"},
        "shutdownGracePeriod": "0s",
    }, sort_keys=False)


def kube_proxy_config(name: str, pod_cidr: str) -> str:
    import yaml

    return yaml.safe_dump({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": KUBE_PROXY_CONF},
        "hostnameOverride": name, "mode": "iptables", "clusterCIDR": pod_cidr,
        # Conntrack sysctls are the host's: 0 leaves them alone (an unprivileged node may not write them).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
    }, sort_keys=False)


def cni_config(subnet: str) -> str:
    """A bridge on the node for its pods, their addresses from the node's /24, hostPort through portmap. Traffic
    from pods to anything outside the pods' network leaves with the node's address (masquerade inside the node),
    so members and balancers need no route back to pods."""
    return json.dumps({"cniVersion": "1.0.0", "name": "cplb", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}, indent=2) + "\n"


def pod_routes(rows: list[tuple[str, str, str]], own: str) -> str:
    """`subnet via` lines: the other workers' pod /24s through their addresses."""
    return "".join(f"{subnet} {address}\n" for name, subnet, address in rows if name != own and address)


@dataclass
class WorkersArgs:
    ctx: StackContext
    spec: ControlPlaneSpec
    field: str  # the control plane's key path
    facts: "Facts"
    ca: pulumi.Output  # {"crt", "key"} of the cluster CA (secret)
    ca_cert: pulumi.Output  # PEM


class Workers(pulumi.ComponentResource):
    """Built in two steps, as the control plane is: the instances first (so the cluster's balancers select them in
    the same `up`), then, once the balancers exist, `.configure(server)` with the endpoint the nodes join through."""

    def __init__(self, name: str, args: WorkersArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("cplb:cluster:Workers", name, None, opts)
        self._name, self._args = name, args
        ctx, cp = args.ctx, args.spec
        spec = cp.workers
        self.names = [ctx.object_name(cp.cluster, "node", str(n)) for n in range(1, spec.count + 1)]
        self.labels = {"user.cluster-name": cp.cluster, "user.cluster-role": "worker"}
        self.instances = build_members(self, ctx, args.facts, Members(
            resource_names=[f"{name}-{n}" for n in range(1, spec.count + 1)], names=self.names,
            image=spec.instance.image, image_field=f"{args.field}.workers.instance.image",
            owner_id=f"workers/{cp.cluster}",
            config={**instance_config(spec.instance, self.labels), **WORKER_CONFIG},
            devices=ctx.devices(spec.instance.network),
            health={"kind": "kubelet"}, stop_seconds=20,
            common={"profiles": spec.instance.profiles, "instance_type": spec.instance.instance_type},
            per_member=lambda n: {"target": ctx.placement(spec.instance.target, n)},
        ))
        self.addresses = pulumi.Output.all(*[i.address for i in self.instances])
        nodes = self.addresses.apply(lambda addrs: [{"name": n, "addresses": [a]} for n, a in zip(self.names, addrs)])
        life = cp.certificates
        self.certs = WorkerCertificates(f"{name}-certs", cluster=cp.cluster, ca=args.ca, nodes=nodes,
                                        validity_days=life.validity_days, renew_before_days=life.renew_before_days,
                                        opts=pulumi.ResourceOptions(parent=self))
        self.pushed: pulumi.Output = pulumi.Output.from_input([])

    def configure(self, server: pulumi.Input[str], after: list) -> None:
        """`server`: host:port of the cluster's balanced endpoint, which the nodes' kubeconfigs name; `after`: what
        must be in place first (the members' files)."""
        name, args = self._name, self._args
        ctx, cp = args.ctx, args.spec
        spec = cp.workers
        reserved_memory, reserved_cpu = args.facts.worker_reservation(spec.instance.limits)
        subnets = {n: spec.pod_subnet(i) for i, n in enumerate(self.names, start=1)}
        routes = self.addresses.apply(lambda addrs: [(n, subnets[n], a) for n, a in zip(self.names, addrs)])
        files: list[InstanceFile] = []

        def push(node: str, inst, role: str, path: str, content, secret=False, reload=None, deps=(), mode="0644"):
            f = InstanceFile(
                f"{name}-{role}-{node.rsplit('-', 1)[1]}", instance=inst.name, instance_uuid=inst.uuid, path=path,
                content=pulumi.Output.secret(content) if secret else content, mode=mode,
                connection=ctx.connection, credentials=ctx.credentials, reload_command=reload,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[*after, *deps]))
            files.append(f)
            return f

        def pem(node: str, stem: str) -> pulumi.Output[str]:
            return pulumi.Output.all(self.certs.certs, self.certs.keys).apply(
                lambda v: v[0][node][f"{stem}.crt"] + v[1][node][f"{stem}.key"])

        def node_kubeconfig(node: str, stem: str, user: str) -> pulumi.Output[str]:
            return pulumi.Output.all(server, args.ca_cert, self.certs.certs, self.certs.keys).apply(
                lambda v: kubeconfig(cp.cluster, v[0], v[1], v[2][node][f"{stem}.crt"],
                                     v[3][node][f"{stem}.key"], user=user))

        kubelet, kube_proxy = restart("kubelet"), restart("kube-proxy")
        for node, inst in zip(self.names, self.instances):
            base = [
                push(node, inst, "ca-crt", f"{PKI}/ca.crt", args.ca_cert, reload=kubelet),
                push(node, inst, "kubelet-pem", f"{PKI}/kubelet.pem", pem(node, "kubelet-serving"), secret=True,
                     mode="0600", reload=kubelet),
                push(node, inst, "kubelet-conf", KUBELET_CONF, node_kubeconfig(node, "kubelet", "kubelet"),
                     secret=True, mode="0600", reload=kubelet),
                push(node, inst, "kubelet-config", KUBELET_CONFIG, kubelet_config(reserved_memory, reserved_cpu),
                     reload=kubelet),
                push(node, inst, "cni", CNI_CONFIG, cni_config(subnets[node])),
                push(node, inst, "pod-routes", POD_ROUTES, routes.apply(lambda r, node=node: pod_routes(r, node)),
                     reload=ROUTES_COMMAND),
            ]
            push(node, inst, "kubelet-args", KUBELET_ARGS, inst.address.apply(lambda a, node=node: render_flags([
                f"--config={KUBELET_CONFIG}", f"--kubeconfig={KUBELET_CONF}", f"--node-ip={a}",
                f"--hostname-override={node}", f"--node-labels=cplb.incus.dev/stack={ctx.stack}",
            ], KUBELET_ARGS)), reload=kubelet, deps=base)
            proxy = [
                push(node, inst, "kube-proxy-conf", KUBE_PROXY_CONF, node_kubeconfig(node, "kube-proxy", "kube-proxy"),
                     secret=True, mode="0600", reload=kube_proxy),
                push(node, inst, "kube-proxy-config", KUBE_PROXY_CONFIG, kube_proxy_config(node, spec.pod_cidr),
                     reload=kube_proxy),
            ]
            push(node, inst, "kube-proxy-args", KUBE_PROXY_ARGS,
                 render_flags([f"--config={KUBE_PROXY_CONFIG}"], KUBE_PROXY_ARGS), reload=kube_proxy, deps=proxy)
        self.pushed = pulumi.Output.all(*[f.content_hash for f in files])
        self.register_outputs({"addresses": self.addresses})
