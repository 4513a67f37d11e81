"""The verification run for real (issue 26): the rendered program, by python, in the node sandbox of the adversary
tests (pgbackup_testkit/adversary.py), against stand-ins for pgBackRest (`info`, `verify`'s text output, `repo-ls`
of the archive) and psql: pgBackRest's outputs, a gap in the archive, damaged sets, a command failing. What it
found is read back from its exit status, its state file and the metrics `publish` (root) makes of it."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.context import node_context as template_context
from components.proofs import verify_context
from components.render import render
from pgbackup_testkit.adversary import NodeSandbox
from pgbackup_testkit.standins import Binaries
from tests.test_hostile import valid_settings
from tests.test_proofs import DAMAGED, HEALTHY

DB = {"id": 1, "repo-key": 1}
INFO = [{"name": "main", "status": {"code": 0},
         "archive": [{"id": "15-1", "min": "000000010000000000000002", "max": "000000010000000000000006",
                      "database": DB}],
         "backup": [{"label": "20261126-070000F", "type": "full", "timestamp": {"start": 1, "stop": 2},
                     "archive": {"start": "000000010000000000000002", "stop": "000000010000000000000003"},
                     "database": DB}]}]


def listing(*numbers: int) -> str:
    """`pgbackrest repo-ls --recurse --output=json` of archive/main/15-1 holding these segments of timeline 1."""
    return json.dumps({".": {"type": "path"}, "0000000100000000": {"type": "path"}, **{
        f"0000000100000000/0000000100000000000000{n:02X}-{'ab' * 20}.gz": {"type": "file", "size": 100}
        for n in numbers}})


class Verification:
    def __init__(self, box: NodeSandbox) -> None:
        self.box = box
        settings = valid_settings()
        ctx = dataclasses.replace(template_context(settings, settings.cluster.nodes[0]), paths=box.paths)
        self.bins = Binaries(box.root / "bin", box.root / "standin", ("pgbackrest", "psql"))
        self.program = box.root / "bin" / "pgbackup-verify"
        self.program.write_text(render("monitoring/pgbackup-verify.py.j2", verify_context(settings, ctx)))
        self.bins.answer("pgbackrest", "info", stdout=json.dumps(INFO))
        self.bins.answer("pgbackrest", "verify", stdout=HEALTHY)
        self.bins.answer("pgbackrest", "repo-ls", "archive/main/15-1", stdout=listing(2, 3, 4, 5, 6))
        self.bins.answer("psql", "wal_segment_size", stdout=f"{16 * 1024 * 1024}\n")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/bin/python3", str(self.program), *args], capture_output=True, text=True,
                              env={**self.bins.env(), "LANG": "C.UTF-8"}, timeout=30, check=False)

    def verify(self) -> tuple[int, dict[str, Any], dict[str, float]]:
        """(exit status, state file, published metrics {kind: value} of repo1)."""
        code = self.run().returncode
        state = json.loads(Path(self.box.paths.verify_state).read_text())
        assert self.run("publish").returncode == 0
        text = Path(self.box.paths.verify_metrics).read_text()
        errors = {m.group(1): float(m.group(2))
                  for m in re.finditer(r'^pgbackup_verify_errors\{[^}]*repo="1",kind="(\w+)"\} (\S+)$', text, re.M)}
        return code, state, errors


@pytest.fixture
def verification(node_sandbox: NodeSandbox) -> Verification:
    return Verification(node_sandbox)


def test_a_healthy_repository(verification: Verification) -> None:
    code, state, errors = verification.verify()
    assert code == 0, state
    assert state["ok"] is True
    assert errors == {"checksum": 0, "missing_wal": 0, "other": 0}
    assert state["repos"]["1"]["continuity"]["from"] == "000000010000000000000002"
    assert state["repos"]["1"]["continuity"]["to"] == "000000010000000000000006"


def test_a_gap_in_the_archive_is_missing_wal(verification: Verification) -> None:
    verification.bins.answer("pgbackrest", "repo-ls", stdout=listing(2, 3, 5, 6))
    code, state, errors = verification.verify()
    assert code == 1
    assert state["ok"] is False
    assert errors == {"checksum": 0, "missing_wal": 1, "other": 0}
    assert state["repos"]["1"]["continuity"]["firstMissing"] == ["000000010000000000000004"]


def test_damaged_sets_are_counted_by_kind(verification: Verification) -> None:
    verification.bins.answer("pgbackrest", "verify", stdout=DAMAGED)
    code, _, errors = verification.verify()
    assert code == 1
    assert (errors["checksum"], errors["missing_wal"]) == (1, 1), errors
    assert errors["other"] >= 1, errors


@pytest.mark.parametrize("words", [("verify",), ("repo-ls",)])
def test_a_failing_pgbackrest_command_is_an_error_even_with_a_healthy_output(
        verification: Verification, words: tuple[str, ...]) -> None:
    stdout = HEALTHY if words == ("verify",) else listing(2, 3, 4, 5, 6)
    verification.bins.answer("pgbackrest", *words, code=82, stdout=stdout, stderr="ERROR: [082]: stand-in")
    code, state, errors = verification.verify()
    assert code == 1
    assert state["ok"] is False
    assert errors == {"checksum": 0, "missing_wal": 0, "other": 1}
    assert "stand-in" in json.dumps(state["repos"]["1"]), state


def test_info_failing_is_an_error(verification: Verification) -> None:
    verification.bins.answer("pgbackrest", "info", code=39, stderr="ERROR: [039]: unreachable")
    code, state, errors = verification.verify()
    assert code == 1
    assert errors["other"] == 1
    assert "unreachable" in json.dumps(state)
