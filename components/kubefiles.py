"""Files every Kubernetes node gets, shared by the control plane and the workers: flags files checked against their
grammar, and kubeconfigs."""

from __future__ import annotations

import base64
import re


_FLAG = re.compile(r"--[a-z0-9-]+=[A-Za-z0-9._:/,=@\[\]-]*")


def render_flags(flags: list[str], path: str) -> str:
    """A flags file (one flag a line, read by the service script as words): every flag is checked against that
    grammar before it is written, so no value can add a flag or a word."""
    for flag in flags:
        if not _FLAG.fullmatch(flag):
            raise ValueError(f"refusing to write {path}: a flag does not fit `--name=value` without spaces or quotes")
    return "\n".join(flags) + "\n"


def kubeconfig(cluster: str, server: str, ca: str, cert: str, key: str, user: str = "admin") -> str:
    import yaml

    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    who = f"{cluster}-{user}"
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": cluster,
        "clusters": [{"name": cluster, "cluster": {"server": f"https://{server}",
                                                   "certificate-authority-data": b64(ca)}}],
        "users": [{"name": who, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": who}}],
    }
    return yaml.safe_dump(doc, sort_keys=False)
