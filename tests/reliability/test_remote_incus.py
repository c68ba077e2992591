"""The stack against a remote Incus over HTTPS with a client certificate, and the client key as a Pulumi secret.

There is no second Incus server here, so the "remote" is this machine's incusd listening on loopback
(core.https_address 127.0.0.1:<port>), reached only through HTTPS with a client certificate it was told to trust.
Everything the program does (facts at preview, providers at `up`, status reads, destroy) goes through that
endpoint, and the key must not appear in the state files, the preview, the logs or the outputs.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile

import pytest

from tests.helpers import base_config, demo_group, http_get, instances_with_prefix, pulumi_stack, wait_for


def _incus_cli(*args: str, check: bool = True) -> str:
    return subprocess.run(["incus", *args], check=check, capture_output=True, text=True).stdout.strip()


def _client_pair(directory: str, cn: str) -> tuple[str, str]:
    key, cert = os.path.join(directory, f"{cn}.key"), os.path.join(directory, f"{cn}.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={cn}"],
                   check=True, capture_output=True)
    with open(cert) as c, open(key) as k:
        return c.read(), k.read()


@pytest.fixture(scope="module")
def https_incus():
    """incusd also listening on 127.0.0.1 over HTTPS; a trusted and an untrusted client pair."""
    before = _incus_cli("config", "get", "core.https_address")
    address = before
    if not address:
        address = f"127.0.0.1:{random.randrange(18000, 18999)}"
        _incus_cli("config", "set", "core.https_address", address)
    directory = tempfile.mkdtemp(prefix="cplb-remote-")
    trusted_name = f"cplb-test-{random.randrange(16**6):06x}"
    trusted = _client_pair(directory, trusted_name)
    untrusted = _client_pair(directory, "cplb-test-stranger")
    _incus_cli("config", "trust", "add-certificate", os.path.join(directory, f"{trusted_name}.crt"),
               "--name", trusted_name)
    with open("/var/lib/incus/server.crt") as f:
        server_cert = f.read()
    host, port = address.rsplit(":", 1)
    try:
        yield {"remote": f"https://127.0.0.1:{port}", "serverCert": server_cert,
               "trusted": trusted, "untrusted": untrusted, "directory": directory}
    finally:
        fingerprint = subprocess.run(
            ["openssl", "x509", "-in", os.path.join(directory, f"{trusted_name}.crt"), "-noout", "-fingerprint",
             "-sha256"], check=True, capture_output=True, text=True).stdout.split("=", 1)[1].replace(":", "").strip()
        _incus_cli("config", "trust", "remove", fingerprint.lower(), check=False)
        if not before:
            _incus_cli("config", "unset", "core.https_address", check=False)
        subprocess.run(["rm", "-rf", directory], check=False)


def remote_config(https: dict, cert: str, cluster: str) -> dict:
    values = base_config(
        instanceGroups=[demo_group(2, name="cp", cluster=cluster)],
        loadBalancers=[{"name": "api", "cluster": cluster, "type": "lxc",
                        "healthCheck": {"mode": "tcp", "intervalSeconds": 1, "rise": 1, "fall": 2}}],
    )
    values["incus"] = {**values["incus"], "remote": https["remote"], "clientCert": cert,
                       "serverCert": https["serverCert"], "clientKey": "set-below-as-a-secret"}
    return values


def test_remote_https_with_the_client_key_as_a_secret(https_incus):
    from pulumi.automation import ConfigValue

    cluster = f"rm{random.randrange(16**4):04x}"
    cert, key = https_incus["trusted"]
    key_body = "".join(key.strip().splitlines()[1:-1])  # the base64 lines: what a leak would show
    # Past the PKCS#8 header, which every P-384 key shares: the private scalar, this key's own bytes.
    key_own = key_body[48:112]
    with pulumi_stack(remote_config(https_incus, cert, cluster), prefix="rm") as (project, name, stack):
        stack.set_config("cplb:incus.clientKey", ConfigValue(key, secret=True), path=True)
        with open(os.path.join(project.dir, "stacks", f"Pulumi.{name}.yaml")) as f:
            stack_file = f.read()
        assert "secure:" in stack_file and key_own not in stack_file, "the key is not encrypted in the stack file"

        logs: list[str] = []
        preview = stack.preview(on_output=logs.append, diff=True)
        up = stack.up(on_output=logs.append)
        names = up.outputs["instanceGroups"].value["cp"]["instances"]
        ep = up.outputs["loadBalancers"].value["api"]["endpoint"]
        host, port = ep.rsplit(":", 1)
        # Real traffic through the balancer the remote client made, to both control-plane instances.
        assert wait_for(lambda: {http_get(host, int(port)) for _ in range(8)} >= set(names), 30), \
            "the balancer made over HTTPS does not serve both backends"
        conditions = {c["type"]: c["status"] for c in up.outputs["loadBalancers"].value["api"]["status"]["conditions"]}
        assert conditions["Ready"] == "True" and conditions["BackendsHealthy"] == "True", conditions
        # The instances exist on the server (seen through the local socket, which the stack never used).
        assert set(instances_with_prefix(name)) == {*names, f"{name}-api-haproxy-1"}

        refresh = stack.refresh(on_output=logs.append)
        state = project.state_text()
        assert f"{name}-api-haproxy-1" in state
        # Every resource was made through the HTTPS endpoint, not the socket.
        assert state.count(https_incus["remote"]) >= 4, "the providers did not get the remote endpoint"
        for where, text in (("state", state), ("preview", preview.stdout), ("logs", "\n".join(logs)),
                            ("outputs", str(up.outputs)), ("refresh", refresh.stdout)):
            for line in key.strip().splitlines()[1:-1]:
                assert line not in text, f"the Incus client key leaked into the {where}"

    assert not instances_with_prefix(name), "destroy over HTTPS left instances behind"
    # TLS takes the key from a path: the clients give it an in-memory file, so no file under the temporary directory
    # holds it, even from a plugin process the engine killed on its way out (the fresh-clone run that found files
    # left had two such directories).
    written = [f for f in files_holding(key_own, tempfile.gettempdir())
               if not f.startswith(https_incus["directory"] + os.sep)]  # the fixture's own copy
    assert not written, f"the client key was written to disk: {written}"


def files_holding(text: str, top: str) -> list[str]:
    found = []
    for root, _dirs, files in os.walk(top):
        for f in files:
            path = os.path.join(root, f)
            try:
                if os.path.isfile(path) and os.path.getsize(path) < 1 << 20 and \
                        text in open(path, errors="replace").read().replace("\n", ""):
                    found.append(path)
            except OSError:  # removed while we looked, or not ours to read
                pass
    return found


def test_an_untrusted_client_certificate_is_refused_at_preview(https_incus):
    from pulumi.automation import ConfigValue
    from pulumi.automation.errors import CommandError

    cluster = f"rm{random.randrange(16**4):04x}"
    cert, key = https_incus["untrusted"]
    with pulumi_stack(remote_config(https_incus, cert, cluster), prefix="rm") as (project, name, stack):
        stack.set_config("cplb:incus.clientKey", ConfigValue(key, secret=True), path=True)
        with pytest.raises(CommandError) as exc:
            stack.preview(on_output=lambda _: None)
        text = str(exc.value)
        assert "Traceback" not in text
        assert https_incus["remote"] in text and "trust" in text, text[-2000:]
        for line in key.strip().splitlines()[1:-1]:
            assert line not in text
        assert not instances_with_prefix(name)


def test_the_events_socket_verifies_the_server_as_the_rest_calls_do(https_incus):
    """The watch's event stream (IncusClient.events_socket) trusts what the REST calls trust: the pinned server
    certificate, else the system's CAs; a server that shows anything else is refused. (ws4py turns verification off
    unless told otherwise, and pylxd did not tell it: any server that answered was believed.)"""
    import ssl

    from ws4py.client import WebSocketBaseClient

    from providers.incus_client import Connection, IncusClient

    cert, key = https_incus["trusted"]
    client = IncusClient(Connection(remote=https_incus["remote"], client_cert=cert, client_key=key,
                                    server_cert=https_incus["serverCert"]))
    pinned = client._server_cert_file

    def connects() -> bool:
        ws = client.events_socket(WebSocketBaseClient)
        try:
            ws.connect()
        except ssl.SSLError:
            return False
        ws.close_connection()
        return True

    assert connects(), "the pinned server certificate did not open the event stream"
    client._server_cert_file = client._memfile(https_incus["untrusted"][0])  # another certificate pinned
    assert not connects(), "the event stream believed a server that is not the pinned one"
    client._server_cert_file = None  # nothing pinned: the system's CAs, which never signed incusd's certificate
    assert not connects(), "the event stream believed a server no trusted CA vouches for"
    client._server_cert_file = pinned
    assert connects()
