"""The configuration reference exists in three places: the models (components/config.py), the README's
tables and Pulumi.yaml's comments. These tests fail when one of them names a key the others lack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from components.config import KNOWN_KEYS, OBJECT_KEYS, NodeConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONFIG_SECTION = README[README.index("## Configuration"):README.index("### Storage credentials")]
PULUMI_YAML_COMMENTS = "\n".join(
    line for line in (ROOT / "Pulumi.yaml").read_text().splitlines() if line.startswith("#")
)


def aliases(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def documented_keys() -> set[tuple[str, str]]:
    """(object, key) of every row of the README's configuration tables."""
    rows: set[tuple[str, str]] = set()
    section = ""
    for line in CONFIG_SECTION.splitlines():
        heading = re.match(r"### `pgbackup:(\w+)`", line)
        if heading:
            section = heading[1]
        cell = re.match(r"\| `([\w.]+)`(?: / `(\w+)`)? \|", line)
        if cell:
            obj, _, name = cell[1].rpartition(".")
            rows.add((obj or section, name))
            if cell[2]:  # "`pgbackrest.compressType` / `compressLevel`": the second key of the same object
                rows.add((obj or section, cell[2]))
    return rows


@pytest.mark.parametrize("obj", list(OBJECT_KEYS))
def test_every_key_of_the_models_is_in_the_readme_and_pulumi_yaml(obj: str) -> None:
    model = OBJECT_KEYS[obj][0]
    rows = documented_keys()
    missing_readme = [key for key in aliases(model) if (obj, key) not in rows]
    assert not missing_readme, f"README's configuration tables lack pgbackup:{obj}.{missing_readme}"
    comment = PULUMI_YAML_COMMENTS[PULUMI_YAML_COMMENTS.index(f"pgbackup:{obj} "):]
    comment = comment[:comment.index("#   pgbackup:", 1)] if "#   pgbackup:" in comment[1:] else comment
    missing_yaml = [key for key in aliases(model) if not re.search(rf"\b{key}\b", comment)]
    assert not missing_yaml, f"Pulumi.yaml's comment on pgbackup:{obj} lacks {missing_yaml}"


def test_every_documented_key_exists() -> None:
    known = {(obj, key) for obj, (model, _) in OBJECT_KEYS.items() for key in aliases(model)}
    unknown = sorted(documented_keys() - known)
    assert not unknown, f"the README documents keys the program refuses: {unknown}"


def test_node_keys_and_top_level_keys_are_documented() -> None:
    for key in aliases(NodeConfig):
        assert re.search(rf"\b{key}\b", PULUMI_YAML_COMMENTS), key
        assert f"{key}" in CONFIG_SECTION, key
    for key in KNOWN_KEYS:
        assert f"pgbackup:{key}" in README, key
        assert f"pgbackup:{key}" in PULUMI_YAML_COMMENTS or f"pgbackup:{key}:" in (ROOT / "Pulumi.yaml").read_text()
