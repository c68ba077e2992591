"""The reload command, against a real haproxy on loopback with busybox's `nc` and `awk` (what the images carry): a
server that was down before a reload is down in the new worker at once, not up until its first check fails; a
server whose address changed in the new haproxy.cfg starts from the config, not from a stale saved state."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from components.haproxy import haproxy_reload_command, render_haproxy

pytestmark = pytest.mark.skipif(not (shutil.which("haproxy") and shutil.which("busybox")),
                                reason="haproxy and busybox are installed by scripts/setup")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Listener:
    """A loopback TCP server that accepts and closes: what a connect check needs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()


def config(state_file: str, runtime_port: int, frontend_port: int, servers: dict[str, int], inter: str) -> str:
    lines = "\n".join(f"    server {name} 127.0.0.1:{port}" for name, port in servers.items())
    return f"""global
    master-worker
    stats socket ipv4@127.0.0.1:{runtime_port} level admin
    server-state-file {state_file}
defaults
    mode tcp
    timeout connect 200ms
    timeout client 5s
    timeout server 5s
    timeout check 200ms
    load-server-state-from-file global
frontend fe_api
    bind 127.0.0.1:{frontend_port}
    default_backend be_api
backend be_api
    default-server check inter {inter} rise 1 fall 1
{lines}
"""


def runtime(port: int, command: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(command.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def statuses(port: int) -> dict[str, str]:
    rows = [r.split(",") for r in runtime(port, "show stat").splitlines() if r and not r.startswith("#")]
    return {r[1]: r[17] for r in rows if r[0] == "be_api" and r[1] not in ("BACKEND",)}


def worker_pid(port: int) -> str:
    return next(line.split(": ")[1] for line in runtime(port, "show info").splitlines() if line.startswith("Pid: "))


def wait(predicate, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def test_a_reload_keeps_a_down_server_down_and_takes_a_changed_one_from_the_config(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for applet in ("nc", "awk", "head"):
        os.symlink(shutil.which("busybox"), bin_dir / applet)
    cfg, pid_file, state_file = tmp_path / "haproxy.cfg", tmp_path / "haproxy.pid", str(tmp_path / "server-state")
    runtime_port, frontend_port, closed, moved_from = free_port(), free_port(), free_port(), free_port()
    up = Listener()
    # Checks every 100 ms before the reload; after it, once a minute: a new worker spreads its first checks over
    # the interval in server order (the first at once, the third after 40 s), so what it shows for `down` right
    # after the reload is what it started from, not what a check found.
    cfg.write_text(config(state_file, runtime_port, frontend_port,
                          {"up": up.port, "moved": moved_from, "down": closed}, "100ms"))
    haproxy = subprocess.Popen(["haproxy", "-W", "-db", "-f", str(cfg), "-p", str(pid_file)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait(lambda: statuses(runtime_port) == {"down": "DOWN", "up": "UP", "moved": "DOWN"}, 10)
        old = worker_pid(runtime_port)

        cfg.write_text(config(state_file, runtime_port, frontend_port,
                              {"up": up.port, "moved": up.port, "down": closed}, "60s"))
        reload = subprocess.run(haproxy_reload_command(str(cfg), str(pid_file), state_file, runtime_port),
                                env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                                capture_output=True, text=True, timeout=10)
        assert reload.returncode == 0, reload.stderr
        assert wait(lambda: worker_pid(runtime_port) != old, 10), "no new worker"
        # `down` kept its state (no first check yet); `moved` has a new address, so its stale row was dropped.
        assert statuses(runtime_port) == {"down": "DOWN", "up": "UP", "moved": "UP"}
        with socket.create_connection(("127.0.0.1", frontend_port), timeout=2):
            pass  # the endpoint answers through the new worker
    finally:
        haproxy.terminate()
        haproxy.wait(10)


def state_row(backend: str, server: str, address: str, port: int, check_port: int = 0) -> str:
    """A `show servers state` row (format 1) of a down server: only the fields the filter reads matter."""
    fields = ["3", backend, "1", server, address, "0", "0", "1", "1", "5", "7", "2", "0", "6", "0", "0", "0", "-",
              str(port), "-", "0", str(check_port), "-", "-", "0"]
    return " ".join(fields)


def test_the_rendered_configuration_loads_the_states_of_its_own_server_lines_only(tmp_path):
    """The filter against what the template renders (IPv4, IPv6 in brackets, a port range checked on its first
    port): a row is kept only for a server line with the same backend, name, address and port."""
    import spec
    from components.haproxy import SERVER_STATE_FILE, RenderedBackend, _KEEP_UNCHANGED_SERVERS

    lb = spec.parse({"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc", "ipFamilies": ["IPv4", "IPv6"],
                                        "ports": [{"name": "api", "port": 6443},
                                                  {"name": "nodeports", "port": 30000, "endPort": 30010}]}]})
    text = render_haproxy("s", lb.load_balancers[0], [RenderedBackend("cp-1", "198.18.10.101", "fd00:198:18:10::65")])
    assert f"server-state-file {SERVER_STATE_FILE}\n" in text and "load-server-state-from-file global\n" in text
    kept = [state_row("be_api", "cp-1", "198.18.10.101", 6443),
            state_row("be_api_v6", "cp-1", "fd00:198:18:10::65", 6443),
            state_row("be_nodeports", "cp-1", "198.18.10.101", 0, 30000)]
    dropped = [state_row("be_api", "cp-1", "198.18.10.102", 6443),   # the server moved
               state_row("be_api", "cp-1", "198.18.10.101", 6444),   # its port changed
               state_row("be_api", "cp-9", "198.18.10.101", 6443),   # no longer in the backend
               state_row("be_nodeports", "cp-1", "198.18.10.101", 0, 30001)]  # the range's first port changed
    cfg, dump = tmp_path / "haproxy.cfg", tmp_path / "dump"
    cfg.write_text(text)
    header = "1\n# be_id be_name srv_id srv_name srv_addr ...\n"
    dump.write_text(header + "\n".join(kept + dropped) + "\n\n")
    out = subprocess.run(["busybox", "awk", _KEEP_UNCHANGED_SERVERS, str(cfg), str(dump)],
                         capture_output=True, text=True, check=True).stdout
    assert out == header + "\n".join(kept) + "\n", out
