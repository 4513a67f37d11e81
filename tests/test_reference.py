"""The configuration reference is generated from the models (components/config.py) into docs/configuration.md's tables
and Pulumi.yaml's comments (components/reference.py, `make reference`). These tests fail when the committed
files differ from what the generator makes, and check what it makes: every key of the models documented in
both, no key the program refuses, tables that GitHub's renderer shows as tables."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from components import reference
from components.config import KNOWN_KEYS, NAMESPACE, OBJECT_KEYS, SECRET_KEYS, NodeConfig, StorageConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DOC = (ROOT / reference.CONFIGURATION_DOC).read_text()
CONFIG_SECTION = CONFIG_DOC[CONFIG_DOC.index("## Configuration"):CONFIG_DOC.index("### What is refused")]
PULUMI_YAML = (ROOT / "Pulumi.yaml").read_text()
PULUMI_YAML_COMMENTS = [line for line in PULUMI_YAML.splitlines() if line.startswith("#")]
CMARK = shutil.which("cmark-gfm")


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key of the model as a dotted path, with `[]` for the entries of a list of objects."""
    paths = set()
    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        paths.add(path)
        entry = get_args(field.annotation)[0] if get_args(field.annotation) else None
        if isinstance(entry, type) and issubclass(entry, BaseModel):
            paths |= model_keys(entry, f"{path}[].")
    return paths


EXPECTED = {f"{obj}.{key}" for obj, (model, _) in OBJECT_KEYS.items() for key in model_keys(model)} | set(SECRET_KEYS)


def readme_keys() -> list[str]:
    """The key of every row of the configuration reference's tables, as a dotted path."""
    rows = []
    section = nested = ""
    for line in CONFIG_SECTION.splitlines():
        if heading := re.match(r"### (`pgbackup:(\w+)`|Secrets)", line):
            section, nested = (f"{heading[2]}." if heading[2] else ""), ""
        elif each := re.fullmatch(r"Each entry of `([\w.]+)`:", line):
            nested = f"{each[1]}[]."
        elif line.startswith("|---") or line == "| key | default | meaning |":
            continue
        elif cell := re.match(r"\| `([\w.]+)` \|", line):
            rows.append(f"{section if '.' not in cell[1] or nested else ''}{nested}{cell[1]}")
        elif not line:
            continue
        else:
            nested = ""
    return rows


def pulumi_yaml_keys() -> list[str]:
    """The key of every line of Pulumi.yaml's comment reference, as a dotted path."""
    keys = []
    obj = parent = ""
    for line in PULUMI_YAML_COMMENTS:  # a key at 3 spaces (top level), 5 (in an object), 7 (in a list's entry)
        if top := re.match(rf"#   {NAMESPACE}:(\w+) \((object|secret)", line):
            obj = f"{top[1]}." if top[2] == "object" else ""
            keys += [] if obj else [top[1]]
        elif key := re.match(r"#     (\w+)( \(.*?\))?: ", line):
            parent = f"{key[1]}[]."
            keys.append(f"{obj}{key[1]}")
        elif entry := re.match(r"#       (\w+)( \(.*?\))?: ", line):
            keys.append(f"{obj}{parent}{entry[1]}")
    return keys


def test_the_committed_reference_is_what_the_models_generate() -> None:
    diff = reference.drift()
    assert not diff, f"{diff}\ndocs/configuration.md / Pulumi.yaml differ from the models' reference: run `make reference`"


def test_the_check_fails_with_the_diff_when_a_description_changes(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(StorageConfig.model_fields["bucket"], "description", "the `bucket`, renamed | piped")
    assert reference.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "-| `bucket` | — | bucket name (B2: 6-63 of `a-z0-9-`) |" in out
    assert "+| `bucket` | — | the `bucket`, renamed \\| piped |" in out
    assert "+#     bucket: the bucket, renamed | piped" in out
    assert "run `make reference`" in out


def test_a_field_without_description_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StorageConfig.model_fields["create"], "description", None)
    with pytest.raises(reference.ReferenceError, match=r"StorageConfig\.create: no description"):
        reference.readme_blocks()


def test_missing_markers_are_named() -> None:
    text = re.sub(r"<!-- (BEGIN|END) generated: secrets[^\n]*\n", "", CONFIG_DOC)
    begin = "<!-- BEGIN generated: secrets; edit components/config.py and run `make reference` -->"
    with pytest.raises(reference.ReferenceError, match=re.escape(f"docs/configuration.md: no block 'secrets': put the lines "
                                                                 f"'{begin}'")):
        reference.fill(text, reference.readme_blocks(), reference._html, "\n", "docs/configuration.md")


def test_every_key_is_in_the_configuration_reference_once_and_no_other() -> None:
    rows = readme_keys()
    assert sorted(rows) == sorted(EXPECTED), (
        f"missing: {sorted(EXPECTED - set(rows))}, unknown: {sorted(set(rows) - EXPECTED)}")


def test_every_key_is_in_pulumi_yaml_once_and_no_other() -> None:
    keys = pulumi_yaml_keys()
    assert sorted(keys) == sorted(EXPECTED), (
        f"missing: {sorted(EXPECTED - set(keys))}, unknown: {sorted(set(keys) - EXPECTED)}")


def test_pulumi_yaml_declares_the_required_secrets() -> None:
    config = yaml.safe_load(PULUMI_YAML)["config"]
    required = {f"{NAMESPACE}:{name}" for name, secret in SECRET_KEYS.items() if secret.required}
    assert set(config) == required == {"pgbackup:sshPrivateKey"}
    assert all(entry["secret"] is True and entry["type"] == "string" and entry["description"]
               for entry in config.values())
    assert all(len(line) <= reference.WIDTH for line in PULUMI_YAML_COMMENTS)


def test_top_level_keys_are_documented() -> None:
    for key in KNOWN_KEYS:
        assert f"{NAMESPACE}:{key}" in CONFIG_DOC, key
        assert any(line.startswith(f"#   {NAMESPACE}:{key} (") for line in PULUMI_YAML_COMMENTS), key


class _Tables(HTMLParser):
    """The rows of every table of an HTML page, each a list of its cells' text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in {"td", "th"}:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in {"td", "th"} and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def rendered_rows(markdown: str) -> list[list[str]]:
    """Every row of every table GitHub's renderer (cmark-gfm) makes of `markdown`, as its cells' text."""
    assert CMARK, "cmark-gfm not found (make setup installs it)"
    html = subprocess.run([CMARK, "-e", "table"], input=markdown, capture_output=True, text=True, check=True).stdout
    parser = _Tables()
    parser.feed(html)
    assert len(parser.tables) == html.count("<table>")
    return [row for table in parser.tables for row in table if row != ["key", "default", "meaning"]]


def test_the_configuration_reference_renders_the_generated_tables_as_tables() -> None:
    """Rendered, each generated row is a row of three cells whose meaning is the model's description as text:
    the markers break no table, a `|` in a text splits no cell, the Markdown inside the cells is rendered."""
    section = CONFIG_SECTION[CONFIG_SECTION.index("<!-- BEGIN generated"):]
    rows = rendered_rows(section)
    assert all(len(row) == 3 for row in rows), [row for row in rows if len(row) != 3]
    models: list[type[BaseModel]] = [*(model for model, _ in OBJECT_KEYS.values()), NodeConfig]
    descriptions = [reference.plain(field.description or "") for model in models
                    for field in model.model_fields.values()]
    descriptions += [reference.plain(secret.meaning) for secret in SECRET_KEYS.values()]
    assert sorted(row[2] for row in rows) == sorted(descriptions)
    assert len(rows) == len(readme_keys()) == len(EXPECTED)


def test_the_rendered_check_sees_a_stray_pipe() -> None:
    """What the test above would see of an unescaped `|` in a meaning: the text cut at it."""
    assert rendered_rows("| key | default | meaning |\n|---|---|---|\n| `x` | — | a \\| b |\n| `y` | — | a | b |\n") == [
        ["x", "—", "a | b"], ["y", "—", "a"]]
