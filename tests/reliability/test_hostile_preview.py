"""Hostile input through a real `pulumi preview`: secrets that break a rule are refused with the field named and
the value absent from everything preview prints; stack files of the wrong shape get a message, never a
traceback; nothing is created."""

import os

import pytest
from pulumi.automation import ConfigValue, errors

from tests.helpers import base_config, demo_group, instances_with_prefix, pulumi_stack

pytestmark = pytest.mark.integration

LB = {"name": "api", "cluster": "itsecret", "type": "lxc", "targets": {"addresses": [{"name": "a",
                                                                                      "address": "198.18.10.201"}]}}
SECRETS = [
    # (key path set with --secret --path, bad secret value, key path in the message, words)
    ("cplb:loadBalancers[0].lxc.authPass", "ab!cdefg", "cplb:loadBalancers[0].lxc.authPass", "pattern"),
    ("cplb:loadBalancers[0].lxc.authPass", "p#ssw{rd}-much-too-long", "cplb:loadBalancers[0].lxc.authPass",
     "at most 8"),
]


def preview_output(stack) -> tuple[bool, str]:
    lines: list[str] = []
    try:
        stack.preview(on_output=lines.append)
        return True, "".join(lines)
    except errors.CommandError as exc:
        return False, "".join(lines) + "\n" + str(exc)


@pytest.mark.parametrize("key,secret,path,words", SECRETS)
def test_a_secret_that_breaks_a_rule_is_named_never_shown(key, secret, path, words):
    lb = {**LB, "lxc": {"replicas": 2, "vip": "198.18.10.61", "authPass": "placeholder"}}
    with pulumi_stack(base_config(loadBalancers=[lb]), prefix="sec") as (project, name, stack):
        stack.set_config(key, ConfigValue(secret, secret=True), path=True)
        with open(os.path.join(project.dir, "stacks", f"Pulumi.{name}.yaml")) as f:
            assert secret not in f.read()  # stored encrypted
        ok, text = preview_output(stack)
        assert not ok, text
        assert path in text and words in text, text[-2000:]
        assert secret not in text, "the secret appears in preview's output"
        assert "Traceback" not in text
        assert instances_with_prefix(name) == {}


def test_a_tsig_secret_that_is_not_base64_is_refused_at_preview():
    lb = {"name": "api", "cluster": "itsecret", "type": "dns",
          "targets": {"addresses": [{"name": "a", "address": "198.18.10.201"}]},
          "dns": {"zone": "cplb.test.", "hostname": "api", "server": "127.0.0.1:5353",
                  "tsig": {"name": "cplb-update", "secret": "c2VjcmV0c2VjcmV0"},
                  "roles": [{"name": "api", "port": 6443, "targetPort": 6443}]}}
    secret = "Zm9v!YmFy-not-base64"
    with pulumi_stack(base_config(loadBalancers=[lb]), prefix="sec") as (_project, name, stack):
        stack.set_config("cplb:loadBalancers[0].dns.tsig.secret", ConfigValue(secret, secret=True), path=True)
        ok, text = preview_output(stack)
        assert not ok and "cplb:loadBalancers[0].dns.tsig.secret" in text and "not valid base64" in text, text[-2000:]
        assert secret not in text and "Traceback" not in text
        assert instances_with_prefix(name) == {}


WRONG_SHAPES = [
    # (raw `config:` entries written into the stack file, words of the message)
    ("  cplb:loadBalancers: " + "[" * 60 + "]" * 60 + "\n", "nested deeper than 32 levels"),
    ("  cplb:loadBalancers:\n    - {name: api, cluster: demo, type: lxc, ports: [{name: api, port: 6443}, "
     "{name: m, port: 8405}]}\n", "haproxy's monitor"),
    ("  cplb:instanceGroups:\n    - {name: api-haproxy, count: 1}\n  cplb:loadBalancers:\n"
     "    - {name: api, cluster: demo, type: lxc}\n", "would both create the Incus instance"),
    ("  cplb:loadBalancers:\n    - {name: api, cluster: demo, type: lxc, targets: {addresses: [{name: a, address: "
     "\"fe80::1%eth0\\nserver x 198.18.10.9:1\"}]}, ipFamilies: [IPv4, IPv6]}\n", "IPv6 scope"),
]


@pytest.mark.parametrize("entries,words", WRONG_SHAPES, ids=[w for _, w in WRONG_SHAPES])
def test_stack_files_of_the_wrong_shape_fail_preview_with_a_message(entries, words):
    with pulumi_stack(base_config(instanceGroups=[demo_group(1, cluster="itshape")]), prefix="shape") as (
            project, name, stack):
        path = os.path.join(project.dir, "stacks", f"Pulumi.{name}.yaml")
        with open(path) as f:
            text = f.read()
        head, _, _ = text.partition("config:")
        with open(path, "w") as f:
            f.write(head + "config:\n  cplb:incus: " + repr_incus() + "\n" + entries)
        ok, out = preview_output(stack)
        assert not ok, out
        assert words in out and "Traceback" not in out, out[-2000:]
        assert instances_with_prefix(name) == {}


def repr_incus() -> str:
    import json

    return json.dumps(base_config()["incus"])
