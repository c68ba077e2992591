"""The catalogue of invalid configs (tests/unit/test_spec.py), each through a real `pulumi preview`: every one is
rejected with the stack-config key path and what is allowed, and none creates anything."""

import pytest
from pulumi.automation import errors

from tests.helpers import base_config, instances_with_prefix, pulumi_stack
from tests.unit.test_spec import INVALID

pytestmark = pytest.mark.integration


def test_every_invalid_config_fails_real_preview_with_its_key_path():
    assert len(INVALID) >= 40
    with pulumi_stack(base_config()) as (project, name, stack):
        failures = []
        for i, (values, path, words) in enumerate(INVALID):
            project.write_stack_config(name, {**base_config(), **values})
            try:
                stack.preview(on_output=lambda _: None)
                failures.append(f"case {i}: preview succeeded")
                continue
            except errors.CommandError as exc:
                text = str(exc)
            # The message as preview prints it: the key path, then what is wrong.
            if path not in text or words not in text:
                failures.append(f"case {i}: expected {path!r} and {words!r} in:\n{text[-1500:]}")
            if "Traceback" in text:
                failures.append(f"case {i}: a traceback instead of a config error")
        assert failures == [], "\n".join(failures)
        assert instances_with_prefix(name) == {}
        resources = stack.export_stack().deployment.get("resources") or []
        assert [r for r in resources if not r["type"].startswith("pulumi:")] == []
        print(f"\n{len(INVALID)} invalid configs rejected by a real preview, nothing created")
