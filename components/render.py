"""Rendering of every file and script that lands on a node, from the Jinja2 templates in templates/.

StrictUndefined: a missing value is an error, never an empty line. `q` shell-quotes a value. Rendering is
pure: the same context gives the same bytes, so two evaluations of the program give identical inputs.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _yes_no(value: bool) -> str:
    return "y" if value else "n"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 -- shell, INI and unit files, not HTML: values are quoted with |q
        # Bash's ${#array[@]} would open a Jinja comment: templates use {## ... ##} for comments.
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    env.filters["yn"] = _yes_no
    return env


_ENV = _environment()


def render(template: str, **context: Any) -> str:
    """Render templates/<template> with `context`."""
    return _ENV.get_template(template).render(**context)


def sha256(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()
