"""Rendering of the config files in templates/: the one boundary where values meet file grammars.

Every value a template prints goes through its file format's `finalize` (Jinja calls it on every `{{ }}`,
wherever the value sits in the objects passed in: an attribute of a model, a method's result, an item of a
list). For the line-based config formats (haproxy, keepalived, nginx) a printed value must be one word of that
file's grammar: no whitespace, no comment, quote, block or variable character. A value that is not is refused,
never stripped. Strings that the project itself writes with spaces for a quoted position (a check script) are
`Quoted` and checked against the quoted-string grammar instead. YAML values are printed as JSON strings (a JSON
string is a YAML double-quoted scalar), so `no`, `1e3` or `:` stay strings.

After rendering, each format has a validator that runs before anything is written: the real tools (`haproxy -c`,
`keepalived -t`, `nginx -t`) run in the instance (providers/instance_file.py) and in the unit tests; Kubernetes
manifests are parsed and checked against a schema here (`validate_manifest`).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates")


class Quoted(str):
    """A project-made string printed inside double quotes in a config file (it may hold spaces)."""


class RenderError(ValueError):
    """A value that does not fit the grammar of the file it would land in. Never shows the value (it may be a
    secret): only the offending character."""


@dataclass(frozen=True)
class FileFormat:
    name: str
    word: re.Pattern  # one unquoted word
    quoted: Optional[re.Pattern]  # the inside of "..." (None: the format has no quoted position we use)
    printer: Callable[[Any], str] = str


# Shared by haproxy and nginx: names, addresses ([v6]:port), ports and ranges, flags.
_CONFIG_WORD = re.compile(r"[A-Za-z0-9._:/\[\]@+,=-]*")
# keepalived: also the characters an authPass may hold (spec.AUTH_PASS_PATTERN), none that keepalived reads as
# syntax (`!` and `#` start a comment anywhere in a word; `"` `{` `}` `$` `~` `@` `\`).
_KEEPALIVED_WORD = re.compile(r"[A-Za-z0-9._:/+,=%^&*()<>?-]*")
_QUOTED = re.compile(r"[^\"'\\\x00-\x1f\x7f!#${}]*")


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise RenderError("a boolean or null would print as a YAML keyword; pass a string")
    return json.dumps(value if isinstance(value, (int, str)) else str(value), ensure_ascii=True)


FORMATS = {
    "haproxy": FileFormat("haproxy", _CONFIG_WORD, _QUOTED),
    "nginx": FileFormat("nginx", _CONFIG_WORD, None),
    "keepalived": FileFormat("keepalived", _KEEPALIVED_WORD, _QUOTED),
    "yaml": FileFormat("yaml", re.compile(r"[^\x00-\x1f\x7f]*"), None, _yaml_scalar),
}
TEMPLATE_FORMATS = {
    "haproxy.cfg.j2": "haproxy",
    "keepalived-haproxy.conf.j2": "keepalived",
    "keepalived-node.conf.j2": "keepalived",
    "nginx-stream.conf.j2": "nginx",
    "kube-vip.yaml.j2": "yaml",
}


def _offending(value: str, pattern: re.Pattern) -> str:
    for ch in value:
        if not pattern.fullmatch(ch):
            return repr(ch)
    return "its form"


def check_value(fmt: FileFormat, value: Any) -> str:
    """The text of one printed value, or RenderError."""
    if isinstance(value, bool) or value is None:
        if fmt.name == "yaml":
            return fmt.printer(value)
        raise RenderError(f"{fmt.name}: a {type(value).__name__} value would print as {value!r}")
    if isinstance(value, int):
        return fmt.printer(value)
    if isinstance(value, float):
        text = repr(value)
        if not math.isfinite(value) or "e" in text.lower():
            raise RenderError(f"{fmt.name}: the number would print in a form the file cannot read")
        return fmt.printer(value)
    if not isinstance(value, str):
        raise RenderError(f"{fmt.name}: a {type(value).__name__} is printed; pass a string or a number")
    if isinstance(value, Quoted):
        if fmt.quoted is None or not fmt.quoted.fullmatch(value):
            raise RenderError(f"{fmt.name}: a quoted value holds {_offending(value, fmt.quoted or re.compile(''))}")
        return fmt.printer(str(value))
    if not fmt.word.fullmatch(value):
        raise RenderError(f"{fmt.name}: a value holds {_offending(value, fmt.word)}, which is not part of a word "
                          "in this file")
    if fmt.name == "keepalived" and value[:1] in ("@", "~"):
        raise RenderError("keepalived: a word starts with a character keepalived reads as syntax")
    return fmt.printer(value)


_lock = threading.Lock()
_envs: dict[str, Any] = {}


def _env(fmt_name: str):
    with _lock:
        if fmt_name not in _envs:
            import jinja2

            fmt = FORMATS[fmt_name]
            _envs[fmt_name] = jinja2.Environment(
                loader=jinja2.FileSystemLoader(TEMPLATES),
                undefined=jinja2.StrictUndefined,
                keep_trailing_newline=True,
                autoescape=False,
                finalize=lambda value: check_value(fmt, value),
            )
        return _envs[fmt_name]


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def render(template: str, **values) -> str:
    fmt_name = TEMPLATE_FORMATS[template]
    text = _env(fmt_name).get_template(template).render(**values)
    if _CONTROL.search(text):
        raise RenderError(f"refusing to render {template}: the output holds a control character")
    if fmt_name == "yaml":
        validate_manifest(text, template)
    return text


# --- Kubernetes manifests -------------------------------------------------------------------------------------

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_ENV_NAME = {"type": "string", "pattern": r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"}
_STRING = {"type": "string"}
# The part of the core/v1 Pod schema the rendered static pods use (additionalProperties off: a key a template
# did not mean to write is an error too).
POD_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "v1"},
        "kind": {"const": "Pod"},
        "metadata": {"type": "object", "required": ["name", "namespace"], "additionalProperties": False,
                     "properties": {"name": _NAME, "namespace": _NAME,
                                    "labels": {"type": "object", "additionalProperties": _STRING}}},
        "spec": {
            "type": "object", "required": ["containers"], "additionalProperties": False,
            "properties": {
                "hostNetwork": {"type": "boolean"},
                "hostAliases": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["ip", "hostnames"],
                    "properties": {"ip": _STRING, "hostnames": {"type": "array", "items": _STRING}}}},
                "containers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["name", "image"], "additionalProperties": False,
                    "properties": {
                        "name": _NAME,
                        "image": {"type": "string", "minLength": 1},
                        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                        "args": {"type": "array", "items": _STRING},
                        "command": {"type": "array", "items": _STRING},
                        "env": {"type": "array", "items": {
                            "type": "object", "required": ["name", "value"], "additionalProperties": False,
                            "properties": {"name": _ENV_NAME, "value": _STRING}}},
                        "securityContext": {"type": "object", "additionalProperties": False, "properties": {
                            "capabilities": {"type": "object", "additionalProperties": False, "properties": {
                                "add": {"type": "array", "items": {"type": "string", "pattern": "^[A-Z_]+$"}}}}}},
                        "volumeMounts": {"type": "array", "items": {
                            "type": "object", "required": ["name", "mountPath"], "additionalProperties": False,
                            "properties": {"name": _NAME, "mountPath": {"type": "string", "pattern": "^/"}}}},
                    }}},
                "volumes": {"type": "array", "items": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": _NAME, "hostPath": {
                        "type": "object", "required": ["path"], "additionalProperties": False,
                        "properties": {"path": {"type": "string", "pattern": "^/"}}}}}},
            },
        },
    },
}


def validate_manifest(text: str, where: str = "manifest") -> dict:
    """Parse a rendered static-pod manifest and check it against POD_SCHEMA; the parsed object, or RenderError."""
    import jsonschema
    import yaml

    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise RenderError(f"{where}: not valid YAML ({type(exc).__name__})") from None
    if len(docs) != 1:
        raise RenderError(f"{where}: {len(docs)} YAML documents, expected one Pod")
    errors = sorted(jsonschema.Draft202012Validator(POD_SCHEMA).iter_errors(docs[0]), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        path = ".".join(str(p) for p in first.path) or "(top)"
        raise RenderError(f"{where}: {path} does not fit the Pod schema ({first.validator} {first.validator_value!r})"
                          if first.validator != "pattern" else f"{where}: {path} does not fit the Pod schema")
    return docs[0]
