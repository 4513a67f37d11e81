"""`make lab` (python -m lab.driver up) and `python -m lab.driver outputs` print the stack outputs for a person:
YAML in which the alert rules and the Grafana dashboard are blocks of their own lines, not one escaped string,
and which loads back to the very outputs; `--json` prints the JSON the driver keeps."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.dashboard import grafana_dashboard
from components.monitoring import alert_rules
from lab import driver
from tests.harness import stack_config
from tests.test_hostile import valid_settings


@pytest.fixture(scope="module")
def outputs() -> dict[str, Any]:
    settings = valid_settings(stack_config(retention={"full": 4, "monthly": 12}))
    return {"alertRules": alert_rules(settings), "grafanaDashboard": grafana_dashboard(settings),
            "cipherPass": "[secret]", "stanza": "main", "lastBackup": None, "nodes": [{"name": "pg1", "role": "leader"}],
            "stanzaStatus": {"code": 0, "message": "ok"}}


def printed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
            outputs: dict[str, Any], *args: str) -> str:
    (tmp_path / "outputs.json").write_text(json.dumps(outputs, indent=2, sort_keys=True))
    monkeypatch.setattr(driver, "lab_env", lambda: (tmp_path, {}))
    monkeypatch.setattr(sys, "argv", ["lab.driver", "outputs", *args])
    driver.main()
    return capsys.readouterr().out


def test_the_outputs_print_as_yaml_with_the_rules_and_the_dashboard_as_blocks(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        outputs: dict[str, Any]) -> None:
    out = printed(monkeypatch, capsys, tmp_path, outputs)
    assert yaml.safe_load(out) == outputs
    assert "alertRules: |" in out
    assert "grafanaDashboard: |" in out
    # the rules' own lines, indented under the key: as readable as the rules file itself
    rule_lines = outputs["alertRules"].splitlines()
    assert len(rule_lines) > 50
    assert all(f"\n  {line}".rstrip() in out for line in rule_lines)
    assert "\\n" not in out  # no line escaped into another


def test_json_on_request(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                         outputs: dict[str, Any]) -> None:
    out = printed(monkeypatch, capsys, tmp_path, outputs, "--json")
    assert json.loads(out) == outputs


def test_a_text_that_yaml_cannot_block_still_loads_back() -> None:
    """Trailing spaces, a leading blank line, a lone line: whatever style YAML picks, the values come back."""
    odd = {"a": "x  \ny\n", "b": "\n\nz", "c": "one line", "d": " lead\nnext", "e": ""}
    assert yaml.safe_load(driver.readable(odd)) == odd
