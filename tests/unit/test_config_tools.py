"""docs/config.schema.json and docs/config.md are current; `make validate` speaks like preview."""

import glob
import json
import os
import re
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


STACK_FILES = sorted(glob.glob(os.path.join(ROOT, "stacks", "Pulumi.*.yaml")))


@pytest.mark.parametrize("path", STACK_FILES, ids=[os.path.basename(p) for p in STACK_FILES])
def test_every_stack_file_validates(path):
    stack = os.path.basename(path)[len("Pulumi."):-len(".yaml")]
    r = run("validate", stack)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout


def test_validate_reports_like_preview(tmp_path):
    import spec
    import yaml

    bad = {"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc", "ports": [{"name": "api", "port": 0}]}]}
    path = tmp_path / "Pulumi.validate-test.yaml"  # a stack file outside the working tree: no test writes there
    path.write_text(yaml.safe_dump({"config": {f"cplb:{k}": v for k, v in bad.items()}}))
    r = run("validate", str(path))
    assert r.returncode == 1
    with pytest.raises(spec.SpecError) as exc:
        spec.parse(bad)
    assert str(exc.value) in r.stderr  # the very message preview prints
    assert "cplb:loadBalancers[0].ports[0].port" in r.stderr


def test_schema_accepts_the_example_stacks():
    import jsonschema
    import yaml

    schema = json.load(open(os.path.join(ROOT, "docs", "config.schema.json")))
    for path in STACK_FILES:
        with open(path) as f:
            jsonschema.validate(yaml.safe_load(f), schema)


def test_invalid_stack_fails_schema_with_the_preview_path():
    import jsonschema
    import spec

    schema = json.load(open(os.path.join(ROOT, "docs", "config.schema.json")))
    bad = {"loadBalancers": [{"name": "api", "cluster": "demo", "type": "lxc", "ports": [{"name": "api", "port": 70000}]}]}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(
        {"config": {f"cplb:{k}": v for k, v in bad.items()}}))
    assert errors
    path = errors[0].absolute_path
    # ['config', 'cplb:loadBalancers', 0, 'ports', 0, 'port'] is what preview calls cplb:loadBalancers[0].ports[0].port
    as_preview = path[1] + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in list(path)[2:])
    with pytest.raises(spec.SpecError) as exc:
        spec.parse(bad)
    assert as_preview == "cplb:loadBalancers[0].ports[0].port" and as_preview in str(exc.value)


def test_workflow_is_yaml_and_runs_only_repository_commands():
    import re

    import yaml

    path = os.path.join(ROOT, ".github", "workflows", "preview.yml")
    wf = yaml.safe_load(open(path))
    runs = "\n".join(step.get("run", "") for job in wf["jobs"].values() for step in job["steps"])
    scripts = set(re.findall(r"(scripts/[A-Za-z0-9_.-]+)", runs))
    assert {"scripts/setup", "scripts/preview-summary", "scripts/config_tools.py"} <= scripts
    for s in scripts:
        assert os.path.exists(os.path.join(ROOT, s)), s


BOMB = "\n".join(["config:", "  cplb:loadBalancers:", "    - &a0 [x, x, x, x, x, x, x, x, x, x]"]
                 + [f"    - &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, "
                    f"*a{i-1}]" for i in range(1, 9)]) + "\n"
WRONG_SHAPES = [
    # (stack file text, words of the message)
    ("- config\n- cplb:loadBalancers\n", "a stack file is a map with a `config:` key, not a list"),
    ("config:\n  - cplb:loadBalancers\n", "`config:` must be a map"),
    ("config:\n  7: x\n", "config key 7 is not a string"),
    ("config:\n  cplb:loadBalancers: " + "[" * 200 + "]" * 200 + "\n", "nested deeper than 32 levels"),
    (BOMB, "more than 100000 values once YAML aliases are expanded"),
    ("config:\n  cplb:loadBalancers: [\n", "not valid YAML"),
    ("config:\n  cplb:loadBalancers:\n    - {1: 2}\n", "key 1 is not a string"),
    ("config:\n  cplb:: [1]\n", "unknown key"),
    ("config:\n  cplb:loadBalancers:\n    - name: api\n      cluster: demo\n      type: lxc\n"
     "      lxc: {replicas: 2, vip: 198.18.10.5, authPass: 'ab!cdefg'}\n", "cplb:loadBalancers[0].lxc.authPass"),
]


@pytest.mark.parametrize("text,words", WRONG_SHAPES, ids=[w[:30] for _, w in WRONG_SHAPES])
def test_validate_refuses_a_stack_file_of_the_wrong_shape_without_a_traceback(text, words, tmp_path):
    path = tmp_path / "Pulumi.shape-test.yaml"
    path.write_text(text)
    # The bound is a hang guard, not a timing assertion: an unbounded alias bomb takes minutes and gigabytes.
    r = subprocess.run([sys.executable, TOOLS, "validate", str(path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "ab!cdefg" not in r.stdout + r.stderr


# A path the README or docs name, in backquotes: `stacks/Pulumi.oci.yaml`, `scripts/incus7-up --cluster`.
NAMED_PATH = re.compile(r"`((?:stacks|scripts|bench|docs|tests|templates|images|components|providers)/[\w./+-]+)(?=[`\s])")


def test_every_file_the_readme_and_docs_name_exists():
    documents = [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md"))]
    missing = set()
    for document in documents:
        with open(document) as f:
            for named in NAMED_PATH.findall(f.read()):
                path = named.split("::")[0].rstrip(".")
                if not glob.glob(os.path.join(ROOT, path)):
                    missing.add(f"{os.path.relpath(document, ROOT)}: {named}")
    assert not missing, sorted(missing)


def shell_scripts():
    for path in sorted(glob.glob(os.path.join(ROOT, "scripts", "**", "*"), recursive=True) + [os.path.join(ROOT, ".ci", "run")]):
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                text = f.read()
            if text.startswith("#!") and "sh" in text.splitlines()[0] or path.endswith(".sh"):
                yield os.path.relpath(path, ROOT), text


def test_no_pipe_into_a_reader_that_stops_early_under_pipefail():
    """`cmd | head -n1` under `set -o pipefail` fails with 141 whenever cmd writes after head has gone (a CI run
    failed so on `runc --version`). `sed -n 1p` reads everything and leaves the status alone."""
    offenders = [f"{path}:{n}: {line.strip()}" for path, text in shell_scripts()
                 for n, line in enumerate(text.splitlines(), 1)
                 if re.search(r"\|\s*head\b", line) and not line.lstrip().startswith("#")]
    assert offenders == [], offenders
    assert any(path == "scripts/setup" for path, _ in shell_scripts())
