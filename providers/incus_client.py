"""A small Incus API client on top of pylxd's raw API layer.

pylxd speaks the LXD REST API, which Incus keeps compatible at /1.0; its model classes know LXD-only
fields, so this module uses its low-level `client.api` nodes (sessions, socket handling, operation
waiting) and builds Incus requests itself. File pushes use Incus's own `X-Incus-*` headers: pylxd sends
`X-LXD-*` ones, which Incus ignores, so the mode and owner of a pushed file would be lost.

Clients are created lazily on first use and kept one per thread and connection (a requests session
is not safe to share across threads; the dynamic provider server calls us from a thread pool).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote

DEFAULT_SOCKET = "/var/lib/incus/unix.socket"


class IncusError(Exception):
    """An Incus request failed; the message says what was asked and what Incus answered."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Connection:
    """Where and how to reach Incus. `client_key` is a secret: never log this object's repr."""

    socket: str = DEFAULT_SOCKET
    remote: Optional[str] = None
    project: str = "default"
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    server_cert: Optional[str] = None

    @classmethod
    def from_props(cls, conn: dict[str, Any], credentials: Optional[dict[str, Any]] = None) -> "Connection":
        conn = conn or {}
        return cls(
            socket=conn.get("socket") or DEFAULT_SOCKET,
            remote=conn.get("remote") or None,
            project=conn.get("project") or "default",
            client_cert=conn.get("clientCert") or None,
            server_cert=conn.get("serverCert") or None,
            client_key=(credentials or {}).get("clientKey") or None,
        )

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        where = self.remote or self.socket
        return f"Connection({where}, project={self.project})"

    def cache_key(self) -> str:
        raw = "|".join(str(x) for x in (self.socket, self.remote, self.project, self.client_cert, self.client_key))
        return hashlib.sha256(raw.encode()).hexdigest()


_local = threading.local()


def client_for(conn: Connection) -> "IncusClient":
    """The calling thread's client for `conn`, created on first use."""
    cache = getattr(_local, "clients", None)
    if cache is None:
        cache = _local.clients = {}
    key = conn.cache_key()
    if key not in cache:
        cache[key] = IncusClient(conn)
    return cache[key]


class IncusClient:
    def __init__(self, conn: Connection):
        import pylxd  # imported here: provider modules must stay free of import-time work

        self.conn = conn
        # The client certificate, key and pinned server certificate as in-memory files (requests loads them by path
        # for every new connection): nothing on disk, even when the process is killed.
        self._files: list = []
        self._server_cert_file: Optional[str] = None
        try:
            if conn.remote:
                cert = (self._memfile(conn.client_cert), self._memfile(conn.client_key))
                verify: Any = self._memfile(conn.server_cert) if conn.server_cert else True
                self._server_cert_file = verify if conn.server_cert else None
                session = self._pinned_session(conn.remote.rstrip("/"), cert, verify) if conn.server_cert else None
                self._pylxd = pylxd.Client(endpoint=conn.remote, cert=cert, verify=verify, project=conn.project,
                                           timeout=60, session=session)
            else:
                if not os.path.exists(conn.socket):
                    raise IncusError(
                        f"Incus socket {conn.socket} does not exist: is incusd running? (run `make setup`, or set "
                        "cplb:incus.socket / cplb:incus.remote)"
                    )
                self._pylxd = pylxd.Client(endpoint=conn.socket, project=conn.project, timeout=60)
        except IncusError:
            raise
        except Exception as exc:  # pylxd wraps connection failures in several types
            raise IncusError(f"cannot reach Incus at {conn.remote or conn.socket}: {exc}") from None
        self.api = self._pylxd.api

    @staticmethod
    def _pinned_session(endpoint: str, cert, verify: str):
        """pylxd's session for `endpoint`, with the pinned server certificate kept in force.

        requests replaces a session's CA file with REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE whenever a request does not
        pass `verify` itself, and pylxd's requests do not: pylxd would then pin the first CA of the system bundle and
        every call would fail with "Fingerprints did not match". Without trust_env the session's own file is used;
        the environment's proxy settings for this endpoint are copied first, so a proxy still applies.
        """
        import requests
        from pylxd.client import get_session_for_url

        session = get_session_for_url(endpoint, verify=verify, cert=cert)
        session.proxies.update(requests.utils.get_environ_proxies(endpoint))
        session.trust_env = False
        return session

    def _memfile(self, pem: Optional[str]) -> str:
        from providers.memfile import MemFile

        self._files.append(MemFile(pem or "", "cplb-tls"))
        return self._files[-1].path

    def events_socket(self, websocket_client):
        """A ws4py client (of class `websocket_client`, not yet connected) for this project's lifecycle events, over
        the same socket or HTTPS connection as every other call, and verified as they are: against the pinned server
        certificate, else the CAs requests trusts. (pylxd hands ws4py only the client certificate, and ws4py then
        turns verification off: the events of any server that answered would have been believed.)"""
        import ssl

        from pylxd.client import EventType

        ws = self._pylxd.events(websocket_client=websocket_client, event_types={EventType.Lifecycle})
        ws.resource = f"/1.0/events?type=lifecycle&project={quote(self.conn.project, safe='')}"
        if self.conn.remote:
            if self._server_cert_file:
                trusted = self._server_cert_file
            else:
                import requests.certs

                trusted = requests.certs.where()
            ws.ssl_options = {**(ws.ssl_options or {}), "ca_certs": trusted, "cert_reqs": ssl.CERT_REQUIRED}
        return ws

    # --- low level ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params=None, json=None, data=None, headers=None,
                ok=(200, 201, 202), what: str = "") -> Any:
        """One HTTP request to /1.0/<path>; returns the response (raises IncusError on failure)."""
        session = self.api.session
        url = f"{self.api._api_endpoint}/{path.lstrip('/')}".rstrip("/")
        params = dict(params or {})
        params.setdefault("project", self.conn.project)
        # A read on a kept-alive connection that incusd closed before answering is sent again at once, on a new
        # connection (as Go's transport does for idempotent requests): seen once under load, it failed an `up`.
        attempts = 2 if method in ("GET", "HEAD") else 1
        for attempt in range(attempts):
            try:
                resp = session.request(method, url, params=params, json=json, data=data, headers=headers,
                                       timeout=120, verify=self.api.session.verify)
                break
            except Exception as exc:
                if attempt + 1 < attempts and closed_before_answer(exc):
                    continue
                raise IncusError(f"{what or method + ' ' + path}: cannot reach Incus ({type(exc).__name__}: {exc}); "
                                 "run `up` again once incusd answers: it adopts what this run made")
        if resp.status_code not in ok:
            try:
                detail = resp.json().get("error") or resp.text
            except ValueError:
                detail = resp.text
            hint = ("; Incus is unavailable: run `up` again once incusd answers, it adopts what this run made"
                    if resp.status_code == 503 else "")
            raise IncusError(f"{what or method + ' ' + path}: Incus answered {resp.status_code}: {detail}{hint}",
                             status=resp.status_code)
        return resp

    def call(self, method: str, path: str, *, what: str = "", timeout: float = 300, **kw) -> Any:
        """A request whose JSON metadata is returned; async operations are waited for."""
        resp = self.request(method, path, what=what, **kw)
        body = resp.json()
        if body.get("type") == "async":
            return self.wait(body["operation"], what=what or f"{method} {path}", timeout=timeout)
        return body.get("metadata")

    def wait(self, operation: str, *, what: str, timeout: float = 300) -> dict:
        op_id = operation.rstrip("/").split("/")[-1]
        resp = self.request("GET", f"operations/{op_id}/wait", params={"timeout": int(timeout)}, what=what)
        meta = resp.json().get("metadata") or {}
        deadline = time.monotonic() + timeout
        # /wait can answer before the operation has its final state (no metadata, or still running):
        # read the operation itself until it has finished.
        while meta.get("status") not in ("Success", "Failure", "Cancelled") and time.monotonic() < deadline:
            time.sleep(0.05)
            resp = self.request("GET", f"operations/{op_id}", what=what)
            meta = resp.json().get("metadata") or {}
        if meta.get("status") != "Success":
            raise IncusError(f"{what}: {meta.get('err') or meta.get('status') or 'operation failed'}")
        return meta

    def etag_get(self, path: str, what: str = "") -> tuple[dict, str]:
        resp = self.request("GET", path, what=what)
        return resp.json()["metadata"], resp.headers.get("ETag", "")

    # --- server facts ------------------------------------------------------------------------------

    def server(self) -> dict:
        return self.call("GET", "", what="read Incus server info")

    def extensions(self) -> set[str]:
        return set(self.server().get("api_extensions", []))

    # --- instances ---------------------------------------------------------------------------------

    def get_instance(self, name: str) -> Optional[dict]:
        """The instance with its state (addresses, status), or None when it does not exist.

        Retried (twice, bounded) on Incus 6.0's transient "Invalid PID" answer: the state of a container that is
        starting or stopping at that moment (as every member is during a rolling upgrade) cannot be read for an
        instant; anything else is not retried."""
        for attempt in range(3):
            try:
                return self.call("GET", f"instances/{quote(name)}", params={"recursion": 1},
                                 what=f"read instance {name}")
            except IncusError as exc:
                if exc.status == 404:
                    return None
                if attempt == 2 or exc.status != 500 or "Invalid PID" not in str(exc):
                    raise
                time.sleep(0.2 * (attempt + 1))
        return None

    def list_instances(self) -> list[dict]:
        return self.call("GET", "instances", params={"recursion": 2}, what="list instances") or []

    def set_state(self, name: str, action: str, *, force: bool = False, timeout: int = 30) -> None:
        self.call("PUT", f"instances/{quote(name)}/state",
                  json={"action": action, "force": force, "timeout": timeout},
                  what=f"{action} instance {name}")

    def delete_instance(self, name: str) -> None:
        inst = self.get_instance(name)
        if inst is None:
            return
        if inst.get("status") != "Stopped":
            self.set_state(name, "stop", force=True)
        try:
            self.call("DELETE", f"instances/{quote(name)}", what=f"delete instance {name}")
        except IncusError as exc:
            if exc.status != 404:
                raise

    # --- exec and files ----------------------------------------------------------------------------

    def exec(self, name: str, command: list[str], *, timeout: float = 120) -> tuple[int, str, str]:
        """Run a command in the instance; returns (exit code, stdout, stderr)."""
        meta = self.call(
            "POST", f"instances/{quote(name)}/exec",
            json={"command": command, "wait-for-websocket": False, "interactive": False,
                  "record-output": True, "environment": {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}},
            what=f"exec in {name}", timeout=timeout,
        )
        md = meta.get("metadata") or {}
        outputs = md.get("output") or {}
        texts = []
        for fd in ("1", "2"):
            path = outputs.get(fd)
            text = ""
            if path:
                rel = path.split("/1.0/", 1)[-1]
                text = self.request("GET", rel, what="read exec output").text
                try:
                    self.request("DELETE", rel, what="clean exec output")
                except IncusError:
                    pass
            texts.append(text)
        return int(md.get("return", -1)), texts[0], texts[1]

    def push_file(self, name: str, path: str, content: bytes, *, mode: int = 0o644, uid: int = 0,
                  gid: int = 0) -> None:
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Incus-type": "file",
            "X-Incus-mode": f"{mode:04o}",
            "X-Incus-uid": str(uid),
            "X-Incus-gid": str(gid),
            "X-Incus-write": "overwrite",
        }
        self._file_request("POST", name, path, data=content, headers=headers, what=f"push {path} to {name}")

    def _file_request(self, method: str, name: str, path: str, *, what: str, **kw):
        """The file API, retried (twice, bounded) when Incus 6.0's helper process for it drops the connection:
        "Incus answered 500: read unix @->/proc/self/fd/N/forkfile.sock: ... connection reset by peer" is a
        transient failure of the server, seen in a refresh that read many files at once; anything else is not."""
        for attempt in range(3):
            try:
                return self.request(method, f"instances/{quote(name)}/files", params={"path": path}, what=what, **kw)
            except IncusError as exc:
                if attempt == 2 or exc.status != 500 or "forkfile" not in str(exc):
                    raise
                time.sleep(0.2 * (attempt + 1))

    def delete_file(self, name: str, path: str) -> None:
        """Remove a file; works on stopped instances too (no exec needed). Missing is fine."""
        try:
            self.request("DELETE", f"instances/{quote(name)}/files", params={"path": path},
                         what=f"delete {path} in {name}")
        except IncusError as exc:
            if exc.status != 404:
                raise

    def pull_file(self, name: str, path: str) -> Optional[tuple[bytes, int]]:
        """(content, mode) of a file in the instance, or None when it is missing."""
        try:
            resp = self._file_request("GET", name, path, what=f"read {path} in {name}")
        except IncusError as exc:
            if exc.status == 404:
                return None
            raise
        return resp.content, int(resp.headers.get("X-Incus-mode", "0644"), 8)

    def wait_for_address(self, name: str, *, family: str = "inet", timeout: float = 60) -> dict:
        """Poll the instance until eth0 has a global address of `family` (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        inst = self.get_instance(name) or {}
        while time.monotonic() < deadline:
            if addresses_of(inst).get(family):
                return inst
            time.sleep(0.5)
            inst = self.get_instance(name) or {}
        return inst

    def wait_ipv6_settled(self, name: str, *, interface: str = "eth0", timeout: float = 10) -> bool:
        """Wait until no global IPv6 address on `interface` is tentative (DAD still running).

        Read from the instance's own /proc/net/if_inet6 (columns: address, index, prefix length, scope, flags,
        name; flag 0x40 = tentative); the Incus API lists addresses without their flags. An instance without
        `cat` cannot be asked: then this returns False at once and the caller goes on.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                code, out, _ = self.exec(name, ["cat", "/proc/net/if_inet6"], timeout=10)
            except IncusError:
                return False
            if code != 0:
                return False
            tentative = [f for f in (line.split() for line in out.splitlines())
                         if len(f) == 6 and f[5] == interface and f[3] == "00" and int(f[4], 16) & 0x40]
            if not tentative:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def closed_before_answer(exc: BaseException) -> bool:
    """The server closed the connection before its answer (a kept-alive connection it had let go): requests says
    'Connection aborted.' around RemoteDisconnected or a reset."""
    text = f"{exc!r} {exc}"
    return "Connection aborted" in text and ("RemoteDisconnected" in text or "ConnectionResetError" in text
                                             or "Connection reset" in text)


def addresses_of(inst: dict, ignore: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Global addresses on eth0, by family; `ignore` drops known VIPs (they move between instances)."""
    out: dict[str, list[str]] = {"inet": [], "inet6": []}
    net = ((inst or {}).get("state") or {}).get("network") or {}
    for addr in (net.get("eth0") or {}).get("addresses", []):
        if addr.get("scope") == "global" and addr.get("address") not in ignore:
            out.setdefault(addr.get("family"), []).append(addr["address"])
    return out
