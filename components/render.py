"""Rendering of every file and script that lands on a node, from the Jinja2 templates in templates/.

StrictUndefined: a missing value is an error, never an empty line. Every value is escaped for the format
it lands in, by a filter: `q` shell-quotes, `systemd` (units, tmpfiles.d) doubles `%` and refuses control
characters, `ini` (pgbackrest.conf) refuses control characters and edge whitespace, `yaml` and `tojson` go
through their dumpers, `promql_string` quotes a PromQL string. The configuration has already refused what
these refuse (components/config.py); the filters are the last line of defence. Rendering is pure: the same
context gives the same bytes, so two evaluations of the program give identical inputs.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import jinja2
import yaml

from components.text import unsafe_character

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _yes_no(value: bool) -> str:
    return "y" if value else "n"


class RenderError(ValueError):
    """A value cannot be written safely into a file of this format. The value itself is never shown."""


def _one_line(value: Any, where: str) -> str:
    text = str(value)
    found = unsafe_character(text)
    if found is not None:
        raise RenderError(f"a value for {where} holds a control character or line break ({found})")
    return text


def systemd_value(value: Any) -> str:
    """A value in a systemd unit or tmpfiles.d line: one line, and `%` doubled so that systemd reads it as
    a literal `%`, not as a specifier such as %n (systemd.unit(5), "Specifiers")."""
    return _one_line(value, "a systemd unit").replace("%", "%%")


def ini_value(value: Any) -> str:
    """A value in pgbackrest.conf as pgBackRest reads it: one line (a line feed would start a new option),
    and no leading or trailing whitespace (pgBackRest trims it, so it would read another value)."""
    text = _one_line(value, "pgbackrest.conf")
    if text != text.strip():
        raise RenderError("a value for pgbackrest.conf starts or ends with whitespace (pgBackRest would trim it)")
    return text


def yaml_value(value: Any) -> str:
    """A YAML scalar through the YAML dumper: plain when YAML allows it, quoted and escaped otherwise."""
    dumped: str = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, allow_unicode=False)
    return dumped.removesuffix("\n...\n").removesuffix("\n")


def promql_string(value: Any) -> str:
    """A PromQL string literal (double-quoted, Go escapes: JSON's are a subset)."""
    return json.dumps(_one_line(value, "a Prometheus expression"), ensure_ascii=True)


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
    env.filters["systemd"] = systemd_value
    env.filters["ini"] = ini_value
    env.filters["yaml"] = yaml_value
    env.filters["promql_string"] = promql_string
    return env


_ENV = _environment()


@dataclass(frozen=True)
class Context:
    """The values a template sees: a frozen dataclass per kind of template (components/context.py)."""

    def values(self) -> dict[str, Any]:
        """The fields by name (not copied: a template reads `node.name`, `paths.config`, ...)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def render(template: str, context: Context) -> str:
    """Render templates/<template> with the fields of `context`."""
    return render_values(template, context.values())


def render_values(template: str, values: Mapping[str, Any]) -> str:
    """Render templates/<template> with `values`, untyped: for a test that renders one template in a sandbox
    with only the values it reads. The program renders with typed contexts (`render`)."""
    return _ENV.get_template(template).render(values)


def sha256(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()
