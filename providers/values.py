"""Comparing provider inputs as plain data, and reading the times Go programs (Incus, Pulumi) write."""

from __future__ import annotations

import datetime
from typing import Any, Optional


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


def unix_time(rfc3339: str) -> Optional[float]:
    """An RFC 3339 time as Go writes it (nanoseconds, `Z` or an offset) as a Unix time; None when empty or unreadable
    (Go's zero time, 0001-01-01, included)."""
    raw = str(rfc3339 or "")
    if not raw or raw.startswith("0001-"):
        return None
    raw = raw.replace("Z", "+00:00")
    if "." in raw:  # Python reads at most microseconds
        head, _, tail = raw.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        raw = f"{head}.{digits[:6]}{tail[len(digits):]}"
    try:
        return datetime.datetime.fromisoformat(raw).timestamp()
    except ValueError:
        return None
