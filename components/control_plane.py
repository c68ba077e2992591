"""ControlPlane: a real Kubernetes control plane the stack owns (stacked etcd and kube-apiserver per instance).

It stands in for what Cluster API, kubeadm or k0s would create, so every strategy fronts real API servers:
TLS end to end, `/readyz` that fails before a graceful shutdown, long-lived watches, and an etcd quorum.

Built in two steps, because the serving certificate must name the endpoints of the balancers that front it and
those balancers select these instances:
1. `ControlPlane(...)`: the CA (ClusterCa) and the instances, labelled for the cluster's balancers;
2. `.configure(endpoint_hosts, server)`: once the balancers exist, the node certificates (NodeCertificates,
   whose SANs follow the balancers' addresses) and the files that start etcd and kube-apiserver. A change of a
   balancer's addresses reissues the certificates and rewrites the files; kube-apiserver reloads its serving
   certificate from disk by itself, so no instance is replaced.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Optional

import pulumi

import health
from components.common import StackContext, instance_config
from providers.instance import Instance
from providers.instance_file import InstanceFile
from providers.pki import ClusterCa, NodeCertificates
from spec import ControlPlaneSpec

PKI = "/etc/kubernetes/pki"
ETCD_ARGS = "/etc/kubernetes/etcd.args"
APISERVER_ARGS = "/etc/kubernetes/kube-apiserver.args"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
# A changed flags file takes effect when the service restarts (busybox init respawns it with the new flags).
RESTART_ETCD = ["sh", "-c", "killall etcd 2>/dev/null || true"]
RESTART_APISERVER = ["sh", "-c", "killall kube-apiserver 2>/dev/null || true"]
READY_WAIT_SECONDS = 180.0


@dataclass
class ControlPlaneArgs:
    ctx: StackContext
    spec: ControlPlaneSpec
    field: str
    image_fingerprint: str = ""
    # kube-apiserver binds every address when kube-vip fronts the cluster (the VIP lands on the leader's eth0 and
    # clients reach the API server there); otherwise the node's own address, so that the `keepalived` strategy's
    # haproxy can bind VIP:6443 beside it.
    bind_all: bool = False


def etcd_flags(name: str, address: str, members: list[tuple[str, str]], token: str) -> list[str]:
    return [
        f"--name={name}", "--data-dir=/var/lib/etcd",
        f"--listen-client-urls=https://{address}:2379,https://127.0.0.1:2379",
        f"--advertise-client-urls=https://{address}:2379",
        f"--listen-peer-urls=https://{address}:2380", f"--initial-advertise-peer-urls=https://{address}:2380",
        "--initial-cluster=" + ",".join(f"{n}=https://{a}:2380" for n, a in members),
        "--initial-cluster-state=new", f"--initial-cluster-token={token}",
        f"--cert-file={PKI}/etcd.pem", f"--key-file={PKI}/etcd.pem", f"--trusted-ca-file={PKI}/ca.crt",
        "--client-cert-auth=true",
        f"--peer-cert-file={PKI}/etcd.pem", f"--peer-key-file={PKI}/etcd.pem", f"--peer-trusted-ca-file={PKI}/ca.crt",
        "--peer-client-cert-auth=true", "--log-level=warn",
    ]


def apiserver_flags(address: str, spec: ControlPlaneSpec, bind_all: bool = False) -> list[str]:
    return [
        f"--advertise-address={address}",
        f"--bind-address={'0.0.0.0' if bind_all else address}", "--secure-port=6443",
        "--etcd-servers=https://127.0.0.1:2379", f"--etcd-cafile={PKI}/ca.crt",
        f"--etcd-certfile={PKI}/apiserver-etcd-client.pem", f"--etcd-keyfile={PKI}/apiserver-etcd-client.pem",
        f"--tls-cert-file={PKI}/apiserver.pem", f"--tls-private-key-file={PKI}/apiserver.pem",
        f"--client-ca-file={PKI}/ca.crt",
        f"--service-account-key-file={PKI}/sa.pem", f"--service-account-signing-key-file={PKI}/sa.pem",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={spec.service_cidr}",
        "--authorization-mode=RBAC",
        # After SIGTERM, /readyz fails for this long while requests are still served; then in-flight requests
        # drain and new ones get 429 with Retry-After (which clients retry) until the listener closes.
        f"--shutdown-delay-duration={spec.shutdown_delay_seconds}s", "--shutdown-send-retry-after=true",
        "--profiling=false", "--v=1",
    ]


_FLAG = re.compile(r"--[a-z0-9-]+=[A-Za-z0-9._:/,=@\[\]-]*")


def render_flags(flags: list[str], path: str) -> str:
    """A flags file (one flag a line, read by the service script as words): every flag is checked against that
    grammar before it is written, so no value can add a flag or a word."""
    for flag in flags:
        if not _FLAG.fullmatch(flag):
            raise ValueError(f"refusing to write {path}: a flag does not fit `--name=value` without spaces or quotes")
    return "\n".join(flags) + "\n"


def kubeconfig(cluster: str, server: str, ca: str, cert: str, key: str) -> str:
    import yaml

    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": cluster,
        "clusters": [{"name": cluster, "cluster": {"server": f"https://{server}",
                                                   "certificate-authority-data": b64(ca)}}],
        "users": [{"name": f"{cluster}-admin", "user": {"client-certificate-data": b64(cert),
                                                          "client-key-data": b64(key)}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": f"{cluster}-admin"}}],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def readyz(address: str, ca_pem: str, timeout: float = 2.0) -> bool:
    """GET /readyz on one API server, its chain verified against the cluster CA (names are tested elsewhere)."""
    return health.https_probe(address, 6443, "/readyz", ca_pem, timeout=timeout) == "ok"


def wait_ready(addresses: list[str], ca_pem: str, wait_seconds: float = READY_WAIT_SECONDS) -> list[str]:
    """The addresses whose API server is ready, waiting (bounded) for all of them."""
    deadline = time.monotonic() + wait_seconds
    while True:
        ready = [a for a in addresses if readyz(a, ca_pem)]
        if len(ready) == len(addresses) or time.monotonic() >= deadline:
            return ready
        time.sleep(1.0)


def endpoint_hosts(endpoints: list[str]) -> tuple[list[str], list[str]]:
    """(IP addresses, DNS names) of `host:port` endpoints and bare hosts."""
    ips, names = [], []
    for ep in endpoints:
        if not ep:
            continue
        host = ep
        if ep.startswith("["):
            host = ep[1:].split("]", 1)[0]
        elif ep.count(":") == 1:
            host = ep.rsplit(":", 1)[0]
        host = host.rstrip(".")
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            names.append(host)
    return sorted(set(ips)), sorted(set(names))


class ControlPlane(pulumi.ComponentResource):
    def __init__(self, name: str, args: ControlPlaneArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("cplb:cluster:ControlPlane", name, None, opts)
        self._name, self._args = name, args
        ctx, spec = args.ctx, args.spec
        child = pulumi.ResourceOptions(parent=self)
        self.ca = ClusterCa(f"{name}-ca", cluster=spec.cluster, opts=child)
        self.names = [ctx.object_name(spec.name, str(n)) for n in range(1, spec.count + 1)]
        self.instances = [Instance(
            f"{name}-{n}", name=self.names[n - 1], image=spec.instance.image, image_fingerprint=args.image_fingerprint,
            connection=ctx.connection, credentials=ctx.credentials, address_families=ctx.address_families,
            owner_stack=ctx.stack, owner_id=f"group/{spec.name}", profiles=spec.instance.profiles,
            config=instance_config(spec.instance, spec.labels), devices=ctx.devices(spec.instance.network),
            instance_type=spec.instance.instance_type, target=ctx.placement(spec.instance.target, n), opts=child,
        ) for n in range(1, spec.count + 1)]
        self.addresses = pulumi.Output.all(*[i.address for i in self.instances])
        self.ca_cert = self.ca.certs.apply(lambda c: c["ca.crt"])
        self.ready, self._resolve_ready = pulumi.deferred_output()
        self.kubeconfig: pulumi.Output[str] = pulumi.Output.secret("")

    def configure(self, endpoints: pulumi.Input[list], server: pulumi.Input[str]) -> None:
        """`endpoints`: every `host:port` (or host) clients use to reach this cluster through its balancers;
        `server`: the one the kubeconfig names (the VIP where there is one)."""
        ctx, spec = self._args.ctx, self._args.spec
        name = self._name
        hosts = pulumi.Output.from_input(endpoints).apply(endpoint_hosts)
        nodes = pulumi.Output.all(*[pulumi.Output.all(i.address, i.ipv6) for i in self.instances]).apply(
            lambda rows: [{"name": n, "addresses": [a for a in [v4, *(v6 or [])] if a]}
                          for n, (v4, v6) in zip(self.names, rows)])
        ca_input = pulumi.Output.all(self.ca.certs, self.ca.keys).apply(
            lambda v: {"crt": v[0]["ca.crt"], "key": v[1]["ca.key"]})
        self.certs = NodeCertificates(
            f"{name}-certs", cluster=spec.cluster, ca=ca_input, nodes=nodes, endpoints=hosts.apply(lambda h: h[0]),
            dns_names=hosts.apply(lambda h: h[1]), service_ip=spec.service_ip,
            opts=pulumi.ResourceOptions(parent=self))
        token = f"{ctx.stack}-{spec.cluster}"
        members = self.addresses.apply(lambda addrs: list(zip(self.names, addrs)))
        files: list[InstanceFile] = []
        for node, inst in zip(self.names, self.instances):
            def push(role: str, path: str, content, secret: bool = False, reload=None, after=(), mode="0644"):
                f = InstanceFile(
                    f"{name}-{role}-{node.rsplit('-', 1)[1]}", instance=inst.name, instance_uuid=inst.uuid, path=path,
                    content=pulumi.Output.secret(content) if secret else content, mode=mode,
                    connection=ctx.connection, credentials=ctx.credentials, reload_command=reload,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)))
                files.append(f)
                return f

            def pem(stem: str, node: str = node) -> pulumi.Output[str]:
                """A node's certificate and its key in one file (Go's TLS loaders take the key from it)."""
                return pulumi.Output.all(self.certs.certs, self.certs.keys).apply(
                    lambda v: v[0][node][f"{stem}.crt"] + v[1][node][f"{stem}.key"])

            pki = [
                push("ca-crt", f"{PKI}/ca.crt", self.ca_cert),
                # The public key (verifies tokens) and the private key (signs them) in one file.
                push("sa", f"{PKI}/sa.pem", pulumi.Output.all(self.ca.certs, self.ca.keys).apply(
                    lambda v: v[0]["sa.pub"] + v[1]["sa.key"]), secret=True, mode="0600"),
                push("apiserver-pem", f"{PKI}/apiserver.pem", pem("apiserver"), secret=True, mode="0600"),
                push("etcd-client-pem", f"{PKI}/apiserver-etcd-client.pem", pem("apiserver-etcd-client"),
                     secret=True, mode="0600"),
                push("etcd-pem", f"{PKI}/etcd.pem", pem("etcd"), secret=True, mode="0600"),
            ]
            push("etcd-args", ETCD_ARGS, pulumi.Output.all(inst.address, members).apply(
                lambda v, node=node: render_flags(etcd_flags(node, v[0], v[1], token), ETCD_ARGS)),
                reload=RESTART_ETCD, after=pki)
            push("apiserver-args", APISERVER_ARGS, inst.address.apply(
                lambda a: render_flags(apiserver_flags(a, spec, self._args.bind_all), APISERVER_ARGS)),
                reload=RESTART_APISERVER, after=pki)
            # The admin kubeconfig at the path kubeadm uses, naming this node's own API server: what the kube-vip
            # static pod mounts for its leader election.
            push("admin-conf", ADMIN_CONF, pulumi.Output.all(inst.address, self.ca_cert, self.ca.certs, self.ca.keys)
                 .apply(lambda v: kubeconfig(spec.cluster, f"{v[0]}:6443", v[1], v[2]["admin.crt"], v[3]["admin.key"])),
                 secret=True, mode="0600")

        pushed = pulumi.Output.all(*[f.content_hash for f in files])
        if pulumi.runtime.is_dry_run():
            self._resolve_ready(pushed.apply(lambda _: True))
        else:
            # Balancers' conditions wait for this, so the first `up` reports the cluster as it serves.
            self._resolve_ready(pulumi.Output.all(self.addresses, self.ca_cert, pushed).apply(
                lambda v: len(wait_ready(list(v[0]), v[1])) == len(v[0])))
        self.kubeconfig = pulumi.Output.secret(pulumi.Output.all(server, self.ca_cert, self.ca.certs, self.ca.keys).apply(
            lambda v: kubeconfig(spec.cluster, v[0], v[1], v[2]["admin.crt"], v[3]["admin.key"])))
        self.register_outputs({"addresses": self.addresses, "kubeconfig": self.kubeconfig})
