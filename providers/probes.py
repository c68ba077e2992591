"""Probes of the stack's own instances (TCP, and HTTPS verified against a CA), shared by what reads the world
(facts.py, health.py) and the providers that wait on it (a rolling image upgrade waits for members to be healthy).
Nothing here loads the schema: the provider plugin imports it."""

from __future__ import annotations


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


def https_probe(address: str, port: int, path: str, ca_pem: str, server_name: str = "",
                timeout: float = 2.0) -> str:
    """Like tcp_probe, then `GET path` over TLS verified against `ca_pem` (names checked against `server_name`
    when given): "ok", "refused", "unreachable", or "failing" (it answers, but not 200 or not with a valid
    certificate)."""
    import http.client
    import socket
    import ssl

    first = tcp_probe(address, port, timeout=timeout)
    if first != "ok":
        return first
    ctx = ssl.create_default_context(cadata=ca_pem or None)  # no CA given: the system's
    ctx.check_hostname = bool(server_name)
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=server_name or address) as tls:
                conn = http.client.HTTPConnection(address, port, timeout=timeout)
                conn.sock = tls
                conn.request("GET", path)
                return "ok" if conn.getresponse().status == 200 else "failing"
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return "failing"
