"""Jinja2 rendering of the config files in templates/. Values are validated before they get here."""

from __future__ import annotations

import os
from functools import lru_cache

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates")


@lru_cache(maxsize=1)
def _env():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(template: str, **values) -> str:
    text = _env().get_template(template).render(**values)
    # Last line of defence: a value that slipped through validation must not add lines or blocks.
    for key, value in values.items():
        if isinstance(value, str) and any(c in value for c in "\n\r{}\"#"):
            raise ValueError(f"refusing to render {template}: value {key!r} holds config syntax")
    return text
