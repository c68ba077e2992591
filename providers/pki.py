"""Dynamic providers `cplb:pki:ClusterCa` and `cplb:pki:NodeCertificates`: the PKI of one control plane, made with the `cryptography` package.

`ClusterCa`: one CA (kept for the life of the resource), the service-account key pair, an admin client
certificate (O=system:masters). `ClientCertificates`: the scoped client certificates of kube-vip and the publication
(no group: RBAC grants them what they do; a resource of their own, so a state made before them gets them without
touching the CA's outputs). `NodeCertificates`, per node: the kube-apiserver serving certificate (SANs: every balancer address and DNS
name of the cluster, the node's own addresses, the in-cluster service names), an etcd server/peer certificate,
the API server's etcd client certificate, and kube-controller-manager's and kube-scheduler's client certificates.

The diff is precise: a change of the endpoints or the nodes' addresses updates the resource, which reissues the
leaf certificates under the same CA (so clients' kubeconfigs stay valid) and keeps the service-account key (so
tokens stay valid). Nothing is replaced unless the cluster name changes.

Renewal: leaf certificates live `validityDays` (365 by default); at every preview and `up` the diff finds those with
less than `renewBeforeDays` (30) left, and the update reissues them under the same CA (the admin certificate by
ClusterCa, the nodes' by NodeCertificates). kube-apiserver and etcd load a changed certificate file by themselves, so
a renewal restarts nothing.

Every private key is in the `keys` output, which is a Pulumi secret: encrypted in state, masked in diffs and
previews. Certificates (public) are in `certs`.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Optional

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from providers.values import plain

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_BEFORE_DAYS = 30


def _now() -> datetime.datetime:
    """The clock renewal decisions read (unit tests set a fixed one)."""
    return datetime.datetime.now(datetime.timezone.utc)


def lifetime(props: dict) -> tuple[float, float]:
    """(validity, renew-before) in days; states written before renewal existed have neither (the defaults)."""
    validity = props.get("validityDays")
    renew = props.get("renewBeforeDays")
    return (float(LEAF_DAYS if validity is None else validity), float(RENEW_BEFORE_DAYS if renew is None else renew))


def expiring(certs: dict[str, str], renew_before_days: float, now: Optional[datetime.datetime] = None) -> list[str]:
    """The names (of `certs`, name -> PEM) of the certificates with less than `renew_before_days` left."""
    now = now or _now()
    horizon = now + datetime.timedelta(days=renew_before_days)
    return sorted(name for name, pem in certs.items()
                  if isinstance(pem, str) and _load_cert(pem).not_valid_after_utc <= horizon)


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_pub(key) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _pem_cert(cert) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _load_key(pem: str):
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(pem.encode(), password=None)


def _load_cert(pem: str):
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem.encode())


def _name(cn: str, org: Optional[str] = None):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def make_ca(cluster: str, role: str = "ca"):
    """A self-signed CA named `<cluster>-<role>` (role `ca`: the cluster CA; `etcd-ca`: etcd's own)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _key()
    now = _now()
    name = _name(f"{cluster}-{role}")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert, ca_key, cn: str, *, org: Optional[str] = None, dns: tuple = (), ips: tuple = (),
          server: bool = False, client: bool = False, days: float = LEAF_DAYS):
    """A leaf certificate signed by the CA, valid for `days`; a new key each time."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _key()
    now = _now()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (x509.CertificateBuilder().subject_name(_name(cn, org)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                            crl_sign=False, content_commitment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    sans = [x509.DNSName(d) for d in dict.fromkeys(dns)] + \
        [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def sans_of(cert_pem: str) -> dict:
    """{'dns': [...], 'ips': [...]} of a certificate (for tests and refresh)."""
    from cryptography import x509

    ext = _load_cert(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {"dns": ext.get_values_for_type(x509.DNSName),
            "ips": [str(i) for i in ext.get_values_for_type(x509.IPAddress)]}


def issuer_cn(cert) -> str:
    """The common name of a certificate's issuer (which CA signed it); `cert` is PEM text or a loaded certificate."""
    from cryptography.x509.oid import NameOID

    found = (_load_cert(cert) if isinstance(cert, str) else cert).issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return found[0].value if found else ""


def _node_leaves(props: dict, ca_cert, ca_key) -> tuple[dict, dict]:
    """Per node: the API server's serving certificate (cluster CA), the etcd member's certificate and the API
    server's etcd client certificate (etcd's own CA, kubeadm's layout: no Kubernetes client certificate opens etcd;
    the cluster CA where no etcd CA is given), as (certs, keys) keyed by node name, then file name."""
    endpoints = list(props.get("endpoints") or [])
    dns_names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "localhost", *(props.get("dnsNames") or [])]
    certs: dict = {}
    keys: dict = {}
    days = lifetime(props)[0]
    etcd_ca = props.get("etcdCa") or {}
    etcd_ca_cert, etcd_ca_key = ((_load_cert(etcd_ca["crt"]), _load_key(etcd_ca["key"])) if etcd_ca
                                 else (ca_cert, ca_key))
    for node in props.get("nodes") or []:
        name, addresses = node["name"], [a for a in node.get("addresses") or [] if a]
        ips = [*addresses, *endpoints, "127.0.0.1", props.get("serviceIP") or "198.19.0.1"]
        apiserver, apiserver_key = issue(ca_cert, ca_key, "kube-apiserver", dns=(name, *dns_names), ips=tuple(ips),
                                         server=True, days=days)
        etcd, etcd_key = issue(etcd_ca_cert, etcd_ca_key, name, dns=(name, "localhost"),
                               ips=(*addresses, "127.0.0.1"), server=True, client=True, days=days)
        etcd_client, etcd_client_key = issue(etcd_ca_cert, etcd_ca_key, "kube-apiserver-etcd-client", client=True,
                                             days=days)
        certs[name] = {"apiserver.crt": _pem_cert(apiserver), "etcd.crt": _pem_cert(etcd),
                       "apiserver-etcd-client.crt": _pem_cert(etcd_client)}
        keys[name] = {"apiserver.key": _pem_key(apiserver_key), "etcd.key": _pem_key(etcd_key),
                      "apiserver-etcd-client.key": _pem_key(etcd_client_key)}
        # kube-controller-manager's and kube-scheduler's client certificates, by the user names the API server's
        # bootstrap RBAC policy binds (kubeadm issues them per node the same way), and the API server's client
        # certificate towards the kubelets (logs, exec), as kubeadm's apiserver-kubelet-client.
        for stem, (user, org) in CONTROL_PLANE_USERS.items():
            cert, key = issue(ca_cert, ca_key, user, org=org, client=True, days=days)
            certs[name][f"{stem}.crt"], keys[name][f"{stem}.key"] = _pem_cert(cert), _pem_key(key)
    return certs, keys


CONTROL_PLANE_USERS = {"controller-manager": ("system:kube-controller-manager", None),
                       "scheduler": ("system:kube-scheduler", None),
                       "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters")}
# Every node's leaves: a state that lacks one (made by a release before it existed) is reissued.
NODE_LEAVES = ("apiserver", "etcd", "apiserver-etcd-client", *CONTROL_PLANE_USERS)


def _worker_leaves(props: dict, ca_cert, ca_key) -> tuple[dict, dict]:
    """Per worker node, under the cluster CA: the kubelet's client certificate (`system:node:<name>` in
    `system:nodes`, what the Node authorizer and NodeRestriction expect), its serving certificate (the node's name
    and addresses: the API server verifies it for logs and exec) and kube-proxy's client certificate."""
    certs: dict = {}
    keys: dict = {}
    days = lifetime(props)[0]
    for node in props.get("nodes") or []:
        name, addresses = node["name"], [a for a in node.get("addresses") or [] if a]
        made = {
            "kubelet": issue(ca_cert, ca_key, f"system:node:{name}", org="system:nodes", client=True, days=days),
            "kubelet-serving": issue(ca_cert, ca_key, f"system:node:{name}", org="system:nodes", dns=(name,),
                                     ips=tuple(addresses), server=True, days=days),
            "kube-proxy": issue(ca_cert, ca_key, "system:kube-proxy", client=True, days=days),
        }
        certs[name] = {f"{stem}.crt": _pem_cert(c) for stem, (c, _) in made.items()}
        keys[name] = {f"{stem}.key": _pem_key(k) for stem, (_, k) in made.items()}
    return certs, keys


WORKER_LEAVES = ("kubelet", "kubelet-serving", "kube-proxy")


class ClusterCaProvider(ResourceProvider):
    """The cluster CA, etcd's own CA and the service-account key, made once and kept for the resource's life, and
    the admin client certificate, renewed under the same CA when it is due. A state made before etcd had its own CA
    gets one by an update (the cluster CA and the service-account key kept)."""

    @staticmethod
    def _admin(props: dict, ca_cert, ca_key) -> tuple[str, str]:
        admin, admin_key = issue(ca_cert, ca_key, f"{props['cluster']}-admin", org="system:masters", client=True,
                                 days=lifetime(props)[0])
        return _pem_cert(admin), _pem_key(admin_key)

    def create(self, props):
        cluster = props["cluster"]
        ca_cert, ca_key = make_ca(cluster)
        etcd_ca_cert, etcd_ca_key = make_ca(cluster, "etcd-ca")
        sa_key = _key()
        admin, admin_key = self._admin(props, ca_cert, ca_key)
        return CreateResult(id_=f"ca-{cluster}", outs={
            **{k: props[k] for k in CA_INPUT_KEYS if k in props},
            "certs": {"ca.crt": _pem_cert(ca_cert), "etcd-ca.crt": _pem_cert(etcd_ca_cert), "sa.pub": _pem_pub(sa_key),
                      "admin.crt": admin},
            "keys": {"ca.key": _pem_key(ca_key), "etcd-ca.key": _pem_key(etcd_ca_key), "sa.key": _pem_key(sa_key),
                     "admin.key": admin_key},
        })

    def update(self, _id, olds, news):
        """The admin certificate reissued (renewal, or a new life); the CAs and the service-account key kept, and
        etcd's own CA made where the state has none yet."""
        certs, keys = dict(olds["certs"]), dict(olds["keys"])
        if "etcd-ca.crt" not in certs:
            etcd_ca_cert, etcd_ca_key = make_ca(news["cluster"], "etcd-ca")
            certs["etcd-ca.crt"], keys["etcd-ca.key"] = _pem_cert(etcd_ca_cert), _pem_key(etcd_ca_key)
        certs["admin.crt"], keys["admin.key"] = self._admin(news, _load_cert(certs["ca.crt"]), _load_key(keys["ca.key"]))
        return UpdateResult(outs={**{k: news[k] for k in CA_INPUT_KEYS if k in news}, "certs": certs, "keys": keys})

    def diff(self, _id, olds, news):
        if olds.get("cluster") != news.get("cluster"):
            return DiffResult(changes=True, replaces=["cluster"], delete_before_replace=False)
        certs = olds.get("certs") or {}
        changed = lifetime(olds) != lifetime(news) or "etcd-ca.crt" not in certs or bool(
            expiring({"admin.crt": certs.get("admin.crt")}, lifetime(news)[1]))
        return DiffResult(changes=changed, replaces=[], delete_before_replace=False)

    def read(self, id_, props):
        return ReadResult(id_=id_, outs=props)  # lives in the state only


class ClusterCa(pulumi.dynamic.Resource, module="pki", name="ClusterCa"):
    """Outputs: `certs` (ca.crt, etcd-ca.crt, sa.pub, admin.crt) and `keys` (ca.key, etcd-ca.key, sa.key, admin.key;
    secret)."""

    certs: pulumi.Output[dict]
    keys: pulumi.Output[dict]

    def __init__(self, resource_name: str, *, cluster: str, validity_days: float = LEAF_DAYS,
                 renew_before_days: float = RENEW_BEFORE_DAYS, opts: Optional[pulumi.ResourceOptions] = None):
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["keys"]))
        super().__init__(ClusterCaProvider(), resource_name, {
            "cluster": cluster, "validityDays": validity_days, "renewBeforeDays": renew_before_days,
            "certs": None, "keys": None}, opts)


CA_INPUT_KEYS = ("cluster", "validityDays", "renewBeforeDays")


class NodeCertificatesProvider(ResourceProvider):
    """Leaf certificates of every node under the cluster CA. Any input change reissues them in place (an update):
    a new balancer address reaches the serving certificate without replacing anything."""

    leaves = staticmethod(_node_leaves)
    LEAVES = NODE_LEAVES

    def _outs(self, props: dict) -> dict:
        ca = props["ca"]
        certs, keys = self.leaves(props, _load_cert(ca["crt"]), _load_key(ca["key"]))
        return {**{k: props.get(k) for k in (*INPUT_KEYS, *LIFETIME_KEYS)}, "certs": certs, "keys": keys}

    def create(self, props):
        return CreateResult(id_=f"certs-{props['cluster']}", outs=self._outs(props))

    def update(self, _id, _olds, news):
        return UpdateResult(outs=self._outs(news))

    def diff(self, _id, olds, news):
        changed = [k for k in INPUT_KEYS if plain(olds.get(k)) != plain(news.get(k))]
        if lifetime(olds) != lifetime(news):
            changed.append("validityDays")
        leaves = {f"{node}/{name}": pem for node, files in (olds.get("certs") or {}).items()
                  for name, pem in (files or {}).items()}
        if expiring(leaves, lifetime(news)[1]):
            changed.append("certs")  # renewal: due within renewBeforeDays
        elif "nodes" not in changed and any(
                f"{node['name']}/{stem}.crt" not in leaves for node in news.get("nodes") or []
                if isinstance(node, dict) and isinstance(node.get("name"), str) for stem in self.LEAVES):
            changed.append("certs")  # a leaf this release issues that the state has not got yet
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def read(self, id_, props):
        return ReadResult(id_=id_, outs=props)


INPUT_KEYS = ("cluster", "ca", "etcdCa", "nodes", "endpoints", "dnsNames", "serviceIP")
# Compared through lifetime(): states written before renewal existed have neither key.
LIFETIME_KEYS = ("validityDays", "renewBeforeDays")


class NodeCertificates(pulumi.dynamic.Resource, module="pki", name="NodeCertificates"):
    """Outputs: `certs` (node -> file -> PEM) and `keys` (the same for private keys; secret)."""

    certs: pulumi.Output[dict]
    keys: pulumi.Output[dict]

    def __init__(self, resource_name: str, *, cluster: str, ca: pulumi.Input[dict], nodes: pulumi.Input[list],
                 endpoints: pulumi.Input[list], dns_names: pulumi.Input[list], service_ip: str,
                 etcd_ca: Optional[pulumi.Input[dict]] = None,
                 validity_days: float = LEAF_DAYS, renew_before_days: float = RENEW_BEFORE_DAYS,
                 opts: Optional[pulumi.ResourceOptions] = None):
        props = {"cluster": cluster, "ca": pulumi.Output.secret(ca),
                 "etcdCa": pulumi.Output.secret(etcd_ca) if etcd_ca is not None else None, "nodes": nodes,
                 "endpoints": endpoints,
                 "dnsNames": dns_names, "serviceIP": service_ip, "validityDays": validity_days,
                 "renewBeforeDays": renew_before_days, "certs": None, "keys": None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["keys", "ca", "etcdCa"]))
        super().__init__(NodeCertificatesProvider(), resource_name, props, opts)


class WorkerCertificatesProvider(NodeCertificatesProvider):
    """The worker nodes' leaves (_worker_leaves), with the same diff, renewal and reissue as the members'."""

    leaves = staticmethod(_worker_leaves)
    LEAVES = WORKER_LEAVES

    def create(self, props):
        return CreateResult(id_=f"worker-certs-{props['cluster']}", outs=self._outs(props))


class WorkerCertificates(pulumi.dynamic.Resource, module="pki", name="WorkerCertificates"):
    """Outputs: `certs` (node -> file -> PEM) and `keys` (secret), for the cluster's worker nodes."""

    certs: pulumi.Output[dict]
    keys: pulumi.Output[dict]

    def __init__(self, resource_name: str, *, cluster: str, ca: pulumi.Input[dict], nodes: pulumi.Input[list],
                 validity_days: float = LEAF_DAYS, renew_before_days: float = RENEW_BEFORE_DAYS,
                 opts: Optional[pulumi.ResourceOptions] = None):
        props = {"cluster": cluster, "ca": pulumi.Output.secret(ca), "nodes": nodes, "validityDays": validity_days,
                 "renewBeforeDays": renew_before_days, "certs": None, "keys": None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["keys", "ca"]))
        super().__init__(WorkerCertificatesProvider(), resource_name, props, opts)


# Client certificates the stack's own tools use, each bound by RBAC to what it does (components/access.py), not the
# admin's `system:masters`: kube-vip's leader election (one Lease) and the publication (the cplb objects).
SCOPED_CLIENTS = {"kube-vip": "cplb:kube-vip", "publisher": "cplb:publisher"}


def _client_leaves(props: dict, ca_cert, ca_key) -> tuple[dict, dict]:
    """Per scoped client ({"name", "user"}), one client certificate for its user, no group."""
    certs: dict = {}
    keys: dict = {}
    days = lifetime(props)[0]
    for client in props.get("nodes") or []:
        cert, key = issue(ca_cert, ca_key, client["user"], client=True, days=days)
        certs[client["name"]], keys[client["name"]] = {"client.crt": _pem_cert(cert)}, {"client.key": _pem_key(key)}
    return certs, keys


class ClientCertificatesProvider(NodeCertificatesProvider):
    """The scoped clients' certificates, with the same diff, renewal and reissue as the nodes'."""

    leaves = staticmethod(_client_leaves)
    LEAVES = ("client",)

    def create(self, props):
        return CreateResult(id_=f"client-certs-{props['cluster']}", outs=self._outs(props))


class ClientCertificates(pulumi.dynamic.Resource, module="pki", name="ClientCertificates"):
    """Outputs: `certs` (client -> client.crt) and `keys` (client -> client.key; secret), for SCOPED_CLIENTS."""

    certs: pulumi.Output[dict]
    keys: pulumi.Output[dict]

    def __init__(self, resource_name: str, *, cluster: str, ca: pulumi.Input[dict],
                 validity_days: float = LEAF_DAYS, renew_before_days: float = RENEW_BEFORE_DAYS,
                 opts: Optional[pulumi.ResourceOptions] = None):
        props = {"cluster": cluster, "ca": pulumi.Output.secret(ca),
                 "nodes": [{"name": name, "user": user} for name, user in SCOPED_CLIENTS.items()],
                 "validityDays": validity_days, "renewBeforeDays": renew_before_days, "certs": None, "keys": None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["keys", "ca"]))
        super().__init__(ClientCertificatesProvider(), resource_name, props, opts)
