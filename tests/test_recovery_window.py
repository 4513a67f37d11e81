"""The recoverable window (issue 21): the one computation (recovery_window in templates/monitoring/
pgbackup-verify.py.j2, loaded as the node runs it), its metrics and alerts (judged by promtool), the
`recoveryWindow` output and `pgbackup status` reading it from hostile state files (components/window.py)."""

from __future__ import annotations

import json
import subprocess
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.proofs import proofs_of
from components.window import read_window
from pgbackup_cli import status
from pgbackup_cli.untrusted import verify_result
from tests.harness import node_files, run_program, stack_config

SCRIPT = "/usr/local/lib/pgbackup/pgbackup-verify"
NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
T = 1795669200  # 2026-11-26T05:00:00Z


@pytest.fixture(scope="module")
def stack() -> tuple[types.ModuleType, str]:
    """The rendered verification script of a stack with monthly archives, as a module, and its alert rules."""
    run = run_program(stack_config(retention={"full": 4, "monthly": 12}))
    module = types.ModuleType("pgbackup_verify")
    exec(compile(node_files(run, "pg1")[SCRIPT]["content"], SCRIPT, "exec"), module.__dict__)  # noqa: S102
    return module, run.outputs["alertRules"]


@pytest.fixture
def verify(stack: tuple[types.ModuleType, str]) -> Any:
    return stack[0]


def backup(label: str, start: int, stop: int, stop_time: int, prior: str | None = None) -> dict[str, Any]:
    return {"label": label, "prior": prior, "start": start, "stop": stop, "stopTime": stop_time}


# Segments 4..40 archived a minute apart from T; a full backup at 4-5 and at 20-21, an incremental on the second.
ARCHIVE = {n: T + 60 * n for n in range(4, 41)}
BACKUPS = [backup("20261126-050000F", 4, 5, T + 250), backup("20261126-052000F", 20, 21, T + 1250),
           backup("20261126-052000F_20261126-053000I", 30, 30, T + 1810, "20261126-052000F")]


def test_continuous_wal_is_one_window_from_the_oldest_backup_to_the_newest_segment(verify: Any) -> None:
    found = verify.recovery_window(BACKUPS, ARCHIVE, set(), "oldest", False, T + 3000)
    assert found == {"pieces": [{"from": T + 250, "to": T + 2400}], "damaged": [], "promisedFrom": T + 250,
                     "missingSeconds": 0, "endLagSeconds": 0}


def test_a_missing_segment_splits_the_window_where_no_backup_bridges_it(verify: Any) -> None:
    gap = {n: t for n, t in ARCHIVE.items() if n != 10}
    found = verify.recovery_window(BACKUPS, gap, set(), "oldest", False, None)
    # The first backup reaches segment 9 (archived at T+540); the next piece starts at the second's stop.
    assert found["pieces"] == [{"from": T + 250, "to": T + 540}, {"from": T + 1250, "to": T + 2400}]
    assert found["missingSeconds"] == 1250 - 540
    # A gap inside a backup's own range: that backup cannot become consistent, the window starts later.
    inside = {n: t for n, t in ARCHIVE.items() if n != 5}
    assert verify.recovery_window(BACKUPS, inside, set(), "oldest", False, None)["pieces"] == [
        {"from": T + 1250, "to": T + 2400}]


def test_a_damaged_set_and_its_dependents_leave_the_window(verify: Any) -> None:
    found = verify.recovery_window(BACKUPS, ARCHIVE, {"20261126-052000F"}, "oldest", False, None)
    # The oldest full's WAL still covers everything: the window is whole, the damaged sets are named.
    assert found["pieces"] == [{"from": T + 250, "to": T + 2400}]
    assert found["damaged"] == [
        {"label": "20261126-052000F", "reason": "the verification found it damaged"},
        {"label": "20261126-052000F_20261126-053000I", "reason": "depends on the damaged 20261126-052000F"}]
    # With a gap after the oldest full, what only the damaged set could start is lost.
    gap = {n: t for n, t in ARCHIVE.items() if n != 10}
    lost = verify.recovery_window(BACKUPS, gap, {"20261126-052000F"}, "oldest", False, None)
    assert lost["pieces"] == [{"from": T + 250, "to": T + 540}]
    assert lost["missingSeconds"] == 2400 - 540
    # The oldest full damaged: the window starts at the next good backup, short of what retention keeps.
    oldest = verify.recovery_window(BACKUPS, ARCHIVE, {"20261126-050000F"}, "oldest", False, None)
    assert oldest["pieces"] == [{"from": T + 1250, "to": T + 2400}]
    assert oldest["missingSeconds"] == 1000


def test_an_expired_chain_starts_the_window_at_the_oldest_backup_that_still_has_its_wal(verify: Any) -> None:
    expired = {n: t for n, t in ARCHIVE.items() if n >= 15}  # the oldest backup's WAL is gone
    found = verify.recovery_window(BACKUPS, expired, set(), "oldest", False, None)
    assert found["pieces"] == [{"from": T + 1250, "to": T + 2400}]
    assert (found["promisedFrom"], found["missingSeconds"]) == (T + 250, 1000)


def test_no_backup_or_no_archive_is_no_window(verify: Any) -> None:
    assert verify.recovery_window([], ARCHIVE, set(), "oldest", False, None) == {
        "pieces": [], "damaged": [], "promisedFrom": None, "missingSeconds": 0, "endLagSeconds": None}
    assert verify.recovery_window(BACKUPS, {}, set(), "oldest", False, None)["pieces"] == []


def test_two_repositories_each_by_their_retention(verify: Any) -> None:
    """repo2 (monthly archives) keeps WAL from its newest backup on, and each older one's own range: pieces
    by design, and only the newest backup's onwards is promised."""
    monthly = [backup("20261026-050000F", 4, 5, T + 250), backup("20261126-050000F", 30, 31, T + 1850)]
    kept = {n: t for n, t in ARCHIVE.items() if n in (4, 5) or n >= 30}
    found = verify.recovery_window(monthly, kept, set(), "newest", False, None)
    assert found["pieces"] == [{"from": T + 250, "to": T + 300}, {"from": T + 1850, "to": T + 2400}]
    assert (found["promisedFrom"], found["missingSeconds"]) == (T + 1850, 0)
    # The same shape in repo1 (retention keeps all WAL from the oldest): a gap, promised and missing.
    assert verify.recovery_window(monthly, kept, set(), "oldest", False, None)["missingSeconds"] == 1850 - 300


def test_the_end_lags_only_while_wal_waits(verify: Any) -> None:
    assert verify.recovery_window(BACKUPS, ARCHIVE, set(), "oldest", True, T + 3000)["endLagSeconds"] == 600
    assert verify.recovery_window(BACKUPS, ARCHIVE, set(), "oldest", False, T + 3000)["endLagSeconds"] == 0


def segment(number: int) -> str:
    return f"00000001{number // 256:08X}{number % 256:08X}"


def test_the_state_files_window_from_info_and_the_archive_listing(verify: Any) -> None:
    """window_of: pgbackrest info's backups of the repository and database, repo-ls's times, verify's labels."""
    listing = {f"0000000100000000/{segment(n)}-{'a' * 40}.zst": {"type": "file", "time": t}
               for n, t in ARCHIVE.items()}
    info = {"backup": [{"label": b["label"], "prior": b["prior"], "database": {"id": 1, "repo-key": 1},
                        "archive": {"start": segment(b["start"]), "stop": segment(b["stop"])},
                        "timestamp": {"start": b["stopTime"] - 50, "stop": b["stopTime"]}} for b in BACKUPS]}
    info["backup"].append({**info["backup"][0], "label": "20261126-040000F", "database": {"id": 1, "repo-key": 2}})
    wal = {"listing": listing, "databaseId": 1}
    window = verify.window_of(info, {"index": 1, "continuous_from": "oldest"}, wal, ["20261126-050000F"], 256,
                              segment(44), T + 3000)
    assert window == {"pieces": [{"from": T + 1250, "to": T + 2400, "fromTime": "2026-11-26T05:20:50Z",
                                  "toTime": "2026-11-26T05:40:00Z"}],
                      "pieceCount": 1, "damaged": [{"label": "20261126-050000F",
                                                    "reason": "the verification found it damaged"}],
                      "promisedFrom": T + 250, "missingSeconds": 1000, "endLagSeconds": 600}
    assert read_window({"repos": {"1": {"window": window}}})["1"] == window  # what the readers accept


def state_with(windows: dict[str, Any]) -> dict[str, Any]:
    return {"time": "2026-11-26T05:00:00Z", "ok": False, "node": "pg1",
            "errors": {"checksum": 1, "missing_wal": 1, "other": 0},
            "repos": {index: {"errors": {"checksum": 0, "missing_wal": 0, "other": 0}, "window": window}
                      for index, window in windows.items()}}


SPLIT: dict[str, Any] = {"pieces": [{"from": T - 7200, "to": T - 3600, "fromTime": "x", "toTime": "y"},
                    {"from": T - 1800, "to": T - 60, "fromTime": "x", "toTime": "y"}],
         "pieceCount": 2, "damaged": [{"label": "20261125-050000F", "reason": "the verification found it damaged"}],
         "promisedFrom": T - 7200, "missingSeconds": 1800, "endLagSeconds": 0}


def test_window_metrics_pass_promtool_and_say_what_the_state_says(verify: Any) -> None:
    text = verify.window_metrics(state_with({"1": SPLIT, "2": None}))
    lines = set(text.splitlines())
    assert {f'pgbackup_recovery_window_start_timestamp_seconds{{stanza="main",repo="1"}} {T - 7200}',
            f'pgbackup_recovery_window_end_timestamp_seconds{{stanza="main",repo="1"}} {T - 60}',
            'pgbackup_recovery_window_pieces{stanza="main",repo="1"} 2',
            'pgbackup_recovery_window_missing_seconds{stanza="main",repo="1"} 1800',
            'pgbackup_recovery_window_end_lag_seconds{stanza="main",repo="1"} 0',
            'pgbackup_recovery_window_damaged_set{stanza="main",repo="1",set="20261125-050000F"} 1'} <= lines
    assert 'repo="2"' not in text  # not computed: no number rather than a false one
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr



def test_publish_writes_the_window_with_the_verifications_metrics(verify: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    written: dict[str, str] = {}
    monkeypatch.setattr(verify, "load_state", lambda path: (state_with({"1": SPLIT}), None))
    monkeypatch.setattr(verify, "write_atomically", lambda d, n, text, mode: written.update({n: text}))
    assert verify.publish() == 0
    text = written["pgbackup-verify.prom"]
    assert 'pgbackup_verify_errors{stanza="main",repo="1",kind="checksum"} 0' in text
    assert 'pgbackup_recovery_window_pieces{stanza="main",repo="1"} 2' in text


def test_hostile_window_fields_publish_nothing_false(verify: Any) -> None:
    hostile = {**SPLIT, "damaged": [{"label": '1"} 1\nevil{x="'}, "x"], "pieceCount": -1, "missingSeconds": "9",
               "pieces": [{"from": "0", "to": 1}, 7]}
    text = verify.window_metrics(state_with({"1": hostile}))
    # Only the one field as written is published (endLagSeconds 0): no evil series, no false number.
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        'pgbackup_recovery_window_end_lag_seconds{stanza="main",repo="1"} 0']
    assert verify.window_metrics(state_with({'1"} 0\nevil{x="': SPLIT})) == ""


def promtool_rules(rules: str, tmp_path: Path, series: dict[str, str], tests: list[dict[str, Any]]) -> None:
    (tmp_path / "rules.yml").write_text(rules)
    document = {"rule_files": ["rules.yml"], "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
                           "alert_rule_test": tests}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(document))
    result = subprocess.run(["promtool", "test", "rules", "tests.yml"], capture_output=True, text=True, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_name_the_gap_the_damaged_set_and_the_lag(stack: tuple[Any, str], tmp_path: Path) -> None:
    """pg1's verification (t=0) found a gap, a damaged set and a lag in repo1; pg2's, newer (from 10m), found
    all well: the newest run counts, the alerts end. Their text says what to do."""
    verify, rules = stack
    metrics = verify.metrics_of(state_with({"1": {**SPLIT, "endLagSeconds": 900}}))
    metrics += verify.window_metrics(state_with({"1": {**SPLIT, "endLagSeconds": 900}}))
    series = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name.replace("}", ',instance="pg1"}')] = f"{value}x30"
    series['pgbackup_verify_last_run_timestamp_seconds{stanza="main",repo="1",instance="pg2"}'] = "_x9 99999999999x20"
    for name in ("missing_seconds", "end_lag_seconds"):
        series[f'pgbackup_recovery_window_{name}{{stanza="main",repo="1",instance="pg2"}}'] = "_x9 0x20"
    labels = {"severity": "critical", "stanza": "main", "repo": "1"}
    promtool_rules(rules, tmp_path, series, [
        {"eval_time": "5m", "alertname": "PgBackupRecoveryWindowShort", "exp_alerts": [{
            "exp_labels": labels, "exp_annotations": {"summary": (
                "repo1 of stanza main cannot recover to 1800 s of the time its retention keeps (a WAL gap, a damaged "
                "backup set or an expired chain): `pgbackup status` lists the window's pieces")}}]},
        {"eval_time": "5m", "alertname": "PgBackupRecoveryWindowEndLags", "exp_alerts": [{
            "exp_labels": labels, "exp_annotations": {"summary": (
                "At the last verification, repo1 of stanza main could recover only to 900 s before it while WAL "
                "waited to be archived (archiving stuck)")}}]},
        {"eval_time": "5m", "alertname": "PgBackupBackupSetDamaged", "exp_alerts": [{
            "exp_labels": {**labels, "set": "20261125-050000F"}, "exp_annotations": {"summary": (
                "Backup set 20261125-050000F in repo1 of stanza main is damaged and cannot start a recovery: after a "
                "new full backup (`pgbackup backup --type full`), remove it with `pgbackrest --stanza=main --repo=1 "
                "expire --set=20261125-050000F` as postgres")}}]},
        *({"eval_time": "15m", "alertname": name, "exp_alerts": []} for name in (
            "PgBackupRecoveryWindowShort", "PgBackupRecoveryWindowEndLags", "PgBackupBackupSetDamaged")),
    ])
    # A lag under archive_max_age (300 s by default) is no alert.
    quiet = {k: ("200x30" if "end_lag" in k else v) for k, v in series.items() if "instance=\"pg2\"" not in k}
    promtool_rules(rules, tmp_path, quiet, [{"eval_time": "5m", "alertname": "PgBackupRecoveryWindowEndLags",
                                             "exp_alerts": []}])


def test_the_recovery_window_output_is_the_newest_verifications(stack: tuple[Any, str]) -> None:
    found = proofs_of([{"node": "pg1", "proofs": {"verify": json.dumps(state_with({"1": SPLIT, "2": None}))}}],
                      NOW)["recoveryWindow"]
    assert found is not None
    assert found["time"] == "2026-11-26T05:00:00Z"
    assert found["ok"] is False
    assert found["repos"] is not None
    assert found["repos"]["2"] is None
    assert found["repos"]["1"]["pieces"] == [  # type: ignore[index]  # the times rebuilt from the epochs, never the file's text
        {"from": T - 7200, "to": T - 3600, "fromTime": "2026-11-26T03:00:00Z", "toTime": "2026-11-26T04:00:00Z"},
        {"from": T - 1800, "to": T - 60, "fromTime": "2026-11-26T04:30:00Z", "toTime": "2026-11-26T04:59:00Z"}]
    whole = {**SPLIT, "pieces": SPLIT["pieces"][1:], "pieceCount": 1, "damaged": [], "missingSeconds": 0}
    assert proofs_of([{"node": "pg1", "proofs": {"verify": json.dumps(state_with({"1": whole}))}}],
                     NOW)["recoveryWindow"]["ok"] is True  # type: ignore[index]
    damaged = {**whole, "damaged": SPLIT["damaged"]}  # whole, but a set that cannot start a recovery is kept
    assert proofs_of([{"node": "pg1", "proofs": {"verify": json.dumps(state_with({"1": damaged}))}}],
                     NOW)["recoveryWindow"]["ok"] is False  # type: ignore[index]


HOSTILE = [
    ({"pieces": "all"}, "repos.1.window.pieces: expected a list of at most 32 {from, to}"),
    ({"pieces": [{"from": 0, "to": 1}] * 33}, "repos.1.window.pieces: expected a list of at most 32 {from, to}"),
    ({"pieces": [{"from": 5, "to": 1}]}, "repos.1.window.pieces[0]: expected to >= from, after the piece before it"),
    ({"pieces": [{"from": 1, "to": 5}, {"from": 3, "to": 9}]},
     "repos.1.window.pieces[1]: expected to >= from, after the piece before it"),
    ({"pieces": [{"from": 1.5, "to": 5}]}, "repos.1.window.pieces[0].from: expected seconds since the epoch"),
    ({"pieces": [{"from": 1, "to": 10**20}]}, "repos.1.window.pieces[0].to: expected seconds since the epoch"),
    ({"pieceCount": 1}, "repos.1.window.pieceCount: fewer than the pieces listed"),
    ({"damaged": [{"label": "x\x1b[31m", "reason": "r"}]},
     "repos.1.window.damaged[0].label: expected a backup label (20261126-050000F)"),
    ({"damaged": [{"label": "20261125-050000F", "reason": "x" * 500}]},
     "repos.1.window.damaged[0].reason: expected a short text"),
    ({"damaged": [{"label": "20261125-050000F", "reason": "r"}] * 17},
     "repos.1.window.damaged: expected a list of at most 16 {label, reason}"),
    ({"missingSeconds": -1}, "repos.1.window.missingSeconds: expected a number of seconds (0 or more)"),
    ({"endLagSeconds": True}, "repos.1.window.endLagSeconds: expected a number of seconds (0 or more)"),
    ({"promisedFrom": "yesterday"}, "repos.1.window.promisedFrom: expected seconds since the epoch"),
]


@pytest.mark.parametrize(("change", "reason"), HOSTILE)
def test_a_hostile_window_is_unreadable_in_the_output_and_in_status(change: dict[str, Any], reason: str) -> None:
    text = json.dumps(state_with({"1": {**SPLIT, **change}}))
    found = proofs_of([{"node": "pg1", "proofs": {"verify": text}}], NOW)["recoveryWindow"]
    assert found == {"time": None, "ok": False, "repos": None,
                     "unreadable": f"pg1: /var/lib/pgbackrest/pgbackup-verify.json: {reason}"}
    with pytest.raises(ValueError, match=r"^" + reason.replace("[", r"\[").replace("{", r"\{").replace(".", r"\.")
                       .replace("(", r"\(").replace(")", r"\)") + "$"):
        verify_result(text, "pg1", NOW.timestamp())


def test_status_prints_each_repositorys_window_its_pieces_and_how_to_be_rid_of_a_damaged_set() -> None:
    last = verify_result(json.dumps(state_with({"1": SPLIT, "2": {**SPLIT, "pieces": SPLIT["pieces"][1:],
                                                                  "pieceCount": 1, "damaged": [],
                                                                  "missingSeconds": 0}})), "pg1", NOW.timestamp())
    last.pop("epoch")
    problems: list[str] = []
    found = status.recovery_window(last, "main", problems)
    assert "window" not in last
    assert problems == [
        "repo1 cannot recover to 1800 s of what its retention keeps (the verification at 2026-11-26T05:00:00Z: a "
        "WAL gap, a damaged set or an expired chain)",
        "backup set 20261125-050000F in repo1 is damaged: it cannot start a recovery. After a new full backup "
        "(`pgbackup backup --type full --repo 1`), remove it on the leader: `sudo -u postgres pgbackrest "
        "--stanza=main --repo=1 expire --set=20261125-050000F`"]
    assert status.window_lines(found) == [
        "recoverable window (the verification at 2026-11-26T05:00:00Z on pg1):",
        "  recoverable window of repo1: from 2026-11-26T03:00:00Z to 2026-11-26T04:59:00Z, in 2 pieces (a WAL gap "
        "splits it):",
        "    piece 2026-11-26T03:00:00Z to 2026-11-26T04:00:00Z",
        "    piece 2026-11-26T04:30:00Z to 2026-11-26T04:59:00Z",
        "  recoverable window of repo2: from 2026-11-26T04:30:00Z to 2026-11-26T04:59:00Z"]
    assert status.window_lines(None) == ["recoverable window: not computed yet (pgbackup-verify, drill.verifySchedule)"]
