"""Hostile input, property-based: every string field of the schema that can reach a rendered file gets random
text (control and separator characters, config syntax, scoped and IPv4-mapped IPv6 forms, long values). Either
validation refuses it with the field's key path, or the file renders, passes its real validator (haproxy -c,
keepalived -t, nginx -t, the Pod schema) and has the same lines and words as with a plain value: the value added
no line and no word.

The files are rendered by the very functions the components use (render_haproxy, render_vrrp_pair,
render_node_conf, render_nginx, render_kube_vip).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spec
from components.dns import render_nginx
from components.external import render_kube_vip
from components.keepalived import render_node_conf
from components.haproxy import RenderedBackend, render_haproxy
from components.haproxy_balancer import render_vrrp_pair
from components.render import RenderError, validate_manifest

# What an attacker or a careless user would type: syntax of every file format, whitespace of every kind,
# IPv6 zones and mapped forms.
INJECTIONS = ["\n", "\r", "\r\n", " ", "\t", "\x0b", "\x0c", "\x00", "\x85", "\u2028", "\u00a0", "#", "!", ";",
              "{", "}", '"', "'", "\\", "$", "${X}", "%", "%eth0", "%eth0\nserver evil 198.18.10.9:1", "]", "[", ":",
              "@", "~", "=", ",", "\nprogram x\n    command sh -c id", "\n}\nvrrp_script x {", "\n  server 1.2.3.4:1;",
              "a" * 300]
IPV6_FORMS = ["fe80::1%eth0", "fe80::1%eth0\nserver x 1.2.3.4:1", "fd00::1%1", "::ffff:198.18.10.5",
              "::ffff:c612:a05", "0:0:0:0:0:ffff:198.18.10.5", "fd00:198:18:10::65", "::", "0.0.0.0", "224.0.0.18",
              "fd00::1%]\n"]


def hostile(valid: list[str]) -> st.SearchStrategy[str]:
    """A valid value, a valid value with something inserted, random text, or an odd address form."""
    inserted = st.builds(
        lambda v, i, at: v[:at % (len(v) + 1)] + i + v[at % (len(v) + 1):],
        st.sampled_from(valid), st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=3)), st.integers(0, 64))
    return st.one_of(st.sampled_from(valid), inserted, inserted, st.text(max_size=24), st.sampled_from(IPV6_FORMS))


# --- base configs, one per rendered file ---------------------------------------------------------------------

def lxc_ha() -> dict:
    return {"name": "api", "cluster": "demo", "type": "lxc",
            "ports": [{"name": "api", "port": 6443}, {"name": "nodeports", "port": 30000, "endPort": 30010}],
            "targets": {"addresses": [{"name": "cp-1", "address": "198.18.10.101"},
                                      {"name": "cp-2", "address": "198.18.10.102"}]},
            "stats": {"enabled": True, "port": 8404},
            "lxc": {"replicas": 2, "vip": "198.18.10.50", "authPass": "s3cr3t", "virtualRouterID": 60}}


def lxc_https() -> dict:
    return {**lxc_ha(), "healthCheck": {"mode": "https", "path": "/readyz"}}


def keepalived() -> dict:
    return {"name": "api", "cluster": "demo", "type": "keepalived",
            "keepalived": {"mode": "ipvs", "vrrpInstances": [{
                "virtualIPs": ["198.18.10.50/24"], "interface": "eth0", "authPass": "s3cr3t",
                "unicastSourceIP": "198.18.10.101", "unicastPeers": ["198.18.10.102", "198.18.10.103"]}],
                "virtualServers": [{"ipAddress": "198.18.10.50", "delayLoop": "30s", "lbAlgo": "wlc",
                                    "lbKind": "NAT"}]}}


def dns() -> dict:
    return {"name": "api", "cluster": "demo", "type": "dns", "ipFamilies": ["IPv4", "IPv6"],
            "targets": {"addresses": [{"name": "cp-1", "address": "198.18.10.101"},
                                      {"name": "cp-2", "address": "fd00:198:18:10::66"}]},
            "dns": {"zone": "cplb.test.", "hostname": "api", "server": "127.0.0.1:5353",
                    "tsig": {"name": "cplb-update", "secret": "c2VjcmV0c2VjcmV0"},
                    "roles": [{"name": "api", "port": 6443, "targetPort": 6443},
                              {"name": "dns", "protocol": "udp", "port": 53, "targetPort": 53}]}}


def external() -> dict:
    return {"name": "api", "cluster": "demo", "type": "external",
            "external": {"endpoint": "198.18.10.60:6443", "kubeVip": {"vip": "198.18.10.60", "interface": "eth0",
                                                                     "image": "ghcr.io/kube-vip/kube-vip:v1.2.2"}}}


# --- renderers: the files each base config produces ----------------------------------------------------------

def _targets(lb) -> list[RenderedBackend]:
    out = []
    for t in (lb.targets.addresses if lb.targets else []):
        v6 = ":" in t.address
        out.append(RenderedBackend(t.name, "" if v6 else t.address, t.address if v6 else ""))
    return out


def files_lxc(stack, lb) -> dict[str, str]:
    return {"haproxy": render_haproxy(stack, lb, _targets(lb)),
            "keepalived": render_vrrp_pair(stack, lb, f"{stack}-{lb.name}-haproxy-1", 190, 24)}


def files_keepalived(stack, lb) -> dict[str, str]:
    nodes = ["198.18.10.101", "198.18.10.102"]
    return {"keepalived": render_node_conf(stack, lb, f"{stack}-cp-1", 0, nodes, "ipvs", check="/bin/true"),
            "haproxy": render_haproxy(stack, lb, [RenderedBackend(f"{stack}-cp-{i}", a) for i, a in enumerate(nodes)],
                                      ipv4_binds=[v.split("/")[0] for vi in lb.keepalived.vrrp_instances
                                                  for v in vi.virtual_ips])}


def files_dns(stack, lb) -> dict[str, str]:
    rows = []
    for role in lb.dns.roles:
        for b in _targets(role if role.targets else lb):  # a role's own targets, else the balancer's
            rows.append((role.name, b.address, b.address6))
    return {"nginx": render_nginx(stack, lb, rows)}


def dns_role_targets() -> dict:
    """A role with targets of its own (Claudie's roles each name theirs)."""
    doc = dns()
    doc["dns"]["roles"][0]["targets"] = {"addresses": [{"name": "cp-9", "address": "198.18.10.109"}]}
    return doc


def files_external(stack, lb) -> dict[str, str]:
    return {"yaml": render_kube_vip(stack, lb)}


@dataclass
class Field:
    key: str  # key path below loadBalancers[0]
    base: Callable[[], dict]
    files: Callable
    valid: list[str]


FIELDS = [
    Field("name", lxc_ha, files_lxc, ["api", "demo-api", "a1"]),
    Field("ports[0].name", lxc_ha, files_lxc, ["api", "kube-api"]),
    Field("targets.addresses[0].name", lxc_ha, files_lxc, ["cp-1", "node-a"]),
    Field("targets.addresses[0].address", lxc_ha, files_lxc, ["198.18.10.101", "198.18.11.7"]),
    Field("lxc.vip", lxc_ha, files_lxc, ["198.18.10.50", "198.18.10.51"]),
    Field("lxc.authPass", lxc_ha, files_lxc, ["s3cr3t", "a%^&*()b", "x_+=:,.<", "p/?-"]),
    Field("healthCheck.path", lxc_https, files_lxc, ["/readyz", "/healthz", "/livez/ping"]),
    Field("keepalived.vrrpInstances[0].virtualIPs[0]", keepalived, files_keepalived,
          ["198.18.10.50/24", "198.18.10.50/32"]),
    Field("keepalived.vrrpInstances[0].interface", keepalived, files_keepalived, ["eth0", "ens3", "br-0.10"]),
    Field("keepalived.vrrpInstances[0].authPass", keepalived, files_keepalived, ["s3cr3t", "a%^&*()b"]),
    Field("keepalived.vrrpInstances[0].unicastSourceIP", keepalived, files_keepalived, ["198.18.10.101"]),
    Field("keepalived.vrrpInstances[0].unicastPeers[0]", keepalived, files_keepalived, ["198.18.10.102"]),
    Field("keepalived.virtualServers[0].ipAddress", keepalived, files_keepalived, ["198.18.10.50"]),
    Field("keepalived.virtualServers[0].delayLoop", keepalived, files_keepalived, ["30s", "1m", "5"]),
    Field("dns.roles[0].name", dns, files_dns, ["api", "kube-api"]),
    Field("targets.addresses[1].address", dns, files_dns, ["fd00:198:18:10::66", "fd00::1"]),
    Field("targets.addresses[0].address", dns, files_dns, ["198.18.10.101"]),
    Field("dns.roles[0].targets.addresses[0].name", dns_role_targets, files_dns, ["cp-9", "node-b"]),
    Field("dns.roles[0].targets.addresses[0].address", dns_role_targets, files_dns, ["198.18.10.109",
                                                                                      "fd00:198:18:10::69"]),
    Field("external.kubeVip.image", external, files_external,
          ["ghcr.io/kube-vip/kube-vip:v1.2.2", "kube-vip", "localhost:5000/kv@sha256:" + "a" * 64, "no", "yes",
           "registry.test/a/b:on"]),
    Field("external.kubeVip.interface", external, files_external, ["eth0", "ens3"]),
    Field("external.kubeVip.vip", external, files_external, ["198.18.10.60"]),
    Field("external.endpoint", external, files_external, ["198.18.10.60:6443", "198.18.10.60:443"]),
]


def set_path(doc: dict, key: str, value):
    """Set `a.b[0].c` in a nested dict/list."""
    import re

    parts = [p for p in re.split(r"\.|(\[\d+\])", key) if p]
    node = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        index = int(part[1:-1]) if part.startswith("[") else part
        if last:
            node[index] = value
        else:
            node = node[index]


def shape(text: str) -> list[int]:
    """Words per line: a value that added a line or a word changes it."""
    return [len(line.split()) for line in text.split("\n")]


VALIDATORS = {
    "haproxy": (["haproxy", "-c", "-q", "-f"], "haproxy.cfg"),
    "keepalived": (["keepalived", "-t", "-f"], "keepalived.conf"),
    "nginx": (["nginx", "-t", "-q", "-c"], "nginx.conf"),
}


def real_validator(kind: str, text: str) -> None:
    if kind == "yaml":
        validate_manifest(text)
        return
    cmd, name = VALIDATORS[kind]
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/{name}"
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([*cmd, path], capture_output=True, text=True, timeout=30)
    # keepalived -t exits non-zero for any warning; interface names that do not exist on the host are warnings.
    out = (r.stdout + r.stderr)
    if kind == "keepalived":
        lines = [line for line in out.splitlines() if line.strip() and "interface" not in line.lower()
                 and "no such device" not in line.lower()]
        assert not lines, out
    else:
        assert r.returncode == 0, out


def outcome(field: Field, value) -> tuple[str, dict]:
    """('refused', message) or ('rendered', files)."""
    doc = field.base()
    set_path(doc, field.key, value)
    try:
        lb = spec.parse({"loadBalancers": [doc]}, "hostile").load_balancers[0]
    except spec.SpecError as exc:
        return "refused", {"message": str(exc)}
    return "rendered", field.files("hostile", lb)


@pytest.fixture(scope="module")
def baselines():
    out = {}
    for f in FIELDS:
        kind, files = outcome(f, f.valid[0])
        assert kind == "rendered", files
        out[f.key + f.base.__name__] = files
    return out


needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in ("haproxy", "keepalived", "nginx")),
                                 reason="haproxy, keepalived and nginx are installed by scripts/setup")
STATS = {"examples": 0, "refused": 0, "rendered": 0}


@needs_tools
@pytest.mark.parametrize("field", FIELDS, ids=[f"{f.base.__name__}:{f.key}" for f in FIELDS])
def test_hostile_value_is_refused_with_its_key_path_or_adds_nothing(field, baselines):
    base = baselines[field.key + field.base.__name__]

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(hostile(field.valid))
    def check(value):
        STATS["examples"] += 1
        try:
            kind, result = outcome(field, value)
        except RenderError as exc:  # validation let through what the file cannot hold
            raise AssertionError(f"{field.key}={value!r} passed validation but the template refused it: {exc}")
        if kind == "refused":
            STATS["refused"] += 1
            message = result["message"]
            # The key path of the field (or of the object that holds it) is named; no traceback.
            head = field.key.split(".")[0].split("[")[0]
            assert f"cplb:loadBalancers[0].{head}" in message or "cplb:loadBalancers[0]:" in message, message
            assert "Traceback" not in message
            if "authPass" in field.key and len(value) > 2:
                assert value not in message, "a secret was echoed"
            assert len(message) < 2000
            return
        STATS["rendered"] += 1
        reference = base
        if field.key.endswith("address") and ":" in value:  # a valid IPv6 target: compare with an IPv6 one
            reference = outcome(field, next(v for v in field.valid + ["fd00::1"] if ":" in v))[1]
        for fmt, text in result.items():
            assert shape(text) == shape(reference[fmt]), f"{field.key}={value!r} changed the shape of {fmt}:\n{text}"
            real_validator(fmt, text)

    check()


def test_property_run_counted():
    """The run above is not empty: it tried values of both outcomes (printed for the closing note)."""
    if not STATS["examples"]:
        pytest.skip("the property tests did not run in this session")
    print(f"\nhostile-input property test: {STATS['examples']} generated values, {STATS['refused']} refused with a key "
          f"path, {STATS['rendered']} rendered and passed the real validators")
    assert STATS["refused"] > 0 and STATS["rendered"] > 0


@needs_tools
def test_valid_odd_values_render_and_pass(baselines):
    """Values that are valid but look like syntax elsewhere: a YAML keyword as an image name, `%^&*()` in a VRRP
    password (keepalived reads them literally), both families in nginx."""
    kind, files = outcome(next(f for f in FIELDS if f.key == "external.kubeVip.image"), "no")
    assert kind == "rendered"
    pod = validate_manifest(files["yaml"])
    assert pod["spec"]["containers"][0]["image"] == "no"
    kind, files = outcome(next(f for f in FIELDS if f.key == "lxc.authPass"), "a%^&*()b")
    assert kind == "rendered" and "auth_pass a%^&*()b\n" in files["keepalived"]
    real_validator("keepalived", files["keepalived"])


# --- cross-field rules (issue 30: 11-14), property-based -----------------------------------------------------

POOL = ["198.18.10.50", "198.18.10.51", "198.18.10.52", "198.19.0.9"]


@settings(max_examples=150, deadline=None)
@given(vips=st.lists(st.sampled_from(POOL), min_size=2, max_size=3),
       targets=st.lists(st.sampled_from(POOL), max_size=2, unique=True), cp=st.booleans())
def test_an_address_is_one_balancer_s_and_never_its_own_backend_or_a_service_ip(vips, targets, cp):
    """Balancers with VIPs drawn from a small pool (so they collide), static targets from the same pool, and a
    control plane whose serviceCIDR (198.19.0.0/24) holds one of them: the config parses exactly when no VIP is
    taken twice, no balancer sends to its own VIP and no VIP is a ClusterIP; otherwise the error names a key path."""
    lbs = [{"name": f"api{i}", "cluster": "demo", "type": "lxc",
            "lxc": {"replicas": 2, "vip": vip, "virtualRouterID": 60 + i},
            **({"targets": {"addresses": [{"name": f"t{j}", "address": a} for j, a in enumerate(targets)]}}
               if i == 0 and targets else {})} for i, vip in enumerate(vips)]
    values = {"loadBalancers": lbs, **({"controlPlanes": [{"name": "cp", "cluster": "demo"}]} if cp else {})}
    clean = (len(set(vips)) == len(vips) and vips[0] not in targets
             and not (cp and any(v.startswith("198.19.0.") for v in vips)))
    try:
        spec.parse(values)
    except spec.SpecError as exc:
        assert not clean, str(exc)
        assert "cplb:" in str(exc) and ("loadBalancers[" in str(exc) or "serviceCIDR" in str(exc)), str(exc)
        return
    assert clean, values


@settings(max_examples=150, deadline=None)
@given(key=st.one_of(st.from_regex(r"\Auser\.[a-z][a-z0-9.-]{0,20}\Z"),
                     st.from_regex(r"\A[a-z][a-z0-9-]{0,12}\Z").map(lambda s: "user.cplb." + s),
                     st.just("user.cplb.loadbalancer")))
def test_a_group_declares_no_key_of_the_project_s_own(key):
    """Any `user.cplb.*` key but the documented selection label is refused in a group's labels, with its path."""
    ours = key.startswith("user.cplb.") and key != "user.cplb.loadbalancer"
    try:
        spec.parse({"instanceGroups": [{"name": "cp", "labels": {key: "x"}}]})
    except spec.SpecError as exc:
        assert ours, str(exc)
        assert "cplb:instanceGroups[0].labels" in str(exc)
        return
    assert not ours, key


# --- the control plane's rendered files: flags files, kubeconfigs, kube-proxy's config ----------------------------

def control_plane() -> dict:
    return {"name": "cp", "cluster": "demo", "serviceCIDR": "198.19.0.0/24",
            "workers": {"count": 2, "podCIDR": "198.19.128.0/17"}}


def files_control_plane(cp) -> dict[str, str]:
    """What the control plane writes from its config, by the functions its component uses."""
    from components.control_plane import APISERVER_ARGS, CONTROLLERS, apiserver_flags, controller_flags
    from components.kubefiles import kubeconfig, render_flags
    from components.workers import kube_proxy_config

    flags = render_flags(apiserver_flags("198.18.10.101", cp), APISERVER_ARGS)
    for service, (_conf, path, _stem) in CONTROLLERS.items():
        flags += render_flags(controller_flags(service, cp), path)
    return {"flags": flags,
            "yaml": kubeconfig(cp.cluster, "198.18.10.50:6443", "CA", "CERT", "KEY", user="publisher")
            + "---\n" + kube_proxy_config("cp-node-1", cp.workers.pod_cidr)}


CP_FIELDS = {"cluster": ["demo", "prod-eu1"], "serviceCIDR": ["198.19.0.0/24", "10.96.0.0/16"],
             "workers.podCIDR": ["198.19.128.0/17", "10.244.0.0/16"]}


def cp_outcome(key: str, value) -> tuple[str, dict]:
    doc = control_plane()
    set_path(doc, key, value)
    try:
        cp = spec.parse({"controlPlanes": [doc]}, "hostile").control_planes[0]
    except spec.SpecError as exc:
        return "refused", {"message": str(exc)}
    return "rendered", files_control_plane(cp)


@pytest.mark.parametrize("key", sorted(CP_FIELDS))
def test_hostile_control_plane_value_is_refused_with_its_key_path_or_adds_nothing(key):
    """A flags file keeps one `--name=value` per line (render_flags' grammar), and the YAML files parse to the same
    structure as with a plain value, the value a scalar of its own."""
    import yaml

    base = cp_outcome(key, CP_FIELDS[key][0])[1]

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(hostile(CP_FIELDS[key]))
    def check(value):
        try:
            kind, result = cp_outcome(key, value)
        except ValueError as exc:  # render_flags refused what validation let through
            raise AssertionError(f"{key}={value!r} passed validation but a flags file refused it: {exc}")
        if kind == "refused":
            message = result["message"]
            assert f"cplb:controlPlanes[0].{key.split('.')[0]}" in message or "cplb:controlPlanes[0]:" in message, \
                message
            assert "Traceback" not in message and len(message) < 2000
            return
        assert shape(result["flags"]) == shape(base["flags"]), result["flags"]
        docs, reference = list(yaml.safe_load_all(result["yaml"])), list(yaml.safe_load_all(base["yaml"]))
        assert [sorted(d) for d in docs] == [sorted(d) for d in reference]
        assert docs[1]["clusterCIDR"] == (value if key == "workers.podCIDR" else reference[1]["clusterCIDR"])
        if key == "cluster":
            assert docs[0]["clusters"][0]["name"] == value and docs[0]["current-context"] == value

    check()


# --- every string field of the schema is either tried above or does not reach a rendered file ------------------

# Why a string field needs no place in FIELDS / CP_FIELDS: it never reaches a text file the project renders.
NOT_IN_FILES = {
    "instance.": "Incus API fields (JSON, over REST); names in Incus's own grammar (spec.IncusObjectName)",
    "instanceSpec.": "Incus API fields (JSON, over REST); names in Incus's own grammar",
    "labels": "Incus instance config keys (JSON); user.cplb.* refused (test_a_group_declares_no_key...)",
    "selector.": "compared with Incus labels, never written",
    "oci.": "the oci instance's Incus source (JSON); the image reference has its own pattern",
    "ovn.": "the OVN load balancer's Incus API fields (JSON)",
    "kubeVip.path": "where the manifest is written (a path in the instance's file API, pattern-checked)",
    "keepalived.trustedNodes": "compared with instance names, never written",
    "dns.zone": "DNS UPDATE messages built by dnspython (wire format, not text)",
    "dns.hostname": "DNS UPDATE messages built by dnspython",
    "dns.server": "where the DNS UPDATE goes (an address)",
    "dns.tsig.": "the TSIG key of the DNS UPDATE (dnspython)",
    "loadBalancers.cluster": "selects instances by label, and names the published objects (JSON through the API)",
    "controlPlanes.name": "instance names (Incus grammar, DnsLabel)",
    "instanceGroups.": "instances only (Incus API)",
    "incus.": "how Incus is reached (REST), never rendered",
    "kubernetes.": "the user's kubeconfig for pulumi-kubernetes; the cluster's name in the publication (JSON)",
}


def string_fields(model, prefix: str = "", seen=None):
    """Every str (or str subtype) or dict-of-str field below `model`, as `a.b.c` key paths."""
    import types
    import typing

    from pydantic import BaseModel

    seen = set() if seen is None else seen

    def leaves(t):
        origin = typing.get_origin(t)
        if origin in (typing.Union, types.UnionType, list, tuple, typing.Annotated):
            for arg in typing.get_args(t)[:1] if origin is typing.Annotated else typing.get_args(t):
                yield from leaves(arg)
        elif origin is dict:
            yield dict
        elif origin is not typing.Literal:
            yield t

    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        for t in leaves(info.annotation):
            if isinstance(t, type) and issubclass(t, BaseModel):
                if (t, key) not in seen:
                    seen.add((t, key))
                    yield from string_fields(t, key + ".", seen)
            elif t is dict or (isinstance(t, type) and issubclass(t, str)):
                yield key


def test_every_string_field_is_tried_or_does_not_reach_a_rendered_file():
    """A field added to the schema must join the property tests above or say here why no file holds it."""
    tried = {"loadBalancers." + re.sub(r"\[\d+\]", "", f.key) for f in FIELDS} | \
        {f"controlPlanes.{k}" for k in CP_FIELDS}
    unclassified = [key for key in string_fields(spec.StackSpec)
                    if key not in tried and not any(part in key for part in NOT_IN_FILES)]
    assert unclassified == [], unclassified
