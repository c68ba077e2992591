"""Stack config tools that touch no infrastructure.

  python scripts/config_tools.py schema [--check]   write docs/config.schema.json and docs/config.md from spec.py
                                                  (--check: exit 1 when they are not current)
  python scripts/config_tools.py validate STACK     check stacks/Pulumi.STACK.yaml with the same messages as preview
                                                  (STACK may be the path of a Pulumi.<stack>.yaml elsewhere)
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import spec  # noqa: E402

SCHEMA_PATH = os.path.join(ROOT, "docs", "config.schema.json")
DOC_PATH = os.path.join(ROOT, "docs", "config.md")
#: Fields that hold secrets: in a stack file they are `{secure: ...}` (pulumi config set --secret --path).
SECRET_FIELDS = {"authPass": "secret00", "secret": "c2VjcmV0c2VjcmV0", "clientKey": "placeholder",
                 "kubeconfig": "placeholder"}


def _allow_secure(node):
    """Let every secret field also be Pulumi's encrypted form."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for key in list(props):
                if key in SECRET_FIELDS:
                    props[key] = {"anyOf": [props[key], {"type": "object", "required": ["secure"],
                                                         "properties": {"secure": {"type": "string"}},
                                                         "additionalProperties": False}],
                                  "description": props[key].get("description", "") + " (a Pulumi secret)"}
        for value in node.values():
            _allow_secure(value)
    elif isinstance(node, list):
        for value in node:
            _allow_secure(value)


def stack_file_schema() -> dict:
    model = spec.StackSpec.model_json_schema(by_alias=True)
    defs = model.pop("$defs", {})
    _allow_secure(defs)
    _allow_secure(model)
    config_props = {f"{spec.NAMESPACE}:{k}": v for k, v in model["properties"].items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "incus-cplb stack config (stacks/Pulumi.<stack>.yaml)",
        "description": "Generated from spec.py by `make schema`; do not edit.",
        "type": "object",
        "properties": {
            "config": {"type": "object", "properties": config_props,
                       "patternProperties": {"^(?!cplb:).+": {}}, "additionalProperties": False},
            "encryptionsalt": {"type": "string"},
            "secretsprovider": {"type": "string"},
            "encryptedkey": {"type": "string"},
        },
        "$defs": defs,
    }


def _md_rows(name: str, schema: dict, defs: dict, out: list, seen: set):
    if name in seen:
        return
    seen.add(name)
    out += [f"\n### `{name}`\n", schema.get("description", "").strip() + "\n" if schema.get("description") else "",
            "| key | type | default | description |", "| --- | --- | --- | --- |"]
    later = []
    for key, prop in (schema.get("properties") or {}).items():
        kind, refs = _type_of(prop)
        later += refs
        default = json.dumps(prop["default"]) if "default" in prop else ("required" if key in schema.get("required", [])
                                                                          else "")
        desc = (prop.get("description") or "").replace("\n", " ").replace("|", "\\|")
        out.append(f"| `{key}` | {kind} | {default} | {desc} |")
    for ref in later:
        _md_rows(ref, defs[ref], defs, out, seen)


def _type_of(prop: dict) -> tuple[str, list]:
    if "$ref" in prop:
        name = prop["$ref"].split("/")[-1]
        return f"[{name}](#{name.lower()})", [name]
    if "anyOf" in prop:
        kinds, refs = zip(*[_type_of(p) for p in prop["anyOf"]])
        return " or ".join(k for k in kinds if k != "null"), [r for rs in refs for r in rs]
    if prop.get("type") == "array":
        k, refs = _type_of(prop.get("items", {}))
        return f"list of {k}", refs
    if prop.get("type") == "object" and "additionalProperties" in prop and isinstance(prop["additionalProperties"], dict):
        k, refs = _type_of(prop["additionalProperties"])
        return f"map of {k}", refs
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"]), []
    if "const" in prop:
        return f"`{prop['const']}`", []
    kind = prop.get("type", "any")
    extra = [f"{k} {prop[k]}" for k in ("minimum", "maximum", "exclusiveMinimum", "maxLength") if k in prop]
    if "pattern" in prop:
        extra.append(f"pattern `{prop['pattern']}`".replace("|", "\\|"))
    return kind + (f" ({', '.join(extra)})" if extra else ""), []


STRING_RULES = """## What string fields accept

Every value that can reach a rendered file (haproxy.cfg, keepalived.conf, nginx.conf, the kube-vip manifest) is
checked here, at `make validate` and `pulumi preview`, and again at the template boundary, where each printed value
must be one word of that file's grammar (components/render.py). A value that does not fit is refused, never
stripped. Errors name the key path; a value is shown escaped and cut to 60 characters, and a secret is never shown.

| kind of field | accepted |
| --- | --- |
| names (`name`, `cluster`, `ports[].name`, `targets.addresses[].name`, instance groups) | `[a-z]([a-z0-9-]*[a-z0-9])?`, at most 40 characters; every Incus name the stack creates (`<stack>-<name>-<role>-<n>`) is computed at validation and must be unique and at most 63 characters |
| addresses (`targets.addresses[].address`, `lxc.vip`, `ovn.listenAddress`, `unicastPeers[]`, `unicastSourceIP`, `virtualServers[].ipAddress`, `kubeVip.vip`) | an IPv4 or IPv6 address, written back in its normal form; no IPv6 scope (`%zone`), no IPv4-mapped form (`::ffff:a.b.c.d`), not unspecified (`0.0.0.0`, `::`) nor multicast; its family must be one of the balancer's `ipFamilies`; `lxc.vip` is IPv4 |
| CIDRs (`virtualIPs[]`) | an address as above, `/`, a prefix length within the family's; one family per VRRP instance, and its peers of the same family |
| `authPass` (secret) | 1-8 of `A-Z a-z 0-9 % ^ & * ( ) _ + = : , . < > ? / -`: characters keepalived reads literally (`!` and `#` start a comment anywhere in a word; quotes, braces, `$`, `~`, `@`, `\\` and spaces are syntax) |
| `advertIntervalSeconds` | 0.01-255 with at most two decimals (keepalived's range), printed without exponent |
| `delayLoop` | `<n>`, `<n>s` or `<n>m`, at least 1 s |
| ports (`port`, `endPort`, `targetPort`, `stats.port`, `dns.server`'s port) | 1-65535; a balanced port or range may not include `stats.port` nor, for haproxy-based strategies (`lxc`, `oci`, `keepalived` userspace), haproxy's own 8405 (monitor) and 9999 (runtime API) |
| DNS names (`dns.zone`, `dns.hostname`, `tsig.name`, an `external.endpoint` host) | labels of letters, digits and `-`, 1-63 each, 255 bytes in all (dnspython); `hostname` must be inside `zone`, compared label by label |
| `dns.server` | `a.b.c.d:port` or `[ipv6]:port` |
| `tsig.secret` (secret) | base64 that decodes to a non-empty key |
| image references (`oci.image`, `kubeVip.image`) | `[registry[:port]/]path[:tag][@sha256:digest]` in the distribution grammar (lower-case path, no trailing `:`) |
| labels | keys `user.[A-Za-z0-9][A-Za-z0-9._/-]*`; values `[A-Za-z0-9._:/@+-]*`, at most 128 characters |

The stack file itself: a map with a `config:` map whose keys are strings; at most 32 levels deep, at most
100,000 values once YAML aliases are expanded, strings of at most 65,536 characters.
""".splitlines()


def config_markdown(schema: dict) -> str:
    defs = schema["$defs"]
    out = ["# Stack config reference", "",
           "Generated from `spec.py` by `make schema` (JSON Schema: `docs/config.schema.json`). Keys live in the",
           "`cplb` namespace of `stacks/Pulumi.<stack>.yaml`. `make validate STACK=..` checks a stack file with",
           "the same messages as `pulumi preview`, without touching any infrastructure.", ""]
    top = schema["properties"]["config"]["properties"]
    out += ["| key | type |", "| --- | --- |"]
    refs = []
    for key, prop in top.items():
        kind, r = _type_of(prop)
        refs += r
        out.append(f"| `{key}` | {kind} |")
    out += ["", "## Capabilities per strategy (enforced at preview)", "",
            "| type | protocols | port ranges (`endPort`) | `ipFamilies` | `targets.addresses` |",
            "| --- | --- | --- | --- | --- |"]
    for kind, caps in spec.CAPABILITIES.items():
        out.append(f"| `{kind}` | {', '.join(caps['protocols'])} | {'yes' if caps['ranges'] else 'no'} | "
                   f"{', '.join(caps['families'])} | {'yes' if caps['addresses'] else 'no (selector only)'} |")
    out += ["", "Rules for every strategy (Ironcore's): `endPort >= port`; ranges of one protocol may not overlap;",
            "a range forwards each port to the same port, so it takes no `targetPort`. Selector operators: `In`,",
            "`NotIn` (at least one value), `Exists`, `DoesNotExist` (no values).", ""]
    out += STRING_RULES
    seen: set = set()
    for ref in refs:
        _md_rows(ref, defs[ref], defs, out, seen)
    return "\n".join(line for line in out) + "\n"


def cmd_schema(check: bool) -> int:
    schema = stack_file_schema()
    text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    md = config_markdown(schema)
    if check:
        stale = [p for p, want in ((SCHEMA_PATH, text), (DOC_PATH, md))
                 if not os.path.exists(p) or open(p).read() != want]
        for p in stale:
            print(f"{os.path.relpath(p, ROOT)} is not current: run `make schema`", file=sys.stderr)
        return 1 if stale else 0
    with open(SCHEMA_PATH, "w") as f:
        f.write(text)
    with open(DOC_PATH, "w") as f:
        f.write(md)
    print(f"wrote {os.path.relpath(SCHEMA_PATH, ROOT)} and {os.path.relpath(DOC_PATH, ROOT)}")
    return 0


def _placeholders(node, key=None):
    """Encrypted values cannot be read without the passphrase: stand in a valid value of the same field."""
    if isinstance(node, dict):
        if set(node) == {"secure"}:
            return SECRET_FIELDS.get(key, "placeholder")
        return {k: _placeholders(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_placeholders(v, key) for v in node]
    return node


class StackFileError(Exception):
    """A stack file that cannot be read as a Pulumi stack file; the message says where."""


def _bounded_loader():
    """PyYAML's safe loader with bounds: nesting depth while composing, and the size of the document with every
    alias expanded (a few lines of nested aliases expand to billions of values: the "billion laughs")."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            self.depth += 1
            try:
                if self.depth > spec.MAX_DEPTH + 2:  # + the document and `config:` levels
                    mark = self.peek_event().start_mark
                    raise StackFileError(f"line {mark.line + 1}: nested deeper than {spec.MAX_DEPTH} levels")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def get_single_node(self):
            node = super().get_single_node()
            if node is not None:
                _check_expanded_size(node)
            return node

    return BoundedLoader


def _check_expanded_size(root) -> None:
    import yaml

    sizes: dict[int, int] = {}

    def size(node) -> int:
        # Aliases make the node graph a DAG: memoised by node, so this costs one visit per distinct node.
        key = id(node)
        if key in sizes:
            return sizes[key]
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        if total > spec.MAX_NODES:
            raise StackFileError(f"line {node.start_mark.line + 1}: more than {spec.MAX_NODES} values once YAML aliases "
                                 "are expanded; no stack needs that many")
        sizes[key] = total
        return total

    size(root)


def load_stack_file(path: str) -> dict:
    """The `cplb` namespace of a stack file, as preview would see it (secrets replaced by placeholders)."""
    import yaml

    rel = os.path.relpath(path, ROOT)
    try:
        with open(path, "rb") as f:
            doc = yaml.load(f, Loader=_bounded_loader())  # noqa: S506 - a SafeLoader subclass
    except StackFileError as exc:
        raise StackFileError(f"{rel}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise StackFileError(f"{rel}: {where}not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__})"
                             ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise StackFileError(f"{rel}: cannot be read ({type(exc).__name__})") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise StackFileError(f"{rel}: a stack file is a map with a `config:` key, not a {_kind(doc)}")
    config = doc.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise StackFileError(f"{rel}: `config:` must be a map of `namespace:key` to values, not a {_kind(config)}")
    values = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise StackFileError(f"{rel}: config key {spec.show(key)} is not a string (write `{spec.NAMESPACE}:<key>`)")
        if key.startswith(f"{spec.NAMESPACE}:"):
            values[key.split(":", 1)[1]] = _placeholders(value)
    return values


def _kind(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value),
                                                                                           type(value).__name__)


def stack_file(stack: str) -> tuple[str, str]:
    """A stack name (its file in stacks/) or the path of a stack file (`Pulumi.<stack>.yaml` anywhere): the
    path and the stack's name."""
    if os.sep in stack or stack.endswith(".yaml"):
        base = os.path.basename(stack)
        name = base[len("Pulumi."):-len(".yaml")] if base.startswith("Pulumi.") and base.endswith(".yaml") else base
        return os.path.abspath(stack), name
    return os.path.join(ROOT, "stacks", f"Pulumi.{stack}.yaml"), stack


def cmd_validate(stack: str) -> int:
    path, stack = stack_file(stack)
    shown = os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path
    if not os.path.exists(path):
        print(f"no stack config {shown}", file=sys.stderr)
        return 2
    try:
        values = load_stack_file(path)
        parsed = spec.parse(values, stack)
    except StackFileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except spec.SpecError as exc:
        print(f"{shown}: {exc}", file=sys.stderr)
        return 1
    print(f"{shown}: valid ({len(parsed.instance_groups)} instance group(s), "
          f"{len(parsed.load_balancers)} load balancer(s)); server-side checks (extensions, networks, VIPs, "
          "images) run at preview")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["schema"]:
        return cmd_schema("--check" in argv)
    if argv[:1] == ["validate"] and len(argv) == 2:
        return cmd_validate(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
