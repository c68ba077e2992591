"""docs/config.schema.json and docs/config.md are current; `make validate` speaks like preview."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TOOLS = os.path.join(ROOT, "scripts", "config_tools.py")


def run(*args):
    return subprocess.run([sys.executable, TOOLS, *args], capture_output=True, text=True, cwd=ROOT)


def test_schema_is_current():
    r = run("schema", "--check")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("stack", ["dev", "ovn", "keepalived", "dns"])
def test_example_stacks_validate(stack):
    r = run("validate", stack)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout


def test_validate_reports_like_preview(tmp_path, monkeypatch):
    import spec

    bad = {"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc", "ports": [{"name": "api", "port": 0}]}]}
    path = os.path.join(ROOT, "stacks", "Pulumi.validate-test.yaml")
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump({"config": {f"cplb:{k}": v for k, v in bad.items()}}, f)
    try:
        r = run("validate", "validate-test")
    finally:
        os.remove(path)
    assert r.returncode == 1
    with pytest.raises(spec.SpecError) as exc:
        spec.parse(bad)
    assert str(exc.value) in r.stderr  # the very message preview prints
    assert "cplb:loadBalancers[0].ports[0].port" in r.stderr


def test_schema_accepts_the_example_stacks():
    import jsonschema
    import yaml

    schema = json.load(open(os.path.join(ROOT, "docs", "config.schema.json")))
    for name in ("dev", "ovn", "keepalived", "dns"):
        with open(os.path.join(ROOT, "stacks", f"Pulumi.{name}.yaml")) as f:
            jsonschema.validate(yaml.safe_load(f), schema)
