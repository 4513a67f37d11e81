"""The configuration reference, generated from the models in components/config.py: each field's
`description` (the reference's meaning text, Markdown), its default (or the one `doc(default=...)` shows) and
`doc(short=...)` for Pulumi.yaml; the secrets from `SECRET_KEYS`. It fills the blocks between
`BEGIN generated` / `END generated` markers in docs/configuration.md (its tables) and in Pulumi.yaml
(the comment block and `config:`); the text around them stays hand-written.

    python -m components.reference           # rewrite both files (make reference)
    python -m components.reference --check   # print the diff and exit 1 when a file differs
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from components.config import NAMESPACE, OBJECT_KEYS, SECRET_KEYS, SecretKey

ROOT = Path(__file__).resolve().parent.parent
FIX_COMMAND = "make reference"
CONFIGURATION_DOC = "docs/configuration.md"  # the generated tables live here
WIDTH = 120  # Pulumi.yaml's comment lines, like the code's
NONE = "—"  # the reference's "no default"
OPTIONAL_BLOCK = "optional objects"
SECRETS_BLOCK = "secrets"
YAML_BLOCK = "configuration reference"


class ReferenceError(Exception):
    """A model field without a description, or a file without the markers of a block."""


@dataclass(frozen=True)
class Key:
    """One configuration key as the reference shows it."""

    name: str  # as written in the stack (camelCase)
    default: str  # Markdown; NONE when there is none
    meaning: str  # Markdown (docs/configuration.md)
    short: str  # plain text (Pulumi.yaml)
    entries: tuple[Key, ...] = ()  # the keys of each entry, for a list of objects (cluster.nodes)


def plain(markdown: str) -> str:
    """Markdown as a comment line shows it: links as their text, no code or bold marks."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown).replace("**", "").replace("`", "")


def _extra(field: FieldInfo, name: str) -> str | None:
    extra = field.json_schema_extra
    value = extra.get(name) if isinstance(extra, dict) else None
    if value is not None and not isinstance(value, str):
        raise ReferenceError(f"{name}: expected text, got {value!r}")
    return value


def _default(field: FieldInfo) -> str:
    shown = _extra(field, "shownDefault")
    if shown is not None:
        return shown
    value = field.default
    if value is PydanticUndefined or value is None:
        return NONE
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _entry_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of each entry of a list-of-objects field, else None."""
    args = get_args(field.annotation)
    if get_origin(field.annotation) is list and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def keys(model: type[BaseModel]) -> tuple[Key, ...]:
    """The model's keys, in the model's order."""
    result = []
    for name, field in model.model_fields.items():
        if not field.description:
            raise ReferenceError(f"{model.__name__}.{name}: no description (the configuration reference is made "
                                 "from them: Field(description=...))")
        entry = _entry_model(field)
        result.append(Key(name=field.alias or name, default=_default(field), meaning=field.description,
                          short=plain(_extra(field, "short") or field.description),
                          entries=keys(entry) if entry else ()))
    return tuple(result)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | {_cell(default)} | {_cell(meaning)} |" for key, default, meaning in rows]
    return lines


def _object_tables(objects: list[str]) -> list[str]:
    """One table of the objects' keys (prefixed with the object when there are several), then one table per
    list of objects among them."""
    prefix = len(objects) > 1
    rows: list[tuple[str, str, str]] = []
    nested: list[str] = []
    for obj in objects:
        for key in keys(OBJECT_KEYS[obj][0]):
            name = f"{obj}.{key.name}" if prefix else key.name
            rows.append((name, key.default, key.meaning))
            if key.entries:
                nested += ["", f"Each entry of `{name}`:", ""]
                nested += _table([(entry.name, entry.default, entry.meaning) for entry in key.entries])
    return _table(rows) + nested


def readme_blocks() -> dict[str, str]:
    """docs/configuration.md's generated blocks by name: one per required object (its heading and tables), one for the
    optional objects together, one for the secrets (a table under the hand-written "Secrets" heading)."""
    blocks: dict[str, list[str]] = {}
    for obj, (_, required) in OBJECT_KEYS.items():
        if required:
            blocks[f"{NAMESPACE}:{obj}"] = [f"### `{NAMESPACE}:{obj}` (required)", "", *_object_tables([obj])]
    optional = [obj for obj, (_, required) in OBJECT_KEYS.items() if not required]
    heading = ", ".join(f"`{NAMESPACE}:{obj}`" for obj in optional)
    blocks[OPTIONAL_BLOCK] = [f"### {heading} (optional)", "", *_object_tables(optional)]
    blocks[SECRETS_BLOCK] = _table([(name, "required" if secret.required else secret.when, secret.meaning)
                                    for name, secret in SECRET_KEYS.items()])
    return {name: "\n".join(lines) for name, lines in blocks.items()}


def _comment(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent="#" + " " * indent, subsequent_indent="#" + " " * (indent + 6),
                         break_long_words=False, break_on_hyphens=False)


def _yaml_keys(entries: tuple[Key, ...], indent: int) -> list[str]:
    lines = []
    for key in entries:
        default = "" if key.default == NONE else f" ({plain(key.default)})"
        lines += _comment(f"{key.name}{default}: {key.short}", indent)
        lines += _yaml_keys(key.entries, indent + 2)
    return lines


def _secret_text(secret: SecretKey) -> str:
    return plain(secret.short or secret.meaning)


def pulumi_yaml_block() -> str:
    """Pulumi.yaml's generated block: every key as a comment, then `config:` declaring the required secrets
    (Pulumi asks for a declared key without a default in every stack; the objects are validated by the program,
    since Pulumi's `config:` types no objects)."""
    lines = []
    for obj, (model, required) in OBJECT_KEYS.items():
        lines.append(f"#   {NAMESPACE}:{obj} (object{', required' if required else ''}):")
        lines += _yaml_keys(keys(model), 5)
    for name, secret in SECRET_KEYS.items():
        when = "required; declared in config: below" if secret.required else plain(secret.when)
        lines += _comment(f"{NAMESPACE}:{name} (secret, {when}): {_secret_text(secret)}", 3)
    declared = {f"{NAMESPACE}:{name}": {"type": "string", "secret": True, "description": _secret_text(secret)}
                for name, secret in SECRET_KEYS.items() if secret.required}
    config = yaml.safe_dump({"config": declared}, sort_keys=False, width=WIDTH, allow_unicode=True)
    return "\n".join(lines) + "\n" + config.rstrip("\n")


def _markers(comment: Callable[[str], str], name: str) -> tuple[str, str]:
    return (comment(f"BEGIN generated: {name}; edit components/config.py and run `{FIX_COMMAND}`"),
            comment(f"END generated: {name}"))


def _html(text: str) -> str:
    return f"<!-- {text} -->"


def _hash(text: str) -> str:
    return f"# {text}"


def fill(text: str, blocks: dict[str, str], comment: Callable[[str], str], separator: str, file: str) -> str:
    """`text` with each block's content between its markers replaced. Raises ReferenceError naming a block
    whose markers are missing, or a marked block no longer generated."""
    pre, post = (re.escape(part) for part in comment("\0").split("\0"))
    pattern = re.compile(
        rf"{pre}BEGIN generated: (?P<name>[^;\n]+?)(?:;[^\n]*)?{post}\n.*?{pre}END generated: (?P=name){post}(?=\n)",
        re.DOTALL)
    present = [match["name"] for match in pattern.finditer(text)]
    missing = [name for name in blocks if name not in present]
    unknown = [name for name in present if name not in blocks]
    if missing or unknown:
        raise ReferenceError(f"{file}: " + "; ".join(
            [f"no block {name!r}: put the lines {' and '.join(map(repr, _markers(comment, name)))} where it belongs"
             for name in missing]
            + [f"block {name!r} is not generated any more: remove its markers and text" for name in unknown]))

    def replace(match: re.Match[str]) -> str:
        begin, end = _markers(comment, match["name"])
        return f"{begin}\n{separator}{blocks[match['name']]}\n{separator}{end}"

    return pattern.sub(replace, text)


def generated() -> dict[Path, str]:
    """What docs/configuration.md and Pulumi.yaml should hold."""
    readme, project = ROOT / CONFIGURATION_DOC, ROOT / "Pulumi.yaml"
    return {
        readme: fill(readme.read_text(), readme_blocks(), _html, "\n", CONFIGURATION_DOC),
        project: fill(project.read_text(), {YAML_BLOCK: pulumi_yaml_block()}, _hash, "", project.name),
    }


def drift() -> str:
    """The unified diff from the committed files to the generated ones ('' when they agree)."""
    return "".join(
        "".join(difflib.unified_diff(path.read_text().splitlines(keepends=True), text.splitlines(keepends=True),
                                     f"{path.relative_to(ROOT)} (committed)", f"{path.relative_to(ROOT)} (generated)"))
        for path, text in generated().items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print the diff and exit 1 when a file differs")
    args = parser.parse_args(argv)
    if args.check:
        diff = drift()
        if diff:
            print(f"{diff}\nThe configuration reference differs from the models: run `{FIX_COMMAND}`")
            return 1
        return 0
    for path, text in generated().items():
        if path.read_text() != text:
            path.write_text(text)
            print(f"rewrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
