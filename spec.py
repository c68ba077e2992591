"""The stack config schema (namespace `cplb`): pydantic models, defaults, and error messages with key paths.

Everything a user writes in `stacks/Pulumi.<stack>.yaml` is validated here, before any resource is
registered, so bad input fails `pulumi preview` with the key path and what is allowed, and nothing is
created. Every string that can reach a rendered config file (haproxy, keepalived, nginx) is constrained
to a safe pattern here; templates never see unvalidated text.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, Optional

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from providers.haproxy_runtime import RUNTIME_PORT

NAMESPACE = "cplb"
#: Top-level config keys of the namespace, each a field of StackSpec (by alias).
TOP_LEVEL_KEYS = ("incus", "instanceGroups", "controlPlanes", "loadBalancers", "kubernetes")
#: Strategies the schema knows, and the ones this version can build.
STRATEGIES = ("lxc", "oci", "ovn", "keepalived", "dns", "external")
IMPLEMENTED_STRATEGIES = ("lxc", "oci", "ovn", "external", "keepalived", "dns")
#: What each strategy can balance; enforced at preview (docs/strategies.md has the table, `make schema`
#: writes it from here). protocols: of `ports[]`; ranges: `ports[].endPort`; families: `ipFamilies`;
#: addresses: explicit `targets.addresses` (keepalived runs on the selected instances themselves).
CAPABILITIES = {
    "lxc": {"protocols": ("TCP",), "ranges": True, "families": ("IPv4", "IPv6"), "addresses": True},
    "oci": {"protocols": ("TCP",), "ranges": True, "families": ("IPv4",), "addresses": True},
    "ovn": {"protocols": ("TCP", "UDP"), "ranges": False, "families": ("IPv4",), "addresses": True},
    "external": {"protocols": ("TCP", "UDP", "SCTP"), "ranges": True, "families": ("IPv4", "IPv6"),
                 "addresses": True},
    "keepalived": {"protocols": ("TCP",), "ranges": False, "families": ("IPv4",), "addresses": False},
    "dns": {"protocols": ("TCP", "UDP"), "ranges": False, "families": ("IPv4", "IPv6"), "addresses": True},
}
API_SERVER_PORT = 6443
RESERVED_PORTS = range(64512, 65536)  # Claudie keeps these for itself; so do we
# Characters keepalived reads literally in a word: not `!` or `#` (a comment anywhere in a word), `"`, `'` or `\\`
# (quoting), `{` `}` (blocks), `$` (definitions), `~` and `@` (sequences and conditional lines), nor whitespace.
AUTH_PASS_PATTERN = r"^[A-Za-z0-9%^&*()_+=:,.<>?/-]+$"
# Ports that haproxy binds for itself in every haproxy-based strategy (lxc, oci, keepalived userspace): the
# monitor that keepalived's track_script asks, and the runtime API used for drain and status. Both listen on
# 127.0.0.1 only, but a balanced port on 0.0.0.0 would bind the same port a second time (haproxy sets SO_REUSEPORT,
# so both would listen and share connections).
HAPROXY_MONITOR_PORT = 8405
HAPROXY_RUNTIME_PORT = RUNTIME_PORT
HAPROXY_INTERNAL_PORTS = {HAPROXY_MONITOR_PORT: "haproxy's monitor", HAPROXY_RUNTIME_PORT: "haproxy's runtime API"}
#: Config fields whose values are secrets: an error about them names the field and the rule, never the value.
SECRET_KEYS = frozenset({"authPass", "secret", "clientKey", "kubeconfig"})
#: Bounds on the shape of a stack config (alias bombs, deep nesting, huge values).
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_STRING = 65_536

# --- safe scalar types ---------------------------------------------------------------------------------

# A DNS label: what Incus accepts as an instance name and what is safe in every config file.
DnsLabel = Annotated[
    str,
    StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z]([a-z0-9-]*[a-z0-9])?$"),
]
# A local image alias (`cplb/haproxy`): no spaces, quotes or newlines; '/' is part of the alias grammar.
IncusName = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
]
# The name of an Incus project, storage pool, profile or cluster member, in Incus's own grammar: it is one segment of
# a REST URL path (`/1.0/profiles/<name>`), so no '/', and it starts with a letter or digit (never '.' or '..').
IncusObjectName = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]
# A managed network's name is also the name of its Linux interface (bridge, OVN): at most 15 characters.
NetworkName = Annotated[
    str, StringConstraints(min_length=1, max_length=15, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]
# `user.cplb.*` keys incus-cplb sets and reads itself (ownership, its proof, draining, a replica's balancer): never
# a group's declared labels. `user.cplb.loadbalancer` is the selection label service balancers document.
RESERVED_LABEL_PREFIX = "user.cplb."
USER_LABELS_UNDER_RESERVED = frozenset({"user.cplb.loadbalancer"})
# A `user.*` config key as used for labels.
LabelKey = Annotated[
    str, StringConstraints(min_length=6, max_length=128, pattern=r"^user\.[A-Za-z0-9][A-Za-z0-9._/-]*$")
]
# A label value: printable, no whitespace, quotes, braces or other config-file syntax.
LabelValue = Annotated[str, StringConstraints(max_length=128, pattern=r"^[A-Za-z0-9._:/@+-]*$")]
Port = Annotated[int, Field(ge=1, le=65535)]


def show(value: Any, limit: int = 60) -> str:
    """A value as an error message shows it: escaped (no control character reaches a terminal or a PR comment)
    and cut when long."""
    if not isinstance(value, str):
        text = repr(value)
        return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
    text = value
    if len(text) > limit:
        return json.dumps(text[:limit], ensure_ascii=True)[:-1] + f'..." ({len(text)} characters)'
    return json.dumps(text, ensure_ascii=True)


def ip_object(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as every config file can print it: no IPv6 scope (`%zone`, which Python's parser keeps with
    whatever follows it), no IPv4-mapped form (it would be routed as IPv6), not unspecified nor multicast."""
    if not isinstance(value, str):
        raise ValueError(f"{show(value)} is not an IPv4 or IPv6 address")
    if "%" in value:
        raise ValueError(f"{show(value)} has an IPv6 scope (`%zone`); scoped addresses are not accepted here")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{show(value)} is not an IPv4 or IPv6 address") from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        raise ValueError(f"{show(value)} is an IPv4-mapped IPv6 address: write the IPv4 address {ip.ipv4_mapped}")
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{show(value)} is {'unspecified' if ip.is_unspecified else 'a multicast address'}")
    return ip


def _ip(value: str) -> str:
    return str(ip_object(value))


def split_host_port(endpoint: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host without brackets, port), for text a pattern has already checked."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def family_of(address: str) -> str:
    return "IPv6" if ":" in address else "IPv4"


IpAddress = Annotated[str, AfterValidator(_ip)]


# An OCI image reference as the distribution grammar defines it: [domain[:port]/]path[:tag][@digest]. A trailing
# `:`, upper case in the path or a YAML keyword alone are refused here rather than at the runtime.
_REF_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?/)"
IMAGE_REFERENCE_PATTERN = (rf"^{_REF_DOMAIN}?{_REF_COMPONENT}(?:/{_REF_COMPONENT})*"
                           r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$")


class Model(BaseModel):
    """Base: camelCase keys in YAML, unknown keys rejected (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# --- Incus connection ----------------------------------------------------------------------------------


class IncusSpec(Model):
    """Where the Incus server is and where new instances go."""

    socket: str = Field(
        "/var/lib/incus/unix.socket",
        description="Path of the local Incus Unix socket; used when `remote` is not set.",
        pattern=r"^/[^\s]*$",
    )
    remote: Optional[str] = Field(
        None,
        description="HTTPS endpoint of a remote Incus server, e.g. https://incus.example:8443.",
        pattern=r"^https://[A-Za-z0-9.\[\]:-]+(:\d+)?/?$",
    )
    client_cert: Optional[str] = Field(None, alias="clientCert", description="Client certificate (PEM).")
    client_key: Optional[str] = Field(
        None, alias="clientKey", description="Client key (PEM). Set it from standard input, never on the command line (where `ps` shows "
        "it): `pulumi config set --secret --path cplb:incus.clientKey < client.key`."
    )
    server_cert: Optional[str] = Field(
        None, alias="serverCert", description="Server certificate (PEM) to trust instead of the system CAs."
    )
    project: IncusObjectName = Field("default", description="Incus project for every object the stack creates.")
    storage_pool: IncusObjectName = Field(
        "default", alias="storagePool", description="Storage pool of the instances' root disks."
    )
    network: NetworkName = Field("incusbr0", description="Managed network the instances' eth0 attach to.")
    subnet: Optional[str] = Field(
        None, pattern=r"^[0-9.]+/[0-9]{1,2}$",
        description="The IPv4 subnet of `network` as the gateway's address and prefix (e.g. 198.18.30.1/24), for a "
        "network whose addresses Incus does not manage (macvlan onto the hosts' LAN): VIPs are checked against it.")

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        try:
            iface = ipaddress.IPv4Interface(value)
        except ValueError:
            raise ValueError(f"{show(value)} is not an IPv4 address with a prefix length") from None
        if not 8 <= iface.network.prefixlen <= 30:
            raise ValueError("subnet needs a prefix length of 8-30")
        return str(iface)

    @model_validator(mode="after")
    def _remote_needs_credentials(self):
        if self.remote and not (self.client_cert and self.client_key):
            raise ValueError("`remote` needs `clientCert` and `clientKey` (set the key with --secret)")
        return self


# --- instances -----------------------------------------------------------------------------------------


class Limits(Model):
    cpu: Optional[str] = Field(
        None, description="limits.cpu: a count (`2`) or a CPU set (`0-1`, `0,2`).", pattern=r"^\d+([-,]\d+)*$"
    )
    memory: Optional[str] = Field(
        None,
        description="limits.memory: bytes with a unit (`256MiB`, `1GB`) or a percentage (`50%`).",
        pattern=r"^\d+(B|kB|MB|GB|TB|KiB|MiB|GiB|TiB|%)$",
    )


class InstanceSpec(Model):
    """How an Incus instance is made. Everything updates in place; a new image rolls the group one member at a time,
    each rebuilt in place with its name, address and state volume (docs/upgrades.md)."""

    image: IncusName = Field(description="Local image alias, e.g. `cplb/haproxy`: the stack keeps the version its "
                             "instances run until `make upgrade`; `cplb/haproxy/<recipe>` names one version.")
    profiles: list[IncusObjectName] = Field(default_factory=list, description="Profiles applied in order.")
    limits: Limits = Field(default_factory=Limits, description="CPU and memory limits.")
    instance_type: Optional[str] = Field(
        None, alias="instanceType", description="Incus instance type, e.g. `c1-m1`.", pattern=r"^[a-z0-9.-]+$"
    )
    target: Optional[IncusObjectName] = Field(None, description="Cluster member to place the instance on.")
    network: Optional[NetworkName] = Field(
        None, description="Network of eth0; default `cplb:incus.network` (an OVN network for `ovn` backends)."
    )


class InstanceGroupSpec(Model):
    """A set of plain instances the stack owns, for example a demo control plane behind a balancer."""

    name: DnsLabel = Field(description="Group name; instances are named `<stack>-<name>-<n>`.")
    count: int = Field(1, ge=0, le=50, description="Number of instances.")
    instance: InstanceSpec = Field(
        default_factory=lambda: InstanceSpec(image="cplb/demo-apiserver"),
        description="How each instance is made.",
    )
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="`user.*` config keys set on every instance (selector labels); not "
        "`user.cplb.*`, which incus-cplb sets itself (ownership, draining), but for `user.cplb.loadbalancer`."
    )

    @field_validator("labels")
    @classmethod
    def _not_ours(cls, labels: dict) -> dict:
        taken = sorted(k for k in labels if k.startswith(RESERVED_LABEL_PREFIX) and k not in USER_LABELS_UNDER_RESERVED)
        if taken:
            raise ValueError(f"{', '.join(taken)}: `user.cplb.*` keys are incus-cplb's own (ownership, its proof, "
                             "draining by `user.cplb.disabled`, which an operator sets on a running instance); use "
                             "another `user.*` key")
        return labels


class CertificatesSpec(Model):
    """How long the control plane's leaf certificates live (API server serving, etcd server/peer, the API server's
    etcd client, the admin client) and when they are renewed: at every `up` and preview, a certificate with less
    than `renewBeforeDays` left is reissued under the same CA, and the services load it without a restart."""

    validity_days: float = Field(365, alias="validityDays", gt=0, le=3650,
                                 description="Life of a leaf certificate, in days (fractions allowed, for tests).")
    renew_before_days: float = Field(30, alias="renewBeforeDays", ge=0, le=3650,
                                     description="Renew a leaf certificate once it has less than this left, in days.")

    @model_validator(mode="after")
    def _renew_within_life(self):
        if self.renew_before_days >= self.validity_days:
            raise ValueError(f"renewBeforeDays ({show(self.renew_before_days)}) must be less than validityDays "
                             f"({show(self.validity_days)}): otherwise every `up` would renew every certificate")
        return self


class WorkersSpec(Model):
    """Worker nodes of the cluster (containerd, runc, CNI, kubelet and kube-proxy), which join through the
    cluster's balanced endpoint (their kubeconfig names it, never a member), with node certificates from the
    stack's PKI. Instances are `<stack>-<cluster>-node-<n>`, labelled `user.cluster-role=worker`."""

    count: int = Field(0, ge=0, le=20, description="Worker nodes (0: none).")
    instance: InstanceSpec = Field(
        default_factory=lambda: InstanceSpec(image="cplb/worker", limits=Limits(memory="1GiB")),
        description="How each worker is made (unprivileged, with nesting: pods are nested containers).")
    pod_cidr: str = Field("198.19.128.0/17", alias="podCIDR", pattern=r"^[0-9.]+/[0-9]{1,2}$",
                          description="The pods' addresses; each worker gets the next /24 of it for its pods.")
    demo_workload: bool = Field(False, alias="demoWorkload", description="A DaemonSet `cplb-web` (namespace "
                                "`cplb-demo`): every worker answers plain HTTP with its pod's name on its ports 80 "
                                "and 443, for an ingress balancer to send to.")

    @field_validator("pod_cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError(f"{show(value)} is not an IPv4 network (host bits must be zero)") from None
        if not 12 <= net.prefixlen <= 22:
            raise ValueError("podCIDR needs a prefix length of 12-22 (each worker takes a /24 of it)")
        return str(net)

    @model_validator(mode="after")
    def _room(self):
        if self.count and 2 ** (24 - ipaddress.IPv4Network(self.pod_cidr).prefixlen) <= self.count:
            raise ValueError(f"podCIDR {self.pod_cidr} has room for fewer than {self.count} workers' /24s")
        return self

    def pod_subnet(self, n: int) -> str:
        """The pods' /24 of worker n (1-based): the n-th, the network's first /24 left unused."""
        return str(list(ipaddress.IPv4Network(self.pod_cidr).subnets(new_prefix=24))[n])


class ControlPlaneSpec(Model):
    """A real Kubernetes control plane the stack owns, standing in for what Cluster API, kubeadm or k0s would
    create: `count` instances, each with a stacked etcd member and kube-apiserver, and a PKI made by the program.
    Instances are `<stack>-<name>-<n>` and carry `user.cluster-name=<cluster>` and
    `user.cluster-role=control-plane`, so control-plane balancers of the cluster select them."""

    name: DnsLabel = Field(description="Name; instances are `<stack>-<name>-<n>`.")
    cluster: DnsLabel = Field(description="The cluster; its balancers' addresses go into the serving certificate.")
    count: int = Field(3, ge=1, le=7, description="Members (etcd quorum: 3 tolerates one lost member). Raised, "
                       "new members join the running etcd one at a time (a learner, then promoted); lowered, the "
                       "highest members leave etcd before their instances go (docs/upgrades.md).")
    instance: InstanceSpec = Field(
        default_factory=lambda: InstanceSpec(image="cplb/control-plane", limits=Limits(memory="1GiB")),
        description="How each instance is made.")
    shutdown_delay_seconds: int = Field(
        5, alias="shutdownDelaySeconds", ge=0, le=60,
        description="kube-apiserver --shutdown-delay-duration: after SIGTERM, /readyz fails for this long while "
        "the server still serves, so balancers take it out before the listener closes.")
    service_cidr: str = Field("198.19.0.0/24", alias="serviceCIDR", pattern=r"^[0-9.]+/[0-9]{1,2}$",
                              description="Service cluster IP range (allocations only; no traffic goes there).")
    certificates: CertificatesSpec = Field(default_factory=CertificatesSpec,
                                           description="Life and renewal of the leaf certificates.")
    workers: WorkersSpec = Field(default_factory=WorkersSpec, description="The cluster's worker nodes.")

    @model_validator(mode="after")
    def _pods_apart_from_services(self):
        if self.workers.count and ipaddress.IPv4Network(self.service_cidr).overlaps(
                ipaddress.IPv4Network(self.workers.pod_cidr)):
            raise ValueError(f"workers.podCIDR {self.workers.pod_cidr} overlaps serviceCIDR {self.service_cidr}")
        return self

    @field_validator("service_cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError(f"{show(value)} is not an IPv4 network (host bits must be zero)") from None
        if not 12 <= net.prefixlen <= 28:
            raise ValueError("serviceCIDR needs a prefix length of 12-28")
        return str(net)

    @property
    def service_ip(self) -> str:
        return str(ipaddress.IPv4Network(self.service_cidr)[1])

    @property
    def labels(self) -> dict[str, str]:
        return {"user.cluster-name": self.cluster, "user.cluster-role": "control-plane"}


# --- load balancers ------------------------------------------------------------------------------------

Protocol = Literal["TCP", "UDP", "SCTP"]


class PortSpec(Model):
    name: DnsLabel = Field(description="Port name, unique within the balancer.")
    protocol: Protocol = Field("TCP", description="TCP, UDP or SCTP (what each strategy supports differs).")
    port: Port = Field(6443, description="Frontend port the endpoint listens on (first of a range).")
    end_port: Optional[Port] = Field(
        None, alias="endPort",
        description="Last port of a range `port`-`endPort` (Ironcore's endPort); each port goes to the same "
        "port on the backend, so `targetPort` is not allowed with it.",
    )
    target_port: Optional[Port] = Field(
        None, alias="targetPort", description="Backend port; defaults to `port`."
    )

    @model_validator(mode="after")
    def _range(self):
        if self.end_port is not None:
            if self.end_port < self.port:
                raise ValueError(f"endPort {self.end_port} must be >= port {self.port}")
            if self.target_port is not None and self.target_port != self.port:
                raise ValueError("a port range forwards each port to the same port: leave targetPort out")
        return self

    @property
    def backend_port(self) -> int:
        return self.target_port or self.port

    @property
    def last_port(self) -> int:
        return self.end_port or self.port

    @property
    def is_range(self) -> bool:
        return self.end_port is not None and self.end_port != self.port

    @property
    def listen(self) -> str:
        """`port` or `port-endPort`, as haproxy and nginx write a range."""
        return f"{self.port}-{self.end_port}" if self.is_range else str(self.port)


class LabelRequirement(Model):
    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[LabelValue] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_match_operator(self):
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self


class Selector(Model):
    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[LabelRequirement] = Field(default_factory=list, alias="matchExpressions")

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.match_labels and not self.match_expressions:
            raise ValueError("an empty selector would select every instance; give matchLabels or matchExpressions")
        return self


class TargetAddress(Model):
    name: DnsLabel = Field(description="Name of the backend in the balancer's config.")
    address: IpAddress


class TargetsSpec(Model):
    """Backends: a selector over instances' `user.*` config, or explicit addresses (one or the other)."""

    selector: Optional[Selector] = None
    addresses: list[TargetAddress] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self):
        if self.selector and self.addresses:
            raise ValueError("give either `selector` or `addresses`, not both")
        if not self.selector and not self.addresses:
            raise ValueError("give `selector` or `addresses`")
        names = [a.name for a in self.addresses]
        if len(names) != len(set(names)):
            raise ValueError("target names must be unique")
        return self


class HealthCheckSpec(Model):
    mode: Literal["tcp", "https", "http", "https-healthz", "http-healthz"] = Field(
        "tcp", description="`tcp` connect; `https`: `GET <path>` over TLS, verified against the cluster CA where the "
        "stack has the cluster's control plane (a real kube-apiserver answers `/readyz` false before it shuts "
        "down, while its port still accepts); `http`: the same in plain HTTP. `https-healthz`/`http-healthz` are "
        "`https`/`http` with path `/healthz`."
    )
    path: str = Field("/readyz", max_length=128, pattern=r"^/[A-Za-z0-9._/-]*$",
                      description="Path of the `https`/`http` check (default `/readyz`, the API server's readiness): "
                      "`/` then letters, digits, `.`, `_`, `/`, `-` (characters every rendered file takes as is).")
    interval_seconds: int = Field(2, alias="intervalSeconds", ge=1, le=3600)
    timeout_seconds: int = Field(2, alias="timeoutSeconds", ge=1, le=3600)
    rise: int = Field(2, ge=1, le=100, description="Consecutive successes before a backend is up.")
    fall: int = Field(3, ge=1, le=100, description="Consecutive failures before a backend is down.")
    fail_open: bool = Field(
        True, alias="failOpen",
        description="With an `https`/`http` check: while no backend passes it, send connections to every backend "
        "that accepts them, instead of closing them (AWS NLB and Envoy's panic mode do the same). Checks fail "
        "together when the cause is shared: a busy host's slow TLS handshakes, an etcd election that every API "
        "server's `/readyz` reports, when each still serves most requests. A VRRP replica's own health still "
        "counts only backends that pass the check, so it gives up the VIP as before.")
    connect_timeout_milliseconds: int = Field(
        250, alias="connectTimeoutMilliseconds", ge=10, le=60000,
        description="How long the proxy waits for a backend to accept a connection before it marks that backend "
        "down and sends the connection to another one. On a LAN a live server accepts in well under a "
        "millisecond, so the default (250) is the time a crashed backend can cost a client, not a limit a live "
        "one comes near; raise it for backends over a WAN.")

    @property
    def scheme(self) -> Optional[str]:
        """`https`, `http` or None (tcp)."""
        return {"https": "https", "https-healthz": "https", "http": "http", "http-healthz": "http"}.get(self.mode)

    @property
    def http_path(self) -> str:
        return "/healthz" if self.mode.endswith("-healthz") else self.path


class StatsSpec(Model):
    enabled: bool = False
    port: Port = 8404


class VrrpAdvert(Model):
    """The VRRP advertisement interval, shared by the `lxc` pair and the `keepalived` strategy."""

    advert_interval_seconds: float = Field(
        1, alias="advertIntervalSeconds", ge=0.01, le=255,
        description="VRRP advertisement interval, 0.01-255 s with at most two decimals (keepalived's range); "
        "fractional values need VRRP version 3 (no authentication).")

    @property
    def needs_v3(self) -> bool:
        return not float(self.advert_interval_seconds).is_integer()

    @property
    def advert_int_text(self) -> str:
        """Plain decimal, never exponent form (keepalived reads `1e-02` as 1)."""
        v = Decimal(str(self.advert_interval_seconds)).quantize(Decimal("0.01"))
        return str(int(v)) if v == v.to_integral_value() else format(v.normalize(), "f")

    @field_validator("advert_interval_seconds")
    @classmethod
    def _two_decimals(cls, value: float) -> float:
        try:
            exponent = Decimal(str(value)).normalize().as_tuple().exponent
        except InvalidOperation:
            raise ValueError("advertIntervalSeconds must be a number") from None
        if not isinstance(exponent, int) or exponent < -2:
            raise ValueError(f"advertIntervalSeconds {show(value)} has more than two decimals (keepalived counts "
                             "in hundredths of a second)")
        return value

    def _check_auth(self, auth_pass) -> None:
        if self.needs_v3 and auth_pass:
            raise ValueError("a fractional advertIntervalSeconds needs VRRP version 3, which has no authentication: "
                             "drop authPass or use whole seconds")


class LxcSpec(VrrpAdvert):
    """`type: lxc`: haproxy in Incus system containers; with replicas > 1 they share a VIP by VRRP."""

    replicas: int = Field(1, ge=1, le=9)
    instance: InstanceSpec = Field(
        default_factory=lambda: InstanceSpec(image="cplb/haproxy"), alias="instanceSpec"
    )
    vip: Optional[IpAddress] = Field(
        None, description="Virtual IP shared by the replicas (required when replicas > 1)."
    )
    virtual_router_id: int = Field(51, alias="virtualRouterID", ge=1, le=255)
    auth_pass: Optional[str] = Field(
        None, alias="authPass",
        description="VRRP password shared by the replicas, 1-8 characters (VRRP v2 PASS authentication; "
        "longer is an error, not a silent truncation). Set it from standard input: `pulumi config set --secret --path <key> < file` (never on the "
        "command line, where `ps` shows it).",
        min_length=1, max_length=8, pattern=AUTH_PASS_PATTERN,
    )

    @model_validator(mode="after")
    def _vip_for_ha(self):
        if self.replicas > 1 and not self.vip:
            raise ValueError("replicas > 1 needs `vip`: an address on the bridge's subnet outside its DHCP range")
        self._check_auth(self.auth_pass)
        return self


class OciSpec(Model):
    """`type: oci`: haproxy as an OCI application container (needs the `instance_oci` API extension)."""

    registry: str = Field("https://docker.io", description="OCI registry URL.",
                          pattern=r"^https://[A-Za-z0-9.-]+(:\d+)?$")
    image: str = Field("library/haproxy:lts", description="Image reference in the registry: path[:tag][@digest].",
                       max_length=255, pattern=IMAGE_REFERENCE_PATTERN)
    profiles: list[IncusObjectName] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)


class OvnSpec(Model):
    """`type: ovn`: an Incus network load balancer on an OVN network."""

    network_name: NetworkName = Field(alias="networkName", description="The OVN network of the backends.")
    listen_address: IpAddress = Field(
        alias="listenAddress",
        description="Address of the balancer: inside the uplink's ipv4.ovn.ranges or ipv4.routes.",
    )


class KubeVipSpec(Model):
    """A kube-vip static pod (ARP mode) rendered onto the control-plane instances."""

    vip: IpAddress = Field(description="The VIP kube-vip announces; must be the endpoint's host.")
    interface: str = Field("eth0", pattern=r"^[a-z][a-z0-9.-]{0,14}$")
    path: str = Field("/etc/kubernetes/manifests/kube-vip.yaml", pattern=r"^/[A-Za-z0-9._/-]+\.ya?ml$")
    image: str = Field("ghcr.io/kube-vip/kube-vip:v1.2.2", max_length=255, pattern=IMAGE_REFERENCE_PATTERN,
                       description="Image reference: [registry[:port]/]path[:tag][@digest].")
    lease_duration_seconds: int = Field(15, alias="leaseDurationSeconds", ge=1, le=300,
                                        description="vip_leaseduration (kube-vip's default 15; kubeadm's HA guide "
                                        "uses 5).")
    renew_deadline_seconds: int = Field(10, alias="renewDeadlineSeconds", ge=1, le=300,
                                        description="vip_renewdeadline (kube-vip's default 10; 3 with 5/3/1).")
    retry_period_seconds: int = Field(2, alias="retryPeriodSeconds", ge=1, le=300,
                                      description="vip_retryperiod (kube-vip's default 2; 1 with 5/3/1).")

    @model_validator(mode="after")
    def _timings(self):
        if not self.lease_duration_seconds > self.renew_deadline_seconds > self.retry_period_seconds:
            raise ValueError("leader election needs leaseDurationSeconds > renewDeadlineSeconds > retryPeriodSeconds")
        return self


class ExternalSpec(Model):
    """`type: external`: nothing provisioned; the user's endpoint is validated and published."""

    endpoint: str = Field(description="host:port of the endpoint (an IP or a DNS name).",
                          pattern=r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")
    kube_vip: Optional[KubeVipSpec] = Field(None, alias="kubeVip")

    @property
    def host(self) -> str:
        return split_host_port(self.endpoint)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.endpoint)[1]

    @model_validator(mode="after")
    def _check(self):
        if not 1 <= self.port <= 65535:
            raise ValueError(f"endpoint port {self.port} is outside 1-65535")
        if self.endpoint.startswith("["):
            ip_object(self.host)  # a bracketed host is an IPv6 address
        elif not re.fullmatch(r"[0-9.]+", self.host):
            check_dns_name(self.host, "endpoint host")
        else:
            ip_object(self.host)
        if self.kube_vip and ipaddress.ip_address(self.kube_vip.vip) != _maybe_ip(self.host):
            raise ValueError(f"kubeVip.vip {self.kube_vip.vip} must be the endpoint's host ({self.host})")
        return self


def _maybe_ip(value: str):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _cidr(value: str) -> str:
    if not isinstance(value, str) or "/" not in value:
        if isinstance(value, str) and _maybe_ip(value) is not None and "%" not in value:
            raise ValueError(f"{show(value)} has no prefix length: write it as a CIDR, e.g. {value}/24")
        raise ValueError(f"{show(value)} is not an address with a prefix length (CIDR), e.g. 198.18.10.50/24")
    address, _, prefix = value.partition("/")
    ip = ip_object(address)
    if not re.fullmatch(r"[0-9]{1,3}", prefix) or int(prefix) > ip.max_prefixlen:
        raise ValueError(f"{show(value)} is not an address with a prefix length (CIDR), e.g. 198.18.10.50/24")
    return f"{ip}/{int(prefix)}"


Cidr = Annotated[str, AfterValidator(_cidr)]


class VrrpInstanceSpec(VrrpAdvert):
    """One VRRP instance (k0s `vrrpInstances[]`): the VIPs the control-plane nodes share."""

    virtual_ips: list[Cidr] = Field(alias="virtualIPs", min_length=1, description="VIPs as CIDRs.")
    interface: str = Field("eth0", pattern=r"^[a-z][a-z0-9.-]{0,14}$", description="Node interface.")
    virtual_router_id: Optional[int] = Field(None, alias="virtualRouterID", ge=1, le=255,
                                             description="1-255; default 51 + the instance's index.")
    auth_pass: Optional[str] = Field(
        None, alias="authPass", min_length=1, max_length=8, pattern=AUTH_PASS_PATTERN,
        description="1-8 characters (longer is an error, not a silent truncation); set it as a Pulumi secret.")
    unicast_peers: list[IpAddress] = Field(default_factory=list, alias="unicastPeers")
    unicast_source_ip: Optional[IpAddress] = Field(None, alias="unicastSourceIP")

    def router_id(self, index: int) -> int:
        return self.virtual_router_id or 51 + index

    @model_validator(mode="after")
    def _check(self):
        if len(self.virtual_ips) != len(set(self.virtual_ips)):
            raise ValueError("virtualIPs has duplicates")
        self._check_auth(self.auth_pass)
        if bool(self.unicast_peers) != bool(self.unicast_source_ip):
            raise ValueError("unicastPeers and unicastSourceIP go together")
        families = {family_of(v.split("/")[0]) for v in self.virtual_ips}
        if len(families) > 1:
            raise ValueError("virtualIPs mixes IPv4 and IPv6: a VRRP instance carries one address family")
        family = families.pop()
        for k, peer in enumerate(self.unicast_peers):
            if family_of(peer) != family:
                raise ValueError(f"unicastPeers[{k}] {peer} is not {family} like the virtualIPs")
        if self.unicast_source_ip and family_of(self.unicast_source_ip) != family:
            raise ValueError(f"unicastSourceIP {self.unicast_source_ip} is not {family} like the virtualIPs")
        if self.unicast_source_ip in self.unicast_peers:
            raise ValueError("unicastPeers lists the unicastSourceIP itself")
        if len(set(self.unicast_peers)) != len(self.unicast_peers):
            raise ValueError("unicastPeers has duplicates")
        return self


class VirtualServerSpec(Model):
    """k0s `virtualServers[]`: an IPVS virtual server on a VIP (used where the nodes have IPVS)."""

    ip_address: IpAddress = Field(alias="ipAddress")
    port: Port = 6443
    delay_loop: str = Field("1m", alias="delayLoop", pattern=r"^[0-9]{1,7}(s|m)?$",
                            description="Check interval, e.g. 1m or 30s: at least 1s (keepalived's delay_loop).")
    lb_algo: Literal["rr", "wrr", "lc", "wlc", "lblc", "dh", "sh", "sed", "nq"] = Field("rr", alias="lbAlgo")
    lb_kind: Literal["NAT", "DR", "TUN"] = Field("DR", alias="lbKind")
    persistence_timeout_seconds: int = Field(360, alias="persistenceTimeoutSeconds", ge=1, le=2678400)

    @property
    def delay_loop_seconds(self) -> int:
        d = self.delay_loop
        return int(d[:-1]) * 60 if d.endswith("m") else int(d.rstrip("s"))

    @model_validator(mode="after")
    def _range(self):
        if self.delay_loop_seconds < 1:
            raise ValueError(f"delayLoop {self.delay_loop} must be at least 1s (keepalived refuses 0)")
        return self

    def view(self, default_port: int) -> dict:
        seconds = self.delay_loop_seconds
        return {"ip_address": self.ip_address, "port": self.port or default_port, "delay_loop": seconds,
                "lb_algo": self.lb_algo, "lb_kind": self.lb_kind,
                "persistence_timeout": self.persistence_timeout_seconds}


class KeepalivedSpec(Model):
    """`type: keepalived`: VRRP VIPs on the control-plane nodes themselves (the k0s CPLB model)."""

    vrrp_instances: list[VrrpInstanceSpec] = Field(alias="vrrpInstances", min_length=1, max_length=16)
    virtual_servers: list[VirtualServerSpec] = Field(default_factory=list, alias="virtualServers")
    mode: Literal["auto", "ipvs", "userspace"] = Field(
        "auto", description="ipvs: keepalived virtual servers; userspace: haproxy on every node; auto: detect IPVS.")
    trusted_nodes: list[DnsLabel] = Field(
        default_factory=list, alias="trustedNodes", max_length=64,
        description="Instances the stack did not make (made by Cluster API, kubeadm or a person) that may receive "
        "keepalived.conf when a VRRP instance has an authPass. The stack's own instances always do; any other "
        "instance the targets select is reported and gets nothing: labels alone do not earn the password or the VIP.")

    @model_validator(mode="after")
    def _unique(self):
        ids = [vi.router_id(i) for i, vi in enumerate(self.vrrp_instances)]
        if len(ids) != len(set(ids)):
            raise ValueError(f"vrrpInstances: virtualRouterID values must be unique in a balancer (got {ids})")
        vips = [v.split("/")[0] for vi in self.vrrp_instances for v in vi.virtual_ips]
        if len(vips) != len(set(vips)):
            raise ValueError("vrrpInstances: the same VIP appears in two VRRP instances")
        for k, vs in enumerate(self.virtual_servers):
            if vs.ip_address not in vips:
                raise ValueError(f"virtualServers[{k}].ipAddress {vs.ip_address} is none of the vrrpInstances' "
                                 "virtualIPs: a virtual server listens on a VIP")
        return self


def check_dns_name(value: str, what: str = "name"):
    """A host name, label by label (dnspython): each label 1-63 letters, digits or `-`, 255 bytes in all."""
    import dns.name

    if not re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?",
                        value):
        raise ValueError(f"{what} {show(value)} is not a DNS name (labels of letters, digits and '-')")
    try:
        return dns.name.from_text(value)
    except dns.name.NameTooLong:
        raise ValueError(f"{what} {show(value)} is longer than 255 bytes") from None


DnsName = Annotated[str, StringConstraints(
    max_length=253, pattern=r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$")]


class RoleSettings(Model):
    proxy_protocol: bool = Field(False, alias="proxyProtocol", description="Send the PROXY protocol header upstream.")
    sticky_sessions: bool = Field(False, alias="stickySessions", description="`hash $remote_addr consistent`.")


class DnsRoleSpec(Model):
    """A Claudie role: one port the proxy nodes listen on and the targets behind it."""

    name: str = Field(max_length=28, pattern=r"^[a-z]([a-z0-9-]*[a-z0-9])?$", description="Unique, at most 28.")
    protocol: Literal["tcp", "udp"] = "tcp"
    port: Port
    target_port: Port = Field(alias="targetPort")
    targets: Optional[TargetsSpec] = Field(None, description="Default: the balancer's targets.")
    settings: RoleSettings = Field(default_factory=RoleSettings)

    @model_validator(mode="after")
    def _claudie_rules(self):
        if self.port in RESERVED_PORTS:
            raise ValueError(f"port {self.port} is reserved (64512-65535)")
        if self.target_port == API_SERVER_PORT and self.port != API_SERVER_PORT:
            raise ValueError("targetPort 6443 (the API server) requires port 6443")
        if self.settings.proxy_protocol and API_SERVER_PORT in (self.port, self.target_port):
            raise ValueError("proxyProtocol is never used on the API server port 6443")
        return self

    @property
    def is_api_server(self) -> bool:
        return self.target_port == API_SERVER_PORT


class TsigSpec(Model):
    name: DnsName = Field(description="TSIG key name as the DNS server knows it.")
    algorithm: Literal["hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224", "hmac-sha1"] = "hmac-sha256"
    secret: str = Field(description="Base64 key secret (as `tsig-keygen` prints it), at least 8 characters; set it "
                        "from standard input: `pulumi config set --secret --path <key> < file` (never on the command "
                        "line, where `ps` shows it).", min_length=8, max_length=1024)

    @field_validator("secret")
    @classmethod
    def _base64(cls, value: str) -> str:
        # The message names the rule, never the value (it is a secret).
        try:
            key = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ValueError("is not valid base64 (the secret is not shown)") from None
        if not key:
            raise ValueError("decodes to an empty key")
        return value


class DnsNodesSpec(Model):
    count: int = Field(2, ge=1, le=10)
    instance: InstanceSpec = Field(default_factory=lambda: InstanceSpec(image="cplb/nginx-proxy"),
                                   alias="instanceSpec")


class DnsSpec(Model):
    """`type: dns`: L4 proxy nodes (nginx stream) and A records for the nodes that pass a health check."""

    nodes: DnsNodesSpec = Field(default_factory=DnsNodesSpec)
    roles: list[DnsRoleSpec] = Field(min_length=1, max_length=32)
    zone: DnsName = Field(description="Zone the records go in, e.g. cplb.test.")
    hostname: DnsName = Field(description="Name in the zone (relative, or a full name inside the zone).")
    ttl: int = Field(30, ge=1, le=86400)
    server: str = Field(description="Authoritative DNS server for updates, address:port (port 1-65535; an IPv6 "
                        "address in brackets).",
                        pattern=r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]):\d{1,5}$")
    tsig: TsigSpec

    @property
    def zone_fqdn(self) -> str:
        return self.zone.rstrip(".").lower() + "."

    @property
    def fqdn(self) -> str:
        """The full name: a name ending in `.` is absolute, any other is relative to the zone (as in a zone file)."""
        import dns.name

        zone = dns.name.from_text(self.zone_fqdn)
        return dns.name.from_text(self.hostname.lower(), origin=zone).to_text()

    @property
    def server_host(self) -> str:
        return split_host_port(self.server)[0]

    @property
    def server_port(self) -> int:
        return split_host_port(self.server)[1]

    @model_validator(mode="after")
    def _check(self):
        names = [r.name for r in self.roles]
        if len(names) != len(set(names)):
            raise ValueError("roles: names must be unique")
        if sum(r.is_api_server for r in self.roles) > 1:
            raise ValueError("roles: at most one API-server role (targetPort 6443)")
        ports = [(r.protocol, r.port) for r in self.roles]
        if len(ports) != len(set(ports)):
            raise ValueError("roles: two roles listen on the same protocol and port")
        import dns.name

        zone = check_dns_name(self.zone_fqdn, "zone")
        check_dns_name(self.hostname, "hostname")
        try:
            fqdn = dns.name.from_text(self.hostname.lower(), origin=zone)
        except dns.name.NameTooLong:
            raise ValueError(f"hostname {self.hostname} in zone {self.zone_fqdn} makes a name longer than 255 "
                             "bytes") from None
        # Label by label: `api.othercplb.test.` is not inside `cplb.test.` although the text ends the same.
        if not fqdn.is_subdomain(zone):
            raise ValueError(f"hostname {self.hostname} is outside the zone {self.zone_fqdn}")
        if self.server.startswith("[") != (":" in self.server_host):
            raise ValueError(f"server {show(self.server)}: write an IPv6 address in brackets, an IPv4 one without")
        try:
            ip_object(self.server_host)
        except ValueError as exc:
            raise ValueError(f"server: {exc}") from None
        if not 1 <= self.server_port <= 65535:
            raise ValueError(f"server port {self.server_port} is outside 1-65535")
        return self


class DrainSpec(Model):
    timeout_seconds: int = Field(30, alias="timeoutSeconds", ge=0, le=3600)


class LoadBalancerSpec(Model):
    name: DnsLabel = Field(description="Balancer name; its instances are `<stack>-<name>-<role>-<n>`.")
    cluster: DnsLabel = Field(description="Cluster the balancer serves (default selector label).")
    type: Literal["lxc", "oci", "ovn", "keepalived", "dns", "external"] = Field(
        description="Strategy: lxc | oci | ovn | keepalived | dns | external."
    )
    role: Literal["control-plane", "service"] = Field(
        "control-plane", description="control-plane balancers select the cluster's control-plane instances."
    )
    ip_families: list[Literal["IPv4", "IPv6"]] = Field(["IPv4"], alias="ipFamilies", min_length=1, max_length=2)
    ports: list[PortSpec] = Field(
        default_factory=lambda: [PortSpec(name="api", port=6443)], min_length=1, max_length=64
    )
    targets: Optional[TargetsSpec] = Field(
        None,
        description="Default: control-plane balancers select user.cluster-name=<cluster> and "
        "user.cluster-role=control-plane; others select user.cplb.loadbalancer=<name>.",
    )
    health_check: HealthCheckSpec = Field(default_factory=HealthCheckSpec, alias="healthCheck")
    balance: Literal["roundrobin", "leastconn", "source"] = "roundrobin"
    stats: StatsSpec = Field(default_factory=StatsSpec)
    drain: DrainSpec = Field(default_factory=DrainSpec)
    lxc: Optional[LxcSpec] = None
    oci: Optional[OciSpec] = None
    ovn: Optional[OvnSpec] = None
    external: Optional[ExternalSpec] = None
    keepalived: Optional[KeepalivedSpec] = None
    dns: Optional[DnsSpec] = None

    @field_validator("type")
    @classmethod
    def _implemented(cls, value: str) -> str:
        if value not in IMPLEMENTED_STRATEGIES:
            raise ValueError(
                f"type {value!r} is not implemented in this version (implemented: "
                f"{', '.join(IMPLEMENTED_STRATEGIES)})"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self):
        names = [p.name for p in self.ports]
        if len(names) != len(set(names)):
            raise ValueError("port names must be unique")
        for i, a in enumerate(self.ports):
            for j, b in enumerate(self.ports[:i]):
                if a.protocol == b.protocol and a.port <= b.last_port and b.port <= a.last_port:
                    raise ValueError(f"ports[{i}] ({a.protocol} {a.listen}) overlaps ports[{j}] ({b.protocol} "
                                     f"{b.listen}): ranges of one protocol may not overlap")
        caps = CAPABILITIES[self.type]
        allowed = caps["protocols"]
        for i, p in enumerate(self.ports):
            if p.protocol not in allowed:
                raise ValueError(f"ports[{i}].protocol: the {self.type} strategy balances {'/'.join(allowed)} only, "
                                 f"not {p.protocol}")
            if p.is_range and not caps["ranges"]:
                raise ValueError(f"ports[{i}].endPort: the {self.type} strategy cannot balance a port range; "
                                 f"strategies with ranges: {', '.join(k for k, c in CAPABILITIES.items() if c['ranges'])}")
        if len(self.ip_families) != len(set(self.ip_families)):
            raise ValueError("ipFamilies has duplicates")
        for family in self.ip_families:
            if family not in caps["families"]:
                raise ValueError(f"ipFamilies: the {self.type} strategy serves {', '.join(caps['families'])} only, "
                                 f"not {family}")
        if self.type == "lxc" and self.lxc_spec.replicas > 1 and "IPv6" in self.ip_families:
            raise ValueError("ipFamilies: IPv6 with lxc.replicas > 1 needs an IPv6 VIP, which this version does not "
                             "manage; use replicas: 1 for a dual-stack endpoint, or ipFamilies: [IPv4]")
        if self.targets is not None and self.targets.addresses and not caps["addresses"]:
            raise ValueError(f"targets.addresses: the {self.type} strategy runs on the selected instances "
                             "themselves; select them with `targets.selector`")
        if self.type == "external" and self.external and self.external.kube_vip and self.targets is not None \
                and self.targets.addresses:
            raise ValueError("targets.addresses: kube-vip is pushed to control-plane instances; select them "
                             "with `targets.selector`")
        if self.type in ("ovn", "external", "keepalived", "dns") and getattr(self, self.type) is None:
            raise ValueError(f"type {self.type!r} needs its `{self.type}` section")
        sections = [s for s in STRATEGIES if getattr(self, s, None) is not None and s != self.type]
        if sections:
            raise ValueError(f"section `{sections[0]}` does not apply to type {self.type!r}")
        self._check_ports_free()
        self._check_address_families()
        return self

    def _listened(self) -> list[tuple[str, int, int]]:
        """(key, first, last) of every port the balancer listens on."""
        return [(f"ports[{i}]", p.port, p.last_port) for i, p in enumerate(self.ports)]

    def _check_ports_free(self):
        """A port the balancer binds for itself must not fall inside a balanced port or range."""
        own: dict[int, str] = {}
        if self.uses_haproxy:
            own.update(HAPROXY_INTERNAL_PORTS)
        if self.stats.enabled:
            if self.stats.port in own:
                raise ValueError(f"stats.port {self.stats.port} is {own[self.stats.port]} port")
            own[self.stats.port] = "stats.port"
        for key, first, last in self._listened():
            for port, what in sorted(own.items()):
                if first <= port <= last:
                    raise ValueError(f"{key} ({first}{'-' + str(last) if last != first else ''}) includes port "
                                     f"{port}, which is {what}" + ("" if what == "stats.port" else
                                     " in this strategy; choose another port"))

    def _check_address_families(self):
        """Every address must be of a family the balancer serves: an IPv6 target on an IPv4-only balancer would
        silently never get traffic."""
        served = set(self.ip_families)
        target_sets = [("targets", self.targets)]
        if self.dns:
            target_sets += [(f"dns.roles[{i}].targets", r.targets) for i, r in enumerate(self.dns.roles)]
        for key, targets in target_sets:
            for k, t in enumerate(targets.addresses if targets else []):
                if family_of(t.address) not in served:
                    raise ValueError(f"{key}.addresses[{k}].address {t.address} is {family_of(t.address)} but "
                                     f"ipFamilies is [{', '.join(self.ip_families)}]")
        if self.type == "lxc" and self.lxc_spec.vip and family_of(self.lxc_spec.vip) != "IPv4":
            raise ValueError("lxc.vip must be an IPv4 address (this version manages IPv4 VIPs only)")
        if self.type == "ovn" and family_of(self.ovn.listen_address) not in served:
            raise ValueError(f"ovn.listenAddress {self.ovn.listen_address} is {family_of(self.ovn.listen_address)} "
                             f"but ipFamilies is [{', '.join(self.ip_families)}]")
        if self.type == "keepalived":
            for j, vi in enumerate(self.keepalived.vrrp_instances):
                for k, vip in enumerate(vi.virtual_ips):
                    if family_of(vip) not in served:
                        raise ValueError(f"keepalived.vrrpInstances[{j}].virtualIPs[{k}] {vip} is "
                                         f"{family_of(vip)} but ipFamilies is [{', '.join(self.ip_families)}]")
        if self.type == "external" and self.external.kube_vip:
            vip = self.external.kube_vip.vip
            if family_of(vip) not in served:
                raise ValueError(f"external.kubeVip.vip {vip} is {family_of(vip)} but ipFamilies is "
                                 f"[{', '.join(self.ip_families)}]")

    @property
    def uses_haproxy(self) -> bool:
        return self.type in ("lxc", "oci") or (self.type == "keepalived" and self.keepalived.mode != "ipvs")

    def claimed_addresses(self) -> list[tuple[str, str]]:
        """(address, key path under the balancer) of every address this balancer itself takes: its VIPs and its
        listen address. Two balancers never share one, and none is its own backend."""
        if self.type in ("lxc", "oci") and self.lxc_spec.vip:
            return [(self.lxc_spec.vip, "lxc.vip")]
        if self.type == "keepalived":
            return [(vip.split("/")[0], f"keepalived.vrrpInstances[{j}].virtualIPs[{k}]")
                    for j, vi in enumerate(self.keepalived.vrrp_instances) for k, vip in enumerate(vi.virtual_ips)]
        if self.type == "ovn":
            return [(self.ovn.listen_address, "ovn.listenAddress")]
        if self.type == "external" and self.external.kube_vip:
            return [(self.external.kube_vip.vip, "external.kubeVip.vip")]
        return []

    @model_validator(mode="after")
    def _not_its_own_backend(self):
        # haproxy (or OVN) would connect to itself, once per connection, until it runs out of sockets.
        own = {ipaddress.ip_address(a): where for a, where in self.claimed_addresses()}
        for i, target in enumerate(self.targets.addresses if self.targets else []):
            if ipaddress.ip_address(target.address) in own:
                raise ValueError(f"targets.addresses[{i}].address {target.address} is this balancer's own "
                                 f"{own[ipaddress.ip_address(target.address)]}: it would send to itself")
        return self

    def incus_names(self) -> list[tuple[str, str]]:
        """(name without the stack prefix, key path) of every instance this balancer creates."""
        if self.type in ("lxc", "oci"):
            return [(f"{self.name}-haproxy-{n}", "name") for n in range(1, self.lxc_spec.replicas + 1)]
        if self.type == "dns":
            return [(f"{self.name}-proxy-{n}", "name") for n in range(1, self.dns.nodes.count + 1)]
        return []

    @property
    def lxc_spec(self) -> LxcSpec:
        return self.lxc or LxcSpec()

    def effective_targets(self) -> TargetsSpec:
        if self.targets is not None:
            return self.targets
        if self.role == "control-plane":
            labels = {"user.cluster-name": self.cluster, "user.cluster-role": "control-plane"}
        else:
            labels = {"user.cplb.loadbalancer": self.name}
        return TargetsSpec(selector=Selector(matchLabels=labels))


def _kubeconfig(value: str) -> str:
    """A kubeconfig with one usable context: parsed as YAML, never echoed (it holds credentials)."""
    import yaml

    try:
        doc = yaml.safe_load(value)
    except yaml.YAMLError:
        raise ValueError("is not YAML (a kubeconfig file's content)") from None
    if not isinstance(doc, dict) or doc.get("kind", "Config") != "Config":
        raise ValueError("is not a kubeconfig (kind: Config)")
    for key in ("clusters", "users"):
        if not isinstance(doc.get(key), list) or not doc[key]:
            raise ValueError(f"has no `{key}`")
    server = (doc["clusters"][0] or {}).get("cluster", {}).get("server", "")
    if not isinstance(server, str) or not re.fullmatch(r"https://[A-Za-z0-9.:\[\]-]+(:[0-9]{1,5})?/?", server):
        raise ValueError("names no `https://host:port` server in its first cluster")
    return value


class KubernetesSpec(Model):
    """`kubernetes`: each balancer published, through its own endpoint, into the cluster it serves, as the custom
    resources `LoadBalancer` and `LoadBalancerRouting` (cplb.incus.dev/v1alpha1, namespace kube-system)."""

    publish: bool = Field(False, description="Publish every balancer into its cluster (the cluster's control plane "
                          "in this stack, or `kubeconfig`).")
    kubeconfig: Optional[Annotated[str, AfterValidator(_kubeconfig)]] = Field(
        None, max_length=65536,
        description="Kubeconfig of `cluster` when its control plane is not in this stack. A Pulumi secret: set it "
        "with `pulumi config set --secret --path kubernetes.kubeconfig < file`.")
    cluster: Optional[DnsLabel] = Field(None, description="The cluster (a balancer's `cluster`) that `kubeconfig` "
                                        "reaches.")

    @model_validator(mode="after")
    def _pair(self):
        if bool(self.kubeconfig) != bool(self.cluster):
            raise ValueError("`kubeconfig` and `cluster` go together: the kubeconfig of a cluster whose control "
                             "plane is not in this stack")
        return self


class StackSpec(Model):
    incus: IncusSpec = Field(default_factory=IncusSpec)
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)
    instance_groups: list[InstanceGroupSpec] = Field(default_factory=list, alias="instanceGroups")
    control_planes: list[ControlPlaneSpec] = Field(default_factory=list, alias="controlPlanes")
    load_balancers: list[LoadBalancerSpec] = Field(default_factory=list, alias="loadBalancers")

    def incus_names(self) -> list[tuple[str, str]]:
        """(name without the `<stack>-` prefix, key path) of every instance the stack creates, computed once here
        so that two objects that would get one name are refused before anything is created."""
        out = [(f"{g.name}-{n}", f"instanceGroups[{i}]") for i, g in enumerate(self.instance_groups)
               for n in range(1, g.count + 1)]
        out += [(f"{c.name}-{n}", f"controlPlanes[{i}]") for i, c in enumerate(self.control_planes)
                for n in range(1, c.count + 1)]
        for i, lb in enumerate(self.load_balancers):
            out += [(name, f"loadBalancers[{i}]") for name, _ in lb.incus_names()]
        return out

    def check_object_names(self, stack: str) -> None:
        """Every Incus name with the stack prefix is a valid instance name (the stack name counts in its length)."""
        for name, key in self.incus_names():
            full = f"{stack}-{name}"
            if not re.fullmatch(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?", full):
                raise SpecError(f"invalid stack config:\n  {NAMESPACE}:{key}.name: the Incus instance name {show(full)} "
                                f"(stack {show(stack)}) is not valid: lower-case letters, digits and '-', at most 63 "
                                "characters")

    @model_validator(mode="after")
    def _unique_names(self):
        for attr, key in (("instance_groups", "instanceGroups"), ("control_planes", "controlPlanes"),
                          ("load_balancers", "loadBalancers")):
            names = [x.name for x in getattr(self, attr)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{key}: names must be unique, repeated: {', '.join(dupes)}")
        groups = {g.name for g in self.instance_groups} | {c.name for c in self.control_planes}
        clash = groups & {lb.name for lb in self.load_balancers}
        if clash:
            raise ValueError(f"names used by both an instance group or control plane and a load balancer: "
                             f"{', '.join(sorted(clash))}")
        clusters = [c.cluster for c in self.control_planes]
        if len(clusters) != len(set(clusters)):
            raise ValueError("controlPlanes: one control plane per cluster")
        k8s = self.kubernetes
        if k8s.cluster and k8s.cluster in clusters:
            raise ValueError(f"kubernetes.cluster {k8s.cluster!r} has its control plane in this stack: its "
                             "kubeconfig comes from there; drop kubernetes.kubeconfig")
        if k8s.cluster and k8s.cluster not in {lb.cluster for lb in self.load_balancers}:
            raise ValueError(f"kubernetes.cluster {k8s.cluster!r} is no balancer's cluster")
        if k8s.publish:
            lost = sorted({lb.cluster for lb in self.load_balancers} - set(clusters) - {k8s.cluster})
            if lost:
                raise ValueError(f"kubernetes.publish: cluster {lost[0]!r} has no control plane in this stack; give "
                                 "its kubeconfig in kubernetes.kubeconfig (and kubernetes.cluster)")
        owners: dict[str, str] = {}
        for name, key in self.incus_names():
            if name in owners:
                raise ValueError(f"{key} and {owners[name]} would both create the Incus instance `<stack>-{name}`; "
                                 "rename one of them")
            owners[name] = key
        vrids: list[tuple[int, str]] = []
        for lb in self.load_balancers:
            if lb.type == "lxc" and lb.lxc_spec.replicas > 1:
                vrids.append((lb.lxc_spec.virtual_router_id, lb.name))
            if lb.type == "keepalived":
                vrids += [(vi.router_id(i), lb.name) for i, vi in enumerate(lb.keepalived.vrrp_instances)]
        seen: dict[int, str] = {}
        for vrid, owner in vrids:
            if vrid in seen and seen[vrid] != owner:
                raise ValueError(f"loadBalancers: virtualRouterID {vrid} is used by both {seen[vrid]!r} and "
                                 f"{owner!r}; VRRP instances on one network need distinct IDs")
            seen[vrid] = owner
        claimed: dict[Any, str] = {}
        for i, lb in enumerate(self.load_balancers):
            for address, where in lb.claimed_addresses():
                key, ip = f"loadBalancers[{i}].{where}", ipaddress.ip_address(address)
                if ip in claimed:
                    raise ValueError(f"{key}: {address} is already {claimed[ip]}; one address, one balancer (two "
                                     "would answer ARP for it, or fight over it in VRRP)")
                claimed[ip] = key
        services: list[tuple[Any, str]] = []
        for i, cp in enumerate(self.control_planes):
            key, net = f"controlPlanes[{i}].serviceCIDR", ipaddress.IPv4Network(cp.service_cidr)
            for ip, where in claimed.items():
                if ip in net:
                    raise ValueError(f"{key} {cp.service_cidr} holds {ip} ({where}): Service ClusterIPs are "
                                     "routed inside the cluster, so that address would not reach the balancer")
            for other, where in services:
                if net.overlaps(other):
                    raise ValueError(f"{key} {cp.service_cidr} overlaps {where} {other}: each cluster needs its "
                                     "own service range")
            services.append((net, key))
        hostnames: dict[str, str] = {}
        api_roles: dict[str, str] = {}
        for lb in self.load_balancers:
            if lb.type != "dns":
                continue
            if lb.dns.fqdn in hostnames:
                raise ValueError(f"loadBalancers: {lb.name!r} and {hostnames[lb.dns.fqdn]!r} both publish "
                                 f"{lb.dns.fqdn}; a hostname must be unique in its zone")
            hostnames[lb.dns.fqdn] = lb.name
            if any(r.is_api_server for r in lb.dns.roles):
                if lb.cluster in api_roles:
                    raise ValueError(f"loadBalancers: cluster {lb.cluster!r} has two API-server balancers "
                                     f"({api_roles[lb.cluster]!r} and {lb.name!r}); at most one per cluster")
                api_roles[lb.cluster] = lb.name
        return self


# --- loading and errors --------------------------------------------------------------------------------


class SpecError(Exception):
    """Invalid stack config; the message lists each problem with its key path."""


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\-/]{1,128}")
MAX_ERRORS = 20


def _path(loc: tuple[Any, ...]) -> str:
    """A key path as YAML keys spell it; a key with any other character is printed quoted and escaped."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out += ("." if out else "") + part
        else:
            out += f"[{show(part, 40)}]"
    return out


def _is_secret(loc: tuple[Any, ...]) -> bool:
    return any(part in SECRET_KEYS for part in loc if isinstance(part, str))


def _message(err: dict[str, Any], secret: bool) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling; see docs/config.md)"
    if secret:
        # Pydantic's own messages never hold the input; ours on secret fields never do either. Add no value.
        return msg
    if err["type"] in ("string_pattern_mismatch", "literal_error", "greater_than_equal", "less_than_equal",
                       "int_parsing", "int_from_float", "greater_than", "less_than"):
        msg = f"{msg} (got {show(err['input'])})"
    return msg


def format_errors(exc: ValidationError) -> str:
    lines = []
    errors = exc.errors(include_url=False)
    for err in errors[:MAX_ERRORS]:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = _path(loc)
        text = _message(err, _is_secret(loc))
        lines.append(f"  {NAMESPACE}:{path}: {text}" if path else f"  {NAMESPACE}: {text}")
    if len(errors) > MAX_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_ERRORS} more")
    return "invalid stack config:\n" + "\n".join(lines)


def check_shape(values: Any, key: str) -> None:
    """Refuse a config whose shape no schema field can have, before pydantic walks it: nesting deeper than
    MAX_DEPTH, more than MAX_NODES values (a YAML alias bomb expands to millions), keys that are not strings,
    strings longer than MAX_STRING. Iterative, so no depth can exhaust Python's stack."""

    def refuse(loc: tuple, why: str):
        raise SpecError(f"invalid stack config:\n  {NAMESPACE}:{_path(loc)}: {why}")

    count = 0
    pending: list[tuple[Any, tuple]] = [(values, (key,))]
    while pending:
        node, loc = pending.pop()
        count += 1
        if count > MAX_NODES:
            refuse((key,), f"more than {MAX_NODES} values (YAML aliases expanded); no stack needs that many")
        if len(loc) > MAX_DEPTH:
            refuse(loc[:MAX_DEPTH], f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            for k, value in node.items():
                if not isinstance(k, str):
                    refuse(loc, f"key {show(k)} is not a string")
                pending.append((value, loc + (k,)))
        elif isinstance(node, list):
            pending.extend((value, loc + (i,)) for i, value in enumerate(node))
        elif isinstance(node, str):
            if len(node) > MAX_STRING:
                refuse(loc, f"a value of {len(node)} characters (at most {MAX_STRING})")
        elif not isinstance(node, (int, float, bool, type(None))):
            refuse(loc, f"a {type(node).__name__} is not a config value (use strings, numbers, booleans, lists "
                        "and maps)")


def parse(values: dict[str, Any], stack: Optional[str] = None) -> StackSpec:
    """Validate the raw values of the `cplb` namespace (top-level key -> decoded YAML value). With `stack`, the
    Incus names the stack will create are checked too (their length counts the stack name)."""
    if not isinstance(values, dict):
        raise SpecError(f"invalid stack config:\n  {NAMESPACE}: the namespace must be a map of keys, not "
                        f"{type(values).__name__}")
    unknown = sorted((k for k in values if k not in TOP_LEVEL_KEYS), key=str)
    if unknown:
        raise SpecError(
            "invalid stack config:\n"
            + "\n".join(f"  {NAMESPACE}:{_path((k,))}: unknown key (allowed: {', '.join(TOP_LEVEL_KEYS)})"
                        for k in unknown[:MAX_ERRORS])
        )
    for key, value in values.items():
        check_shape(value, key)
    try:
        parsed = StackSpec.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise SpecError(format_errors(exc)) from None
    except RecursionError:
        raise SpecError(f"invalid stack config:\n  {NAMESPACE}: nested too deeply") from None
    if stack is not None:
        parsed.check_object_names(stack)
    return parsed


def from_pulumi_config() -> StackSpec:
    """Read and validate the `cplb` namespace of the running stack's config."""
    import pulumi
    from pulumi.runtime.config import CONFIG, get_config_env

    values: dict[str, Any] = {}
    # Config arrives in-process (CONFIG) or through the environment, depending on the language host.
    for full_key in {**get_config_env(), **CONFIG.get()}:
        ns, _, key = full_key.partition(":")
        if ns == NAMESPACE:
            values[key] = None
    cfg = pulumi.Config(NAMESPACE)
    for key in values:
        try:
            values[key] = cfg.get_object(key)
        except RecursionError:
            raise SpecError(f"invalid stack config:\n  {NAMESPACE}:{_path((key,))}: nested too deeply") from None
        except Exception as exc:  # not JSON/YAML-decodable; the text may be a secret, so it is not shown
            raise SpecError(f"invalid stack config:\n  {NAMESPACE}:{_path((key,))}: cannot be read "
                            f"({type(exc).__name__})") from None
    return parse(values, pulumi.get_stack())
