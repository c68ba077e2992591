"""Comparing provider inputs as plain data."""

from __future__ import annotations

from typing import Any


def plain(value: Any) -> Any:
    """Pulumi hands inputs back as its own containers, and numbers as floats: 6443 and 6443.0 are the same
    port. Normalize both sides of a diff with this before comparing."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float)) else str(value)
