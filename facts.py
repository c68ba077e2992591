"""Reading the world: Incus server extensions, networks, and instances matched by selectors.

Nothing here changes anything. The program calls these while it runs (at preview and at up), so the
diff shows control-plane instances coming and going.
"""

from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass
from typing import Optional

from providers.incus_client import Connection, IncusError, addresses_of, client_for
from providers.memfile import MemFile
from spec import IncusSpec, Selector

DISABLED_LABEL = "user.cplb.disabled"


def tcp_probe(address: str, port: int, timeout: float = 1.0) -> str:
    """A TCP connect to one of the project's own instances: `ok`, `refused` (the host is there, nothing
    listens yet) or `unreachable` (no answer: the host is gone)."""
    import socket

    try:
        with socket.create_connection((address, port), timeout=timeout):
            return "ok"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "unreachable"


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
                    location=member_of(inst),
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

    def check_vip(self, field: str, vip: str, network: str, prefix: Optional[int] = None) -> int:
        """The VIP must sit in the bridge's subnet, outside its DHCP range. Returns the prefix length.
        `prefix`: the VIP's own prefix length, which must be the subnet's (keepalived puts it on the interface)."""
        cfg = (self.network(network) or {}).get("config") or {}
        cidr = cfg.get("ipv4.address", "")
        if (not cidr or cidr == "none") and self.incus.subnet:
            # A network whose addresses Incus does not manage (macvlan onto the hosts' LAN): the stack says which.
            cidr = self.incus.subnet
        if not cidr or cidr == "none":
            raise ValueError(f"{field}: network {network!r} has no IPv4 subnet for the VIP (for a macvlan or "
                             "physical network, say which in cplb:incus.subnet)")
        iface = ipaddress.ip_interface(cidr)
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
