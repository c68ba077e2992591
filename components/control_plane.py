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

import ipaddress
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import pulumi

import health
from components.common import StackContext, instance_config
from components.access import KUBE_VIP_KUBECONFIG, scoped_objects
from components.kubefiles import kubeconfig, render_flags
from components.members import Members, build_members
from providers.etcd_member import EtcdMember, EtcdPromotion
from providers.instance_file import InstanceFile
from providers.kube_objects import ClusterObjects
from providers.pki import ClientCertificates, ClusterCa, NodeCertificates
from spec import ControlPlaneSpec

if TYPE_CHECKING:
    from facts import Facts

PKI = "/etc/kubernetes/pki"
# What etcd trusts, for clients and peers, at kubeadm's path: etcd's own CA (and, while a cluster made before it had
# one moves to it, the cluster CA too).
ETCD_TRUST = f"{PKI}/etcd/ca.crt"
ETCD_ARGS = "/etc/kubernetes/etcd.args"
APISERVER_ARGS = "/etc/kubernetes/kube-apiserver.args"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
# kube-controller-manager and kube-scheduler, as kubeadm lays them out: each with its own kubeconfig (its own client
# certificate, naming this member's API server) and, here, a flags file like the other services.
CONTROLLERS = {
    "kube-controller-manager": ("/etc/kubernetes/controller-manager.conf", "/etc/kubernetes/kube-controller-manager.args",
                                "controller-manager"),
    "kube-scheduler": ("/etc/kubernetes/scheduler.conf", "/etc/kubernetes/kube-scheduler.args", "scheduler"),
}
# A changed flags file takes effect when the service restarts (busybox init respawns it with the new flags). The
# restart returns once a new process runs (etcd: its graceful stop hands leadership over first), so the rollout's
# health wait that follows sees the new one, not the old one still answering.
def restart(process: str, seconds: int = 90) -> list[str]:
    return ["sh", "-c", f"old=$(pidof {process}) || exit 0; kill $old; for i in $(seq 1 {seconds * 10}); do "
            f"new=$(pidof {process}) && [ \"$new\" != \"$old\" ] && exit 0; usleep 100000; done; exit 1"]


def stop_apiserver(shutdown_delay_seconds: int, release: bool = True) -> str:
    """Hold this member's kube-apiserver down (/run/cplb-service.kube-apiserver.down) and stop it gracefully: its
    /readyz fails, balancers take it out, it drains for its shutdown delay. `release`: it comes back when the script
    that this begins ends."""
    bound = (shutdown_delay_seconds + 30) * 10
    return ("down=/run/cplb-service.kube-apiserver.down; " + ("trap 'rm -f $down' EXIT; " if release else "") +
            ": > $down; api=$(pidof kube-apiserver) && { kill $api; n=0; while pidof kube-apiserver >/dev/null && "
            f"[ $n -lt {bound} ]; do usleep 100000; n=$((n+1)); done; }}; ")


def restart_etcd_behind_a_drained_apiserver(shutdown_delay_seconds: int) -> list[str]:
    """etcd restarts only once this member's kube-apiserver is out of rotation: its requests would otherwise hang
    while its local etcd is gone (seen: read timeouts through the balancer). kube-apiserver is held down and stopped
    gracefully, etcd restarts, and kube-apiserver comes back; the rollout then waits for its /readyz."""
    return ["sh", "-c", stop_apiserver(shutdown_delay_seconds) + restart("etcd")[2]]


@dataclass(frozen=True)
class EtcdPlace:
    """How a member starts etcd: with `initial_cluster` and `state`. `joins`: it is added to a running cluster (a
    learner, then promoted) and starts with what its EtcdMember gets when it is added; a new cluster's members
    (`initial_cluster` None, not joining) name every member."""
    initial_cluster: Optional[str]
    state: str
    joins: bool


def etcd_membership(names: list[str], found: dict[str, Optional[tuple[str, str]]]) -> dict[str, EtcdPlace]:
    """Each member's place in etcd, from the flags files found on the members (`found`: name -> (initial cluster,
    state), or None). A member keeps the flags it started with (etcd ignores them once it has data, and a changed
    file would restart it for nothing). With no flags found anywhere the cluster is new: every member is named in it.
    Otherwise a member that the running cluster's `--initial-cluster` names is a founding member whose first start
    was interrupted, and any other joins the running cluster: never `--initial-cluster-state=new` on it."""
    def named(cluster: str) -> set[str]:
        return {pair.split("=", 1)[0] for pair in cluster.split(",")}

    running = [f[0] for f in found.values() if f]
    places = {}
    for name in names:
        naming = [c for c in running if name in named(c)]
        if found.get(name):
            places[name] = EtcdPlace(found[name][0], found[name][1], False)
        elif not running:
            places[name] = EtcdPlace(None, "new", False)
        elif naming:
            places[name] = EtcdPlace(naming[0], "new", False)
        else:
            places[name] = EtcdPlace(None, "existing", True)
    return places


RESTART_APISERVER = restart("kube-apiserver")
READY_WAIT_SECONDS = 180.0


@dataclass
class ControlPlaneArgs:
    ctx: StackContext
    spec: ControlPlaneSpec
    field: str
    facts: "Facts"
    # kube-apiserver binds every address when kube-vip fronts the cluster (the VIP lands on the leader's eth0 and
    # clients reach the API server there); otherwise the node's own address, so that the `keepalived` strategy's
    # haproxy can bind VIP:6443 beside it.
    bind_all: bool = False


def etcd_flags(name: str, address: str, initial_cluster: str, token: str, state: str = "new") -> list[str]:
    return [
        f"--name={name}", "--data-dir=/var/lib/etcd",
        f"--listen-client-urls=https://{address}:2379,https://127.0.0.1:2379",
        f"--advertise-client-urls=https://{address}:2379",
        f"--listen-peer-urls=https://{address}:2380", f"--initial-advertise-peer-urls=https://{address}:2380",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-state={state}", f"--initial-cluster-token={token}",
        f"--cert-file={PKI}/etcd.pem", f"--key-file={PKI}/etcd.pem", f"--trusted-ca-file={ETCD_TRUST}",
        "--client-cert-auth=true",
        f"--peer-cert-file={PKI}/etcd.pem", f"--peer-key-file={PKI}/etcd.pem", f"--peer-trusted-ca-file={ETCD_TRUST}",
        "--peer-client-cert-auth=true", "--log-level=warn",
    ]


def apiserver_flags(address: str, spec: ControlPlaneSpec, bind_all: bool = False) -> list[str]:
    return [
        f"--advertise-address={address}",
        f"--bind-address={'0.0.0.0' if bind_all else address}", "--secure-port=6443",
        "--etcd-servers=https://127.0.0.1:2379", f"--etcd-cafile={ETCD_TRUST}",
        f"--etcd-certfile={PKI}/apiserver-etcd-client.pem", f"--etcd-keyfile={PKI}/apiserver-etcd-client.pem",
        f"--tls-cert-file={PKI}/apiserver.pem", f"--tls-private-key-file={PKI}/apiserver.pem",
        f"--client-ca-file={PKI}/ca.crt",
        f"--service-account-key-file={PKI}/sa.pem", f"--service-account-signing-key-file={PKI}/sa.pem",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={spec.service_cidr}",
        # Nodes: the Node authorizer and NodeRestriction for the kubelets (system:node:<name>); the API server's own
        # client certificate towards them, and their serving certificates verified against the cluster CA.
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        f"--kubelet-client-certificate={PKI}/apiserver-kubelet-client.pem",
        f"--kubelet-client-key={PKI}/apiserver-kubelet-client.pem", f"--kubelet-certificate-authority={PKI}/ca.crt",
        "--kubelet-preferred-address-types=InternalIP",
        # After SIGTERM, /readyz fails for this long while requests are still served; then in-flight requests
        # drain and new ones get 429 with Retry-After (which clients retry) until the listener closes.
        f"--shutdown-delay-duration={spec.shutdown_delay_seconds}s", "--shutdown-send-retry-after=true",
        "--profiling=false", "--v=1",
    ]


def controller_flags(service: str, spec: ControlPlaneSpec) -> list[str]:
    """kube-controller-manager's or kube-scheduler's flags: leader-elected (one of them acts per cluster), serving
    their health and metrics on loopback only, talking to this member's own API server (kubeadm's layout)."""
    conf = CONTROLLERS[service][0]
    common = [f"--kubeconfig={conf}", f"--authentication-kubeconfig={conf}", f"--authorization-kubeconfig={conf}",
              "--bind-address=127.0.0.1", "--leader-elect=true", "--profiling=false", "--v=1"]
    if service == "kube-scheduler":
        return common
    # No CA key on the members: the CSR signer stays off (nodes get their certificates from the stack's PKI).
    return [*common, f"--root-ca-file={PKI}/ca.crt", f"--service-account-private-key-file={PKI}/sa.pem",
            "--use-service-account-credentials=true", f"--service-cluster-ip-range={spec.service_cidr}"]


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


def say_renewal(field: str, spec: ControlPlaneSpec, facts, names: list[str]) -> None:
    """The preview's word on renewal, from the certificates the members serve now (the provider decides the same
    from the state, by the same rule): which are due, and why."""
    import datetime

    renew = spec.certificates.renew_before_days
    horizon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=renew)
    for name in names:
        found = facts.served_certificate_expiry(name, 6443)
        if found and found <= horizon:
            left = (found - datetime.datetime.now(datetime.timezone.utc)).total_seconds() / 86400
            pulumi.log.info(f"{field}: renewing the node certificates: {name}'s API server certificate expires "
                            f"{found:%Y-%m-%d %H:%M:%S} UTC, in {left:.2f} days, within renewBeforeDays {renew:g}; "
                            "kube-apiserver and etcd load the new ones without a restart")
            return


def etcd_ca_moving(field: str, cluster: str, facts, names: list[str]) -> bool:
    """Whether a member's etcd still serves a certificate from the cluster CA (a cluster made before etcd had its
    own CA). Then this `up` moves it without a gap: every member trusts both CAs (a rolling restart), and only then
    are etcd's certificates issued from its own CA; the next `up` drops the cluster CA from etcd's trust."""
    moving = f"{cluster}-ca" in [facts.served_certificate_issuer(n, 2379) for n in names]
    if moving:
        pulumi.log.info(f"{field}: etcd moves to its own CA (kubeadm's layout: no Kubernetes client certificate opens "
                        "etcd): each member in turn trusts both CAs, then etcd's certificates come from its own; the "
                        "next `up` drops the cluster CA from etcd's trust, member by member")
    return moving


class ControlPlane(pulumi.ComponentResource):
    def __init__(self, name: str, args: ControlPlaneArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("cplb:cluster:ControlPlane", name, None, opts)
        self._name, self._args = name, args
        ctx, spec = args.ctx, args.spec
        child = pulumi.ResourceOptions(parent=self)
        life = spec.certificates
        self.ca = ClusterCa(f"{name}-ca", cluster=spec.cluster, validity_days=life.validity_days,
                            renew_before_days=life.renew_before_days, opts=child)
        self.ca_cert = self.ca.certs.apply(lambda c: c["ca.crt"])
        self.names = [ctx.object_name(spec.name, str(n)) for n in range(1, spec.count + 1)]
        # A member is healthy when its API server is ready, its certificate verified (its /readyz includes etcd).
        self._health = self.ca_cert.apply(lambda ca: {"kind": "https", "port": 6443, "path": "/readyz", "caCert": ca})
        # Members roll one at a time, the last first: a member goes down only while the others' API servers are
        # ready (so etcd keeps its quorum), and the next only once it is ready again. etcd's data and the pushed
        # PKI and flags are on each member's state volume, so a rebuilt member rejoins as itself.
        self.instances = build_members(self, ctx, args.facts, Members(
            resource_names=[f"{name}-{n}" for n in range(1, spec.count + 1)], names=self.names,
            image=spec.instance.image, image_field=f"{args.field}.instance.image", owner_id=f"group/{spec.name}",
            config=instance_config(spec.instance, spec.labels), devices=ctx.devices(spec.instance.network),
            health=self._health,
            # kube-apiserver's shutdown delay and drain, then etcd (images/common/usr/local/bin/cplb-shutdown).
            stop_seconds=spec.shutdown_delay_seconds + 45,
            common={"profiles": spec.instance.profiles, "instance_type": spec.instance.instance_type},
            per_member=lambda n: {"target": ctx.placement(spec.instance.target, n)},
            singleton_note="its rollout takes the cluster's only API server and etcd member down while it is rebuilt",
        ))
        self.addresses = pulumi.Output.all(*[i.address for i in self.instances])
        self.ready, self._resolve_ready = pulumi.deferred_output()
        # The workers' instances now, so the cluster's balancers select them in this `up`; their files once the
        # endpoint they join through is known (configure).
        self.workers = None
        if spec.workers.count:
            from components.workers import Workers, WorkersArgs

            self.workers = Workers(f"{name}-workers", WorkersArgs(
                ctx=ctx, spec=spec, field=args.field, facts=args.facts, ca=self.ca_key_pair(),
                ca_cert=self.ca_cert), opts=child)
        self.kubeconfig: pulumi.Output[str] = pulumi.Output.secret("")
        self.publisher_kubeconfig: pulumi.Output[str] = pulumi.Output.secret("")

    def ca_key_pair(self) -> pulumi.Output[dict]:
        """The cluster CA's certificate and key ({"crt", "key"}), for the providers that issue under it."""
        return pulumi.Output.all(self.ca.certs, self.ca.keys).apply(
            lambda v: {"crt": v[0]["ca.crt"], "key": v[1]["ca.key"]})

    def configure(self, endpoints: pulumi.Input[list], server: pulumi.Input[str]) -> None:
        """`endpoints`: every `host:port` (or host) clients use to reach this cluster through its balancers;
        `server`: the one the kubeconfig names (the VIP where there is one)."""
        ctx, spec = self._args.ctx, self._args.spec
        name = self._name
        hosts = pulumi.Output.from_input(endpoints).apply(endpoint_hosts)
        # A node's IPv6 address is named only where the stack serves IPv6 (and so waits for it when it makes an
        # instance): otherwise SLAAC brings it a moment after the instance is made, a later read finds it, and every
        # certificate would be reissued for an address nobody uses.
        nodes = pulumi.Output.all(*[pulumi.Output.all(i.address, i.ipv6) for i in self.instances]).apply(
            lambda rows: [{"name": n, "addresses": [a for a in [v4, *((v6 or []) if ctx.ipv6 else [])] if a]}
                          for n, (v4, v6) in zip(self.names, rows)])
        ca_input = self.ca_key_pair()
        etcd_ca_input = pulumi.Output.all(self.ca.certs, self.ca.keys).apply(
            lambda v: {"crt": v[0]["etcd-ca.crt"], "key": v[1]["etcd-ca.key"]})
        self.certs = NodeCertificates(
            f"{name}-certs", cluster=spec.cluster, ca=ca_input, etcd_ca=etcd_ca_input, nodes=nodes,
            endpoints=hosts.apply(lambda h: h[0]), dns_names=hosts.apply(lambda h: h[1]), service_ip=spec.service_ip,
            validity_days=spec.certificates.validity_days, renew_before_days=spec.certificates.renew_before_days,
            opts=pulumi.ResourceOptions(parent=self))
        say_renewal(f"{self._args.field}.certificates", spec, self._args.facts, self.names)
        moving = etcd_ca_moving(self._args.field, spec.cluster, self._args.facts, self.names)
        etcd_trust = self.ca.certs.apply(lambda c: c["etcd-ca.crt"] + (c["ca.crt"] if moving else ""))
        token = f"{ctx.stack}-{spec.cluster}"
        members = self.addresses.apply(lambda addrs: list(zip(self.names, addrs)))
        files: list[InstanceFile] = []
        restart_etcd = restart_etcd_behind_a_drained_apiserver(spec.shutdown_delay_seconds)

        def push(node: str, inst, role: str, path: str, content, secret: bool = False, reload=None, after=(),
                 mode="0644"):
            f = InstanceFile(
                f"{name}-{role}-{node.rsplit('-', 1)[1]}", instance=inst.name, instance_uuid=inst.uuid, path=path,
                content=pulumi.Output.secret(content) if secret else content, mode=mode,
                connection=ctx.connection, credentials=ctx.credentials, reload_command=reload,
                rollout=restart_plan if reload else None,
                opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)))
            files.append(f)
            return f

        # kube-vip's and the publication's own client certificates (RBAC-scoped: components/access.py).
        self.clients = ClientCertificates(
            f"{name}-client-certs", cluster=spec.cluster, ca=ca_input, validity_days=spec.certificates.validity_days,
            renew_before_days=spec.certificates.renew_before_days, opts=pulumi.ResourceOptions(parent=self))

        def client_kubeconfig(stem: str, at: pulumi.Input[str]) -> pulumi.Output[str]:
            """A kubeconfig naming `at`, with the admin certificate (ClusterCa) or a scoped client's."""
            if stem == "admin":
                pair = pulumi.Output.all(self.ca.certs, self.ca.keys).apply(lambda v: (v[0]["admin.crt"],
                                                                                      v[1]["admin.key"]))
            else:
                pair = pulumi.Output.all(self.clients.certs, self.clients.keys).apply(
                    lambda v: (v[0][stem]["client.crt"], v[1][stem]["client.key"]))
            return pulumi.Output.all(at, self.ca_cert, pair).apply(
                lambda v: kubeconfig(spec.cluster, v[0], v[1], v[2][0], v[2][1], user=stem))

        def pem(node: str, stem: str) -> pulumi.Output[str]:
            """A node's certificate and its key in one file (Go's TLS loaders take the key from it)."""
            return pulumi.Output.all(self.certs.certs, self.certs.keys).apply(
                lambda v: v[0][node][f"{stem}.crt"] + v[1][node][f"{stem}.key"])

        def etcd_certificates(node: str, inst, after=()) -> list[InstanceFile]:
            # etcd and kube-apiserver read these at each new connection: no restart.
            return [push(node, inst, "etcd-client-pem", f"{PKI}/apiserver-etcd-client.pem",
                         pem(node, "apiserver-etcd-client"), secret=True, mode="0600", after=after),
                    push(node, inst, "etcd-pem", f"{PKI}/etcd.pem", pem(node, "etcd"), secret=True, mode="0600",
                         after=after)]

        # etcd's membership: each member keeps the flags it started with; one added to a running cluster (`count`
        # raised) joins it as a learner and is promoted once in sync, one at a time; one removed (`count` lowered)
        # leaves it (its EtcdMember's delete) before its instance goes, the highest first.
        facts = self._args.facts
        found = {n: facts.etcd_initial_cluster(n, ETCD_ARGS) for n in self.names}
        places = etcd_membership(self.names, found)
        joining = [n for n in self.names if places[n].joins]
        if joining:
            if moving:
                raise ValueError(f"{self._args.field}.count: etcd is moving to its own CA in this `up`; add members "
                                 "with the next one")
            pulumi.log.info(f"{self._args.field}.count: {', '.join(joining)} join the running etcd cluster one at a "
                            "time, each as a learner first, promoted once it has caught up (quorum never changes "
                            "before that)")
        # A changed flags file restarts the member's etcd or kube-apiserver: member by member, in the members' rollout
        # order, each only while the other serving members are healthy and the next once it is healthy again
        # (InstanceFile rollout). A member joining in this `up` is not waited for: it serves only once the chain
        # reaches it, and it is a learner until then (quorum does not count it).
        serving = [n for n in self.names if n not in joining]
        restart_plan = self._health.apply(lambda h: {"health": h, "peers": serving, "waitSeconds": 600})
        peers = pulumi.Output.all(*[i.address for i in self.instances]).apply(
            lambda addrs: [[n, a] for n, a in zip(self.names, addrs)])
        first = self.names[0]
        etcd_tls = pulumi.Output.all(self.ca.certs, self.certs.certs, self.certs.keys).apply(
            lambda v: {"ca": v[0]["etcd-ca.crt"], "cert": v[1][first]["apiserver-etcd-client.crt"],
                       "key": v[2][first]["apiserver-etcd-client.key"]})
        seats: dict[str, EtcdMember] = {}

        def seat(node: str, inst, after: list) -> EtcdMember:
            """Chained, so that members leave one at a time, the highest first (deletes go dependents first)."""
            seats[node] = EtcdMember(
                f"{name}-etcd-member-{node.rsplit('-', 1)[1]}", name=inst.name, address=inst.address, peers=peers,
                join=places[node].joins, tls=etcd_tls,
                stop_apiserver=stop_apiserver(spec.shutdown_delay_seconds, release=False),
                stop_seconds=spec.shutdown_delay_seconds, connection=ctx.connection, credentials=ctx.credentials,
                opts=pulumi.ResourceOptions(parent=self, depends_on=after))
            return seats[node]

        last_seat: list[pulumi.Resource] = []
        for node, inst in zip(self.names, self.instances):
            if node not in joining:
                last_seat = [seat(node, inst, last_seat)]
        members = self.addresses.apply(lambda addrs: ",".join(f"{n}=https://{a}:2380" for n, a in zip(self.names,
                                                                                                         addrs)))

        def initial_cluster(node: str) -> pulumi.Output[str]:
            place = places[node]
            if place.joins:
                return seats[node].initialCluster
            return pulumi.Output.from_input(place.initial_cluster) if place.initial_cluster else members

        # The founding members last first (the rollout order), then the joining ones in turn.
        order = [*reversed([n for n in self.names if n not in joining]), *joining]
        previous: list[pulumi.Resource] = []
        for node, inst in ((n, self.instances[self.names.index(n)]) for n in order):
            if node in joining:  # after the one before it has joined and been promoted (`previous`)
                last_seat = [seat(node, inst, [*last_seat, *previous])]
            pki = [
                push(node, inst, "ca-crt", f"{PKI}/ca.crt", self.ca_cert),
                # The public key (verifies tokens) and the private key (signs them) in one file.
                push(node, inst, "sa", f"{PKI}/sa.pem", pulumi.Output.all(self.ca.certs, self.ca.keys).apply(
                    lambda v: v[0]["sa.pub"] + v[1]["sa.key"]), secret=True, mode="0600"),
                push(node, inst, "apiserver-pem", f"{PKI}/apiserver.pem", pem(node, "apiserver"), secret=True,
                     mode="0600"),
                push(node, inst, "apiserver-kubelet-client-pem", f"{PKI}/apiserver-kubelet-client.pem",
                     pem(node, "apiserver-kubelet-client"), secret=True, mode="0600"),
                *([] if moving else etcd_certificates(node, inst)),
            ]
            # etcd reads what it trusts only when it starts: a change restarts it, in the same member-by-member chain.
            trust = push(node, inst, "etcd-ca-crt", ETCD_TRUST, etcd_trust, reload=restart_etcd, after=pki + previous)
            state = places[node].state
            etcd_args = push(node, inst, "etcd-args", ETCD_ARGS, pulumi.Output.all(
                inst.address, initial_cluster(node)).apply(
                lambda v, node=node, state=state: render_flags(etcd_flags(node, v[0], v[1], token, state), ETCD_ARGS)),
                reload=restart_etcd, after=[*pki, trust, seats[node], *previous])
            started = [etcd_args]
            if places[node].joins:
                started.append(EtcdPromotion(
                    f"{name}-etcd-promotion-{node.rsplit('-', 1)[1]}", name=inst.name, address=inst.address,
                    peers=peers, tls=etcd_tls, opts=pulumi.ResourceOptions(parent=self, depends_on=[etcd_args])))
            # After etcd's restart, never beside it: both stop this member's kube-apiserver, and a second SIGTERM
            # makes it exit at once, skipping its shutdown delay (seen: TLS handshakes cut through the balancer).
            previous = [push(node, inst, "apiserver-args", APISERVER_ARGS, inst.address.apply(
                lambda a: render_flags(apiserver_flags(a, spec, self._args.bind_all), APISERVER_ARGS)),
                reload=RESTART_APISERVER, after=[*pki, trust, *started, *previous])]
            # The controllers follow their API server. They read their kubeconfig once, so a renewed certificate
            # restarts them (cheap: the other members' hold or take the leader lease meanwhile).
            for service, (conf, args_path, stem) in CONTROLLERS.items():
                again = restart(service)
                conf_file = push(node, inst, f"{stem}-conf", conf, pulumi.Output.all(
                    inst.address, self.ca_cert, self.certs.certs, self.certs.keys).apply(
                    lambda v, node=node, stem=stem: kubeconfig(spec.cluster, f"{v[0]}:6443", v[1],
                                                               v[2][node][f"{stem}.crt"], v[3][node][f"{stem}.key"],
                                                               user=stem)),
                    secret=True, mode="0600", reload=again, after=previous)
                push(node, inst, f"{stem}-args", args_path,
                     render_flags(controller_flags(service, spec), args_path), reload=again, after=[conf_file])
            # kube-vip's own kubeconfig (its Lease, nothing else: components/access.py), before the admin one at the
            # path kubeadm uses: a kube-vip started in between must not fall back to the admin's.
            kube_vip_conf = push(node, inst, "kube-vip-conf", KUBE_VIP_KUBECONFIG, client_kubeconfig(
                "kube-vip", inst.address.apply(lambda a: f"{a}:6443")), secret=True, mode="0600")
            push(node, inst, "admin-conf", ADMIN_CONF, client_kubeconfig(
                "admin", inst.address.apply(lambda a: f"{a}:6443")), secret=True, mode="0600", after=[kube_vip_conf])
        if moving:
            # Only once every member trusts etcd's own CA (the end of the chain) do certificates from it appear.
            for node, inst in zip(self.names, self.instances):
                etcd_certificates(node, inst, after=previous)

        # The workers join through the endpoint clients use (`server`), once the members have their files.
        if self.workers is not None:
            self.workers.configure(server, after=previous)
        pushed = pulumi.Output.all(*[f.content_hash for f in files])
        if pulumi.runtime.is_dry_run():
            self._resolve_ready(pushed.apply(lambda _: True))
        else:
            # Balancers' conditions wait for this, so the first `up` reports the cluster as it serves: the members
            # that had no etcd flags at preview (new ones, or a first `up` that stopped early) are waited for. The
            # others are not: a restart this `up` makes waits in its rollout, and one that is down for another
            # reason is what the balancers' status is there to show (it used to hold every `up` for 180 s).
            fresh = [i for i, n in enumerate(self.names) if not found[n]]
            self._resolve_ready(pulumi.Output.all(self.addresses, self.ca_cert, pushed).apply(
                lambda v: len(wait_ready([v[0][i] for i in fresh], v[1])) == len(fresh)))
        self.kubeconfig = pulumi.Output.secret(client_kubeconfig("admin", server))
        # What kube-vip and the publication may do, applied through the members themselves (kube-vip's VIP may be the
        # endpoint, and it needs these first) with the admin credential, once the chain of files has run.
        self.access = ClusterObjects(
            f"{name}-access", cluster=spec.cluster, servers=self.addresses.apply(lambda a: [f"{x}:6443" for x in a]),
            tls=pulumi.Output.all(self.ca_cert, self.ca.certs, self.ca.keys).apply(
                lambda v: {"ca": v[0], "cert": v[1]["admin.crt"], "key": v[2]["admin.key"]}),
            objects=scoped_objects(), opts=pulumi.ResourceOptions(parent=self, depends_on=previous))
        # The publication's credential: the cplb objects only; usable once its rights are in place.
        self.publisher_kubeconfig = pulumi.Output.secret(pulumi.Output.all(
            client_kubeconfig("publisher", server), self.access.id).apply(lambda v: v[0]))
        self.register_outputs({"addresses": self.addresses, "kubeconfig": self.kubeconfig})
