"""kubectl through a balancer's endpoint, with TLS verified against what etcd trusts.(never skipped)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import Optional

from tests.helpers import TOOLS_BIN

KUBECTL = os.path.join(TOOLS_BIN, "kubectl")


def real_control_plane(name: str, cluster: str, count: int = 3, image: str = "cplb/control-plane", **extra) -> dict:
    """A control plane of `count` real members (`image`: cplb/control-plane-kube-vip where kube-vip runs)."""
    return {"name": name, "cluster": cluster, "count": count,
            "instance": {"image": image, "limits": {"memory": "1GiB"}}, **extra}


def kubeconfig_ca(kubeconfig: str) -> str:
    """The cluster CA (PEM) a kubeconfig carries."""
    import base64

    import yaml

    doc = yaml.safe_load(kubeconfig)
    return base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]).decode()


def readyz_check(**over) -> dict:
    return {"mode": "https", "path": "/readyz", "intervalSeconds": 1, "rise": 1, "fall": 2, **over}


class Kubectl:
    """kubectl with the stack's kubeconfig (written 0600 to a temp dir), optionally to another server."""

    def __init__(self, kubeconfig: str, server: Optional[str] = None, tls_server_name: Optional[str] = None):
        import yaml

        doc = yaml.safe_load(kubeconfig)
        if server:
            doc["clusters"][0]["cluster"]["server"] = f"https://{server}"
        self.dir = tempfile.mkdtemp(prefix="cplb-kube-")
        self.path = os.path.join(self.dir, "kubeconfig")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f)
        self.server = doc["clusters"][0]["cluster"]["server"]
        # The dns strategy: connect to an address the test resolved, verify the certificate for the name.
        self.flags = [f"--tls-server-name={tls_server_name}"] if tls_server_name else []

    def run(self, *args: str, timeout: float = 30, stdin: Optional[str] = None) -> subprocess.CompletedProcess:
        return subprocess.run([KUBECTL, "--kubeconfig", self.path, "--request-timeout=10s", *self.flags, *args],
                              capture_output=True, text=True, timeout=timeout, input=stdin)

    def ok(self, *args: str, **kw) -> str:
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"kubectl {' '.join(args)} via {self.server}: {r.stdout}{r.stderr}"
        return r.stdout

    def readyz(self) -> str:
        return self.ok("get", "--raw", "/readyz").strip()

    def becomes_ready(self, seconds: float = 30) -> None:
        """Wait (bounded) until `/readyz` through this kubeconfig's server says ok (a new endpoint, a moved VIP)."""
        from tests.helpers import wait_for

        assert wait_for(lambda: self.run("get", "--raw", "/readyz").stdout.strip() == "ok", seconds), \
            self.run("get", "--raw", "/readyz").stderr

    def configmap_roundtrip(self, name: str, value: str) -> dict:
        manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
                    "data": {"value": value}}
        self.ok("apply", "-f", "-", stdin=json.dumps(manifest))
        return json.loads(self.ok("get", "configmap", name, "-n", "default", "-o", "json"))["data"]

    def cleanup(self):
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


# --- steady load through an endpoint, counted as client-go counts -----------------------------------------------

class Background:
    """Threads that run until `stop_event` is set (or their own time bound); a context manager."""

    threads: list
    join_seconds = 15.0

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=self.join_seconds)
        self.cleanup()

    def cleanup(self):
        pass


class ApiLoad(Background):
    """Authenticated GETs through an endpoint while something happens behind it, counted as client-go would:
    - `fresh`: a new TLS connection every `interval` seconds (>= 20 requests/s at the default);
    - `kept`: one kept-alive connection, a request every `interval` seconds. A request on a reused connection that
      the server closed before answering is retried once on a new connection, as Go's transport does for
      idempotent requests (counted in `reconnects`, not as a failure);
    - a 429 with Retry-After (an API server that is shutting down) is retried after the delay, as client-go does
      (counted in `retry_after`, a failure only when the retry fails too);
    - a GET that fails with a reset or an end of stream (net.IsConnectionReset / net.IsProbableEOF: the connection
      reset, closed before the answer, or closed during the TLS handshake) is retried after 1 s, as client-go's
      rest.Request does for GETs (an artificial `Retry-After: 1`, up to 10 times): counted in `retried`, with the
      error and its time in `resets`, a delay the client sees and not an error it gets. A refused connection, a
      timeout or a wrong answer is a failure at once.
    Bounded: it stops by itself after `max_seconds`."""

    # What client-go retries a GET on (k8s.io/apimachinery/pkg/util/net IsConnectionReset and IsProbableEOF), in
    # Python's words; and how often and after how long (client-go's default maxRetries, its artificial Retry-After).
    RETRIED_AFTER_RESET = 10
    RESET_RETRY_SECONDS = 1.0

    PATH = "/api/v1/namespaces/default/configmaps?limit=1"

    def __init__(self, kubeconfig: str, host: str, port: int, server_name: Optional[str] = None,
                 interval: float = 0.04, max_seconds: float = 300):
        import base64
        import ssl
        import threading

        import yaml

        doc = yaml.safe_load(kubeconfig)
        user = doc["users"][0]["user"]
        self.dir = tempfile.mkdtemp(prefix="cplb-load-")
        cert, key = os.path.join(self.dir, "c.pem"), os.path.join(self.dir, "k.pem")
        for path, field in ((cert, "client-certificate-data"), (key, "client-key-data")):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64decode(user[field]))
        self.ctx = ssl.create_default_context(cadata=kubeconfig_ca(kubeconfig))
        self.ctx.load_cert_chain(cert, key)
        self.host, self.port, self.server_name = host, port, server_name or host
        self.interval, self.max_seconds = interval, max_seconds
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "failed": 0, "retry_after": 0, "reconnects": 0, "retried": 0}
        self.errors: list[str] = []
        self.resets: list[tuple[float, str]] = []  # (time.monotonic(), error) of each GET retried after a reset
        self.failed_at: list[float] = []  # time.monotonic() of each recorded error, to set against a test's events
        # Failures by connection: `fresh` (a new TLS connection per request) and `kept` (the kept-alive one).
        self.failed_on = {"fresh": 0, "kept": 0}
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._fresh, daemon=True),
                        threading.Thread(target=self._kept, daemon=True)]

    def _conn(self):
        import http.client
        import socket

        load = self

        class Connection(http.client.HTTPSConnection):
            """Connects to the endpoint's address; TLS names and verifies `server_name` (the dns strategy's
            host name, resolved by the test through the project's own DNS server)."""

            def connect(self):
                sock = socket.create_connection((load.host, load.port), timeout=self.timeout)
                self.sock = load.ctx.wrap_socket(sock, server_hostname=load.server_name)

        return Connection(self.host, self.port, context=self.ctx, timeout=5)

    def _once(self, conn) -> tuple[int, dict]:
        conn.request("GET", self.PATH)
        r = conn.getresponse()
        body = r.read()
        return r.status, {"retry-after": r.getheader("Retry-After"), "body": body[:200]}

    def _request(self, conn, reused: bool, kind: str = "fresh"):
        """One logical request; returns the connection to keep (or None)."""
        import http.client
        import time as _time

        attempt = resets = 0
        while True:
            attempt += 1
            try:
                if conn is None:
                    conn = self._conn()
                    reused = False
                status, info = self._once(conn)
            except (OSError, http.client.HTTPException) as exc:
                try:
                    if conn is not None:
                        conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = None
                if reused and attempt == 1:  # closed by the server between requests: Go's transport retries at once
                    self._count("reconnects")
                    continue
                why = f"{type(exc).__name__}: {exc}"
                if self._reset_or_eof(exc) and resets < self.RETRIED_AFTER_RESET:
                    resets += 1
                    with self.lock:
                        self.counts["retried"] += 1
                        if len(self.resets) < 50:
                            self.resets.append((_time.monotonic(), why))
                    _time.sleep(self.RESET_RETRY_SECONDS)
                    continue
                self._fail(why, kind)
                return None
            if status == 429 and info["retry-after"] and attempt < 3:
                self._count("retry_after")
                _time.sleep(min(float(info["retry-after"]), 2.0))
                reused = True
                continue
            if 200 <= status < 300:
                self._count("ok")
                return conn
            self._fail(f"HTTP {status}: {info['body']!r}", kind)
            return conn

    @staticmethod
    def _reset_or_eof(exc: BaseException) -> bool:
        """net.IsConnectionReset or net.IsProbableEOF: ECONNRESET, a broken pipe, a connection closed before its
        answer (Go: EOF) or in the middle of it (unexpected EOF), or during the TLS handshake (EOF)."""
        import http.client
        import ssl

        return isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                                http.client.IncompleteRead, ssl.SSLEOFError, ssl.SSLZeroReturnError))

    def _count(self, key: str):
        with self.lock:
            self.counts[key] += 1

    def _fail(self, why: str, kind: str = "fresh"):
        import time as _time

        with self.lock:
            self.counts["failed"] += 1
            self.failed_on[kind] += 1
            if len(self.errors) < 20:
                self.errors.append(why)
                self.failed_at.append(_time.monotonic())

    def _fresh(self):
        import time as _time

        deadline = _time.monotonic() + self.max_seconds
        while not self.stop_event.is_set() and _time.monotonic() < deadline:
            conn = self._request(None, reused=False)
            if conn:
                conn.close()
            _time.sleep(self.interval)

    def _kept(self):
        import time as _time

        deadline = _time.monotonic() + self.max_seconds
        conn = None
        while not self.stop_event.is_set() and _time.monotonic() < deadline:
            conn = self._request(conn, reused=conn is not None, kind="kept")
            _time.sleep(self.interval)

    def cleanup(self):
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def rolling_restart(instances: list[str], addresses: list[str], ca_pem: str, timeout: float = 120) -> None:
    """Restart every kube-apiserver, one at a time: SIGTERM, wait for the process to exit (after its shutdown
    delay and drain), start it again, wait until it answers /readyz."""
    import time as _time

    from components.control_plane import readyz
    from tests.helpers import incus

    client = incus()
    for name, address in zip(instances, addresses):
        client.exec(name, ["touch", "/run/cplb-service.kube-apiserver.down"])  # hold the respawn
        client.exec(name, ["killall", "-TERM", "kube-apiserver"])
        deadline = _time.monotonic() + timeout
        while client.exec(name, ["pidof", "kube-apiserver"])[0] == 0:
            assert _time.monotonic() < deadline, f"kube-apiserver on {name} did not exit"
            _time.sleep(0.2)
        client.exec(name, ["rm", "-f", "/run/cplb-service.kube-apiserver.down"])
        while not readyz(address, ca_pem):
            assert _time.monotonic() < deadline, f"kube-apiserver on {name} did not come back"
            _time.sleep(0.5)


class WatchProbe(Background):
    """A ConfigMap watch through an endpoint while a writer creates a ConfigMap every `every` seconds. Records the
    arrival time of every event, and when the stream ends it is re-established from the last resourceVersion (as
    client-go's reflector does): `cuts` counts those."""

    join_seconds = 70.0  # a watch read may wait up to its socket timeout

    def __init__(self, load: ApiLoad, prefix: str, every: float = 0.25, max_seconds: float = 180):
        import threading

        self.load, self.prefix, self.every, self.max_seconds = load, prefix, every, max_seconds
        self.arrivals: list[float] = []
        self.cuts: list[float] = []
        self.written = 0
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._watch, daemon=True),
                        threading.Thread(target=self._write, daemon=True)]

    def _watch(self):
        import json as _json
        import time as _time

        rv = ""
        deadline = _time.monotonic() + self.max_seconds
        while not self.stop_event.is_set() and _time.monotonic() < deadline:
            conn = self.load._conn()
            try:
                conn.timeout = 60
                path = "/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=false"
                conn.request("GET", path + (f"&resourceVersion={rv}" if rv else ""))
                r = conn.getresponse()
                while not self.stop_event.is_set():
                    line = r.readline()
                    if not line:
                        break
                    event = _json.loads(line)
                    obj = event.get("object", {})
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if event.get("type") == "ADDED" and obj.get("metadata", {}).get("name", "").startswith(self.prefix):
                        self.arrivals.append(_time.monotonic())
            except (OSError, ValueError):
                pass
            finally:
                conn.close()
            if not self.stop_event.is_set():
                self.cuts.append(_time.monotonic())
                _time.sleep(0.1)

    def _write(self):
        import json as _json
        import time as _time

        n = 0
        deadline = _time.monotonic() + self.max_seconds
        while not self.stop_event.is_set() and _time.monotonic() < deadline:
            n += 1
            body = _json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": f"{self.prefix}-{n}"}, "data": {"n": str(n)}})
            conn = self.load._conn()
            try:
                conn.request("POST", "/api/v1/namespaces/default/configmaps", body=body,
                             headers={"Content-Type": "application/json"})
                if conn.getresponse().status == 201:
                    self.written += 1
            except OSError:
                pass
            finally:
                conn.close()
            _time.sleep(self.every)

    def max_gap(self, since: float) -> float:
        times = [t for t in self.arrivals if t >= since]
        return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))



def etcd_members(instance: str, address: str) -> list[dict]:
    """etcd's own member list (its v3 JSON gateway, `POST /v3/cluster/member/list`), asked of one member with the
    API server's etcd client certificate, pulled from the instance, TLS verified against what etcd trusts."""
    import json as _json
    import ssl
    import urllib.request

    from providers.memfile import MemFile
    from tests.helpers import incus

    client = incus()
    pem = client.pull_file(instance, "/etc/kubernetes/pki/apiserver-etcd-client.pem")[0]
    # A cluster made before etcd had its own CA trusts the cluster CA (no etcd/ca.crt).
    trust = client.pull_file(instance, "/etc/kubernetes/pki/etcd/ca.crt") or \
        client.pull_file(instance, "/etc/kubernetes/pki/ca.crt")
    ca = trust[0].decode()
    ctx = ssl.create_default_context(cadata=ca)
    with MemFile(pem) as key:
        ctx.load_cert_chain(key.path)
    request = urllib.request.Request(f"https://{address}:2379/v3/cluster/member/list", data=b"{}", method="POST")
    with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
        return _json.loads(resp.read())["members"]
