"""Reading the world: Incus server extensions, networks, and instances matched by selectors.

Nothing here changes anything. The program calls these while it runs (at preview and at up), so the
diff shows control-plane instances coming and going.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from dataclasses import dataclass
from typing import Optional

from providers.incus_client import Connection, IncusError, addresses_of, client_for
from providers.memfile import MemFile
from providers.probes import tcp_probe
from providers.volume import STATE_DEVICE
from spec import IncusSpec, Selector

DISABLED_LABEL = "user.cplb.disabled"
# A version of a local image, as scripts/build-image aliases it: cplb/NAME/<recipe hash>.
VERSION_ALIAS = re.compile(r"/[0-9a-f]{16}$")


def tcp_alive(address: str, port: int, timeout: float = 1.0) -> bool:
    """The health check the dns strategy uses."""
    return tcp_probe(address, port, timeout) == "ok"


def connection_for(incus: IncusSpec) -> Connection:
    return Connection(socket=incus.socket, remote=incus.remote, project=incus.project,
                      client_cert=incus.client_cert, client_key=incus.client_key, server_cert=incus.server_cert)


def member_of(inst: dict) -> str:
    """The cluster member an instance runs on, as Incus reports it ("none" on a standalone server)."""
    location = inst.get("location") or ""
    return "" if location == "none" else location


def selector_matches(selector: Selector, labels: dict[str, str]) -> bool:
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In" and labels.get(req.key) not in req.values:
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def is_disabled(labels: dict[str, str]) -> bool:
    return str(labels.get(DISABLED_LABEL, "")).lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class ObservedInstance:
    name: str
    uuid: str
    status: str
    labels: dict
    ipv4: tuple
    ipv6: tuple
    owner_stack: Optional[str]
    owner_id: Optional[str]
    location: str = ""  # the cluster member it runs on ("" on a standalone server)
    base_image: str = ""  # the fingerprint of the image its root disk was made from
    devices: tuple = ()  # the names of its own devices (not its profiles')


@dataclass(frozen=True)
class ImagePlan:
    """The image a group of the stack's instances is to run, and what that means for the ones that exist."""

    fingerprint: str  # what they are to run
    latest: str  # what the alias names now (a newer version than `fingerprint` waits for `make upgrade`)
    running: dict  # instance name -> the fingerprint it runs now (instances that exist)

    def rolls(self, name: str) -> bool:
        return name in self.running and self.running[name] != self.fingerprint

    @property
    def rolling(self) -> list[str]:
        return sorted(n for n in self.running if self.rolls(n))


class Facts:
    """One read of the Incus server per program run, shared by every component."""

    def __init__(self, incus: IncusSpec):
        self.incus = incus
        self._client = None
        self._instances: Optional[list[ObservedInstance]] = None
        self._extensions: Optional[set[str]] = None
        self._memo: dict = {}
        self._lock = threading.RLock()

    @property
    def client(self):
        if self._client is None:
            client = client_for(connection_for(self.incus))
            if self.incus.remote and client.server().get("auth") != "trusted":
                # An untrusted client only sees /1.0; say why here rather than with the first 403.
                raise IncusError(
                    f"cplb:incus.clientCert: Incus at {self.incus.remote} does not trust this client certificate; "
                    "add it on the server with `incus config trust add-certificate <cert>` (or a trust token)"
                )
            self._client = client
        return self._client

    def extensions(self) -> set[str]:
        if self._extensions is None:
            self._extensions = self.client.extensions()
        return self._extensions

    def require_extensions(self, field: str, *names: str) -> None:
        missing = [n for n in names if n not in self.extensions()]
        if missing:
            raise ValueError(
                f"{field}: the Incus server lacks the required API extensions {missing} (server version "
                f"{self.client.server().get('environment', {}).get('server_version', '?')})"
            )

    def instances(self) -> list[ObservedInstance]:
        if self._instances is None:
            out = []
            for inst in self.client.list_instances():
                cfg = inst.get("config") or {}
                addrs = addresses_of(inst)
                out.append(ObservedInstance(
                    name=inst["name"], uuid=cfg.get("volatile.uuid", ""), status=inst.get("status", ""),
                    labels={k: v for k, v in cfg.items() if k.startswith("user.")},
                    ipv4=tuple(addrs.get("inet", [])), ipv6=tuple(addrs.get("inet6", [])),
                    owner_stack=cfg.get("user.cplb.stack"), owner_id=cfg.get("user.cplb.owner"),
                    location=member_of(inst), base_image=cfg.get("volatile.base_image", ""),
                    devices=tuple(sorted(inst.get("devices") or {})),
                ))
            self._instances = out
        return self._instances

    def cluster_members(self) -> list[str]:
        """The members of the Incus cluster, by name (every member, online or not, so that a placement made from
        this list does not move when one is down); [] on a standalone server."""
        def read():
            if not (self.client.server().get("environment") or {}).get("server_clustered"):
                return []
            return sorted(url.rstrip("/").rsplit("/", 1)[-1] for url in self.client.call("GET", "cluster/members"))
        return self._once(("cluster-members",), read)

    def vip_holders(self, vips: list[str]) -> dict[str, str]:
        """Which instance has each VIP on its interface (None when no one does), from this run's one listing.
        (A balancer's status reads its own nodes live: components/keepalived.read_status.)"""
        out: dict[str, str] = {}
        for inst in self.instances():
            for addr in inst.ipv4 + inst.ipv6:
                if addr in vips:
                    out.setdefault(addr, inst.name)
        return out

    def nodes_have_ipvs(self, names: list[str]) -> bool:
        """IPVS is there when the nodes see /proc/net/ip_vs (the kernel's ip_vs is loaded for their netns).
        Nodes that do not exist yet cannot tell: then no (the userspace proxy works everywhere)."""
        running = [i.name for i in self.instances() if i.name in names and i.status == "Running"]
        if not running:
            return False
        for name in running:
            rc, _, _ = self.client.exec(name, ["test", "-e", "/proc/net/ip_vs"])
            if rc != 0:
                return False
        return True

    def _once(self, key: tuple, read):
        """`read()` once per program run for `key`: every balancer's pre-flight check and component asks the same
        questions (the image behind an alias, the bridge's subnet); the server answers each once."""
        with self._lock:
            if key not in self._memo:
                self._memo[key] = read()
            return self._memo[key]

    def image_fingerprint(self, field: str, alias: str) -> str:
        """The fingerprint behind a local image alias; a rebuilt image means new instances."""
        try:
            meta = self._once(("image", alias), lambda: self.client.call(
                "GET", f"images/aliases/{alias}", what=f"read image alias {alias}"))
        except IncusError as exc:
            if exc.status == 404:
                raise ValueError(f"{field}: no image {alias!r} on the Incus server (run `make setup` to build "
                                 "the local cplb/* images, or import it)") from None
            raise
        return meta.get("target", "")

    def image_plan(self, field: str, alias: str, names: list[str], stack: str, upgrade: bool = False) -> ImagePlan:
        """Which image the stack's instances `names` are to run. A new version of an image never reaches a running
        stack by itself: instances that exist keep the one they run, and new ones join them on it, until the stack is
        upgraded (`upgrade`: `make upgrade`) or its config names a version (`cplb/NAME/<recipe>`). A group found on
        two versions is in the middle of a rollout (an `up` was stopped): it goes on to the newer one."""
        latest = self.image_fingerprint(field, alias)
        running = {i.name: i.base_image for i in self.instances()
                   if i.name in names and i.owner_stack == stack and i.base_image}
        if upgrade or VERSION_ALIAS.search(alias) or not running:
            return ImagePlan(latest, latest, running)
        return ImagePlan(max(set(running.values()), key=self.image_created), latest, running)

    def image_meta(self, fingerprint: str) -> dict:
        """A local image as Incus describes it (properties, created_at); {} when it is gone."""
        def read():
            try:
                return self.client.call("GET", f"images/{fingerprint}", what=f"read image {fingerprint[:12]}") or {}
            except IncusError as exc:
                if exc.status == 404:
                    return {}
                raise
        return self._once(("image-meta", fingerprint), read) if fingerprint else {}

    def worker_reservation(self, limits) -> tuple[str, str]:
        """(memory, cpu) a worker's kubelet reserves so that its allocatable is what the worker may use: a node sees
        the whole host, so everything beyond the instance's limits is reserved, plus 256 MiB for the node's own
        kubelet and containerd."""
        res = self._once(("resources",), lambda: self.client.call("GET", "resources", what="read the server's "
                                                                   "resources") or {})
        total = int((res.get("memory") or {}).get("total") or 0)
        cpus = int((res.get("cpu") or {}).get("total") or 0)
        limit = memory_bytes(limits.memory, total) if limits.memory else total
        cpu_limit = cpu_count(limits.cpu) if limits.cpu else cpus
        return str(max(0, total - limit) + 256 * 2 ** 20), str(max(0, cpus - cpu_limit))

    def image_tools(self, field: str, alias: str) -> Optional[set[str]]:
        """The binaries scripts/build-image put into the image behind `alias` (its `cplb.tools` property); None
        for an image that does not say (imported, or built before the property)."""
        props = self.image_meta(self.image_fingerprint(field, alias)).get("properties") or {}
        return set(props["cplb.tools"].split()) if "cplb.tools" in props else None

    def image_created(self, fingerprint: str) -> str:
        """When a local image was made (ISO 8601, sorts by time); '' when it is gone."""
        return self.image_meta(fingerprint).get("created_at", "")

    def keeps_state(self, name: str) -> bool:
        """An existing instance keeps what the stack pushed across a rebuild: it has its state volume, and the image
        it runs puts that state there (images built before state volumes did not)."""
        inst = next((i for i in self.instances() if i.name == name), None)
        if inst is None or STATE_DEVICE not in inst.devices:
            return False
        return bool((self.image_meta(inst.base_image).get("properties") or {}).get("cplb.state"))

    def served_certificate(self, name: str, port: int):
        """The certificate the stack's instance `name` serves on `port` (a TLS handshake to it, nothing verified or
        sent: etcd asks for a client certificate only after its own is sent); None when it does not answer."""
        import socket
        import ssl

        from cryptography import x509

        inst = next((i for i in self.instances() if i.name == name and i.status == "Running" and i.ipv4), None)
        if inst is None:
            return None
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        try:
            with socket.create_connection((inst.ipv4[0], port), timeout=1.0) as sock, \
                    ctx.wrap_socket(sock) as tls:
                der = tls.getpeercert(binary_form=True)
        except (OSError, ssl.SSLError):
            return None
        return x509.load_der_x509_certificate(der) if der else None

    def served_certificate_expiry(self, name: str, port: int):
        cert = self.served_certificate(name, port)
        return cert.not_valid_after_utc if cert is not None else None

    def served_certificate_issuer(self, name: str, port: int):
        """The common name of the CA that signed what `name` serves on `port`; None when it does not answer."""
        from providers.pki import issuer_cn

        cert = self.served_certificate(name, port)
        return issuer_cn(cert) if cert is not None else None

    def etcd_initial_cluster(self, name: str, path: str) -> Optional[tuple[str, str]]:
        """(`--initial-cluster`, `--initial-cluster-state`) of the flags file the stack's member `name` starts etcd
        with; None when the instance or its file is not there (or cannot be read now)."""
        if not self.exists(name):
            return None

        def read():
            try:
                found = self.client.pull_file(name, path)
            except IncusError:
                return None
            if not found:
                return None
            flags = dict(line.split("=", 1) for line in found[0].decode(errors="replace").splitlines() if "=" in line)
            cluster = flags.get("--initial-cluster")
            return (cluster, flags.get("--initial-cluster-state", "new")) if cluster else None
        return self._once(("etcd-initial-cluster", name), read)

    def exists(self, name: str) -> bool:
        return any(i.name == name for i in self.instances())

    def has_device(self, name: str, device: str) -> bool:
        return any(i.name == name and device in i.devices for i in self.instances())

    def network(self, name: str) -> dict:
        return self._once(("network", name),
                          lambda: self.client.call("GET", f"networks/{name}", what=f"read network {name}"))

    def check_ovn_listen_address(self, field: str, network: str, address: str) -> None:
        """The network must be OVN, and the address inside its uplink's ipv4.ovn.ranges or ipv4.routes."""
        try:
            net = self.network(network) or {}
        except IncusError as exc:
            if exc.status == 404:
                raise ValueError(f"{field}.ovn.networkName: no network {network!r} on the Incus server") from None
            raise
        if net.get("type") != "ovn":
            raise ValueError(f"{field}.ovn.networkName: network {network!r} is a {net.get('type')!r} network; network "
                             "load balancers exist only on OVN networks (Incus answers 400 for bridges)")
        uplink = (net.get("config") or {}).get("network", "")
        if not uplink:
            raise ValueError(f"{field}.ovn.networkName: OVN network {network!r} has no uplink network")
        ucfg = (self.network(uplink) or {}).get("config") or {}
        addr = ipaddress.ip_address(address)
        allowed = []
        for key in ("ipv4.ovn.ranges", "ipv6.ovn.ranges"):
            for rng in filter(None, ucfg.get(key, "").split(",")):
                lo, _, hi = rng.partition("-")
                allowed.append(rng)
                try:
                    if ipaddress.ip_address(lo) <= addr <= ipaddress.ip_address(hi or lo):
                        return
                except TypeError:  # mixed families
                    continue
        for key in ("ipv4.routes", "ipv6.routes"):
            for cidr in filter(None, ucfg.get(key, "").split(",")):
                allowed.append(cidr)
                if addr in ipaddress.ip_network(cidr, strict=False):
                    return
        raise ValueError(f"{field}.ovn.listenAddress: {address} is not in the uplink {uplink!r} ipv4.ovn.ranges or "
                         f"ipv4.routes ({', '.join(allowed) or 'none set'})")

    def ipv4_interface(self, network: str) -> Optional[ipaddress.IPv4Interface]:
        """The network's gateway address and IPv4 subnet (from Incus, or cplb:incus.subnet for a network whose
        addresses Incus does not manage, such as macvlan onto the hosts' LAN); None when neither says."""
        cidr = ((self.network(network) or {}).get("config") or {}).get("ipv4.address", "")
        if (not cidr or cidr == "none") and self.incus.subnet:
            cidr = self.incus.subnet
        return ipaddress.IPv4Interface(cidr) if cidr and cidr != "none" else None

    def check_cluster_ranges(self, field: str, cluster, network: str) -> None:
        """A cluster's Service and pod ranges stay off the network its instances (and the balancers) are on: a
        ClusterIP or pod address there would shadow a real host, and kube-proxy would capture its traffic."""
        iface = self.ipv4_interface(network)
        for key, cidr in (("serviceCIDR", cluster.service_cidr), ("workers.podCIDR", cluster.workers.pod_cidr)):
            if iface is not None and ipaddress.IPv4Network(cidr).overlaps(iface.network):
                raise ValueError(f"{field}.{key}: {cidr} overlaps network {network!r} ({iface.network}), where the "
                                 "instances and the balancers' addresses are; pick a range outside it")

    def check_vip(self, field: str, vip: str, network: str, prefix: Optional[int] = None) -> int:
        """The VIP must sit in the bridge's subnet, outside its DHCP range. Returns the prefix length.
        `prefix`: the VIP's own prefix length, which must be the subnet's (keepalived puts it on the interface)."""
        cfg = (self.network(network) or {}).get("config") or {}
        iface = self.ipv4_interface(network)
        if iface is None:
            raise ValueError(f"{field}: network {network!r} has no IPv4 subnet for the VIP (for a macvlan or "
                             "physical network, say which in cplb:incus.subnet)")
        addr = ipaddress.ip_address(vip)
        if addr not in iface.network or addr in (iface.ip, iface.network.network_address,
                                                 iface.network.broadcast_address):
            raise ValueError(f"{field}: {vip} is not a free host address of {network}'s subnet {iface.network}")
        if prefix is not None and prefix != iface.network.prefixlen:
            raise ValueError(f"{field}: {vip}/{prefix} does not match the interface's subnet {iface.network}")
        for rng in filter(None, cfg.get("ipv4.dhcp.ranges", "").split(",")):
            lo, _, hi = rng.partition("-")
            if ipaddress.ip_address(lo) <= addr <= ipaddress.ip_address(hi or lo):
                raise ValueError(f"{field}: {vip} is inside {network}'s DHCP range {rng}; pick an address outside it")
        return iface.network.prefixlen


def kubernetes_access(field: str, kubeconfig: str, timeout: float = 5.0) -> None:
    """Read-only check of a cluster's kubeconfig before anything is created: its server answers over TLS verified
    against the kubeconfig's CA, and its credentials authenticate (`GET /api`: 401 means they do not). Errors name
    `field` and never the kubeconfig's content (it is a secret)."""
    import base64
    import http.client
    import ssl
    import urllib.parse

    import yaml

    doc = yaml.safe_load(kubeconfig)
    cluster = doc["clusters"][0].get("cluster") or {}
    user = (doc["users"][0] or {}).get("user") or {}
    url = urllib.parse.urlsplit(cluster["server"])
    ca = cluster.get("certificate-authority-data")
    ctx = ssl.create_default_context(cadata=base64.b64decode(ca).decode() if ca else None)
    headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
    if user.get("client-certificate-data") and user.get("client-key-data"):
        # ssl takes a client key from a path only: an in-memory file, so the key never touches the disk.
        try:
            with MemFile(base64.b64decode(user["client-certificate-data"])) as cert, \
                    MemFile(base64.b64decode(user["client-key-data"])) as key:
                ctx.load_cert_chain(cert.path, key.path)
        except (ssl.SSLError, ValueError):  # binascii.Error is a ValueError
            raise ValueError(f"{field}: the kubeconfig's client-certificate-data and client-key-data are not a "
                             "certificate and its key") from None
    try:
        conn = http.client.HTTPSConnection(url.hostname, url.port or 443, context=ctx, timeout=timeout)
        try:
            conn.request("GET", "/api", headers=headers)
            response = conn.getresponse()
            status, body = response.status, response.read(4096)
        finally:
            conn.close()
    except ssl.SSLCertVerificationError:
        raise ValueError(f"{field}: the cluster's certificate does not verify against the kubeconfig's "
                         "certificate-authority-data") from None
    except (OSError, ssl.SSLError, ValueError, http.client.HTTPException) as exc:
        raise ValueError(f"{field}: the kubeconfig's server cannot be reached ({type(exc).__name__}); nothing "
                         "was created") from None
    # Credentials the server cannot verify may leave the request anonymous, which /api refuses with 403.
    if status == 401 or (status == 403 and b"system:anonymous" in body):
        raise ValueError(f"{field}: the cluster refused the kubeconfig's credentials (401 Unauthorized); nothing "
                         "was created")
    if status >= 500:
        raise ValueError(f"{field}: the cluster answered {status}; nothing was created")


_UNITS = {"B": 1, "kB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40}


def memory_bytes(value: str, total: int) -> int:
    """Bytes of an Incus `limits.memory` (`1GiB`, `512MB`, `50%` of `total`), as spec.Limits allows them."""
    number, unit = re.fullmatch(r"(\d+)(\D+)", value).groups()
    return int(number) * total // 100 if unit == "%" else int(number) * _UNITS[unit]


def cpu_count(value: str) -> int:
    """CPUs of an Incus `limits.cpu`: a count (`2`) or a set (`0-1`, `0,2`)."""
    if value.isdigit():
        return int(value)
    cpus = set()
    for part in value.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return len(cpus)
