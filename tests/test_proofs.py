"""The scheduled verification (templates/monitoring/pgbackup-verify.py.j2, loaded as the node runs it) on
pgBackRest's real output formats, and the lastVerify / lastDrill outputs read from hostile state files."""

from __future__ import annotations

import json
import os
import subprocess
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from components import proofs as proofs_module
from components.proofs import Unreadable, last_drill, last_verify, proofs_of, read_drill, read_verify
from tests.harness import healthy_stdout, node_files, run_program, stack_config, verify_report

SCRIPT = "/usr/local/lib/pgbackup/pgbackup-verify"

# `pgbackrest verify --output=text --verbose`, as pgBackRest's verifyRender writes it (src/command/verify/
# verify.c, 2.45 and 2.55.1 alike): a healthy repository, then one backup file corrupt and a WAL file gone.
HEALTHY = """stanza: main
status: ok
  archiveId: 17-1, total WAL checked: 12, total valid WAL: 12
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
  backup: 20261126-070000F, status: valid, total files checked: 980, total valid files: 980
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
"""
DAMAGED = """stanza: main
status: error
  archiveId: 17-1, total WAL checked: 12, total valid WAL: 10
    missing: 1, checksum invalid: 0, size invalid: 1, other: 0
  backup: 20261126-070000F, status: invalid, total files checked: 980, total valid files: 979
    missing: 0, checksum invalid: 1, size invalid: 0, other: 0
  backup: 20261126-080000F, status: manifest missing, total files checked: 0, total valid files: 0
"""
NO_INFO = """stanza: main
status: error
  No usable backup.info file
"""


@pytest.fixture(scope="module")
def verify() -> types.ModuleType:
    """The rendered script of a stack with monthly archives, as a module (its main guard not run)."""
    files = node_files(run_program(stack_config(retention={"full": 4, "monthly": 12})), "pg1")
    assert files[SCRIPT]["mode"] == "0755"
    module = types.ModuleType("pgbackup_verify")
    exec(compile(files[SCRIPT]["content"], SCRIPT, "exec"), module.__dict__)  # noqa: S102 - our own template
    return module


def test_the_script_knows_both_repositories_and_where_their_wal_is_continuous_from(verify: Any) -> None:
    assert verify.REPOS == [{"index": 1, "continuous_from": "oldest"}, {"index": 2, "continuous_from": "newest"}]
    assert verify.STATE == "/var/lib/pgbackrest/pgbackup-verify.json"
    assert verify.METRICS == "/var/lib/prometheus/node-exporter/pgbackup-verify.prom"


def test_verify_output_parsed_by_kind(verify: Any) -> None:
    assert verify.parse_verify(HEALTHY) == {"status": "ok", "errors": {"checksum": 0, "missing_wal": 0, "other": 0},
                                            "checked": {"wal": 12, "backup": 980}, "notes": [], "damaged": []}
    damaged = verify.parse_verify(DAMAGED)
    assert damaged["status"] == "error"
    # Which sets cannot start a recovery: the one with a bad checksum, the listed one without its manifest.
    assert damaged["damaged"] == ["20261126-070000F", "20261126-080000F"]
    # WAL missing -> missing_wal; wrong size -> other; the backup's checksum -> checksum; no manifest -> other.
    assert damaged["errors"] == {"checksum": 1, "missing_wal": 1, "other": 2}
    # status error with nothing counted, or no status at all (verify did not finish): one other error.
    assert verify.parse_verify(NO_INFO)["errors"] == {"checksum": 0, "missing_wal": 0, "other": 1}
    assert verify.parse_verify(NO_INFO)["notes"] == ["No usable backup.info file"]
    assert verify.parse_verify("")["errors"]["other"] == 1


def listing(*segments: str) -> dict[str, Any]:
    """repo-ls --recurse --output=json of an archive id's directory."""
    found: dict[str, Any] = {}
    for name in segments:
        found[name[:16]] = {"type": "path"}
        found[f"{name[:16]}/{name}-{'a' * 40}.zst"] = {"type": "file", "size": 100, "time": 1}
    return found


def test_a_directory_without_a_manifest_is_damage_only_when_backup_info_lists_it(verify: Any) -> None:
    """pgBackRest's verify says "manifest missing" (and status ok) for any backup directory with neither
    manifest nor copy: a listed backup whose manifests are gone (damage), or what an expired or aborted backup
    left behind (seen on Debian 12's lab: moto lists a directory whose objects all carry delete markers)."""
    leftover = HEALTHY + "  backup: 20261126-060000F, status: manifest missing, total files checked: 0, total valid files: 0\n"
    listed = {"20261126-070000F"}
    clean = verify.parse_verify(leftover, listed)
    assert clean["errors"] == {"checksum": 0, "missing_wal": 0, "other": 0}
    assert clean["notes"] == ["backup 20261126-060000F: a directory without a manifest that backup.info does not "
                              "list (an expired or aborted backup's leftover)"]
    damaged = verify.parse_verify(leftover, listed | {"20261126-060000F"})
    assert damaged["errors"] == {"checksum": 0, "missing_wal": 0, "other": 1}
    assert damaged["notes"] == ["backup 20261126-060000F: its manifest and the manifest's copy are missing"]
    assert verify.parse_verify(leftover)["errors"]["other"] == 1  # backup.info unknown: counted


def test_continuity_finds_the_segment_deleted_from_the_middle(verify: Any) -> None:
    names = [f"0000000100000000000000{n:02X}" for n in range(3, 12)]
    full = listing(*names)
    ranges = [(names[0], names[-1])]
    assert verify.missing_segments(full, ranges, 256) == []
    gap = listing(*names[:4], *names[5:])
    assert verify.missing_segments(gap, ranges, 256) == [names[4]]
    # A .partial or .history file is no segment; the log file number rolls over after segment FF.
    rollover = listing("0000000100000000000000FE", "0000000100000000000000FF", "000000010000000100000000")
    rollover["0000000100000001/000000010000000100000001.partial"] = {"type": "file"}
    assert verify.missing_segments(rollover, [("0000000100000000000000FE", "000000010000000100000001")], 256) == [
        "000000010000000100000001"]


def test_continuity_follows_a_failover_onto_the_next_timeline(verify: Any) -> None:
    # Timeline 1 up to 0x05, timeline 2 from 0x05 on (the switch segment is on both).
    archive = listing(*(f"0000000100000000000000{n:02X}" for n in range(2, 6)),
                      *(f"0000000200000000000000{n:02X}" for n in range(5, 9)))
    assert verify.missing_segments(archive, [("000000010000000000000002", "000000020000000000000008")], 256) == []


def test_continuity_ranges_follow_each_repositorys_retention(verify: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """repo1: from its oldest backup's start to the newest segment; repo2: from its newest backup's start,
    plus each older backup's own range (monthly archives keep no WAL between them)."""
    seen: list[Any] = []

    def fake_missing(listed: Any, ranges: Any, per_log: int) -> list[str]:
        seen.append(ranges)
        return []

    monkeypatch.setattr(verify, "missing_segments", fake_missing)
    monkeypatch.setattr(verify, "pgbackrest", lambda *a, **k: subprocess.CompletedProcess(a, 0, "{}", ""))
    info = {"archive": [{"database": {"id": 1, "repo-key": r}, "id": "17-1", "max": "000000010000000000000040"}
                        for r in (1, 2)],
            "backup": [{"database": {"id": 1, "repo-key": r}, "archive": {"start": start, "stop": stop}}
                       for r, start, stop in ((1, "000000010000000000000004", "000000010000000000000005"),
                                              (2, "000000010000000000000006", "000000010000000000000007"),
                                              (1, "000000010000000000000010", "000000010000000000000011"),
                                              (2, "000000010000000000000020", "000000010000000000000021"))]}
    verify.continuity(info, {"index": 1, "continuous_from": "oldest"}, 256)
    verify.continuity(info, {"index": 2, "continuous_from": "newest"}, 256)
    assert seen[0][0] == ("000000010000000000000004", "000000010000000000000040")
    assert seen[1][0] == ("000000010000000000000020", "000000010000000000000040")
    assert ("000000010000000000000006", "000000010000000000000007") in seen[1]


def state(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"time": "2026-11-26T05:00:00Z", "ok": False, "node": "pg1",
                             "errors": {"checksum": 1, "missing_wal": 0, "other": 0},
                             "repos": {"1": {"errors": {"checksum": 1, "missing_wal": 0, "other": 0}},
                                       "2": {"errors": {"checksum": 0, "missing_wal": 0, "other": 0}}}}
    value.update(changes)
    return value


def test_published_metrics_pass_promtool_and_say_what_the_state_says(verify: Any, tmp_path: Path) -> None:
    text = verify.metrics_of(state())
    assert 'pgbackup_verify_last_run_timestamp_seconds{stanza="main",repo="1"} 1795669200' in text
    assert 'pgbackup_verify_errors{stanza="main",repo="1",kind="checksum"} 1' in text
    assert 'pgbackup_verify_errors{stanza="main",repo="2",kind="missing_wal"} 0' in text
    path = tmp_path / "pgbackup-verify.prom"
    path.write_text(text)
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_damaged_state_file_publishes_nothing_false(verify: Any) -> None:
    assert verify.metrics_of(state(time="yesterday")) == ""
    assert verify.metrics_of(state(repos={'1"} 0\nevil{x="': {"errors": {}}})) == ""
    # A count that is no count is itself an error, never a zero.
    bad = verify.metrics_of(state(repos={"1": {"errors": {"checksum": "0", "missing_wal": -1, "other": True}}}))
    assert 'kind="other"} 1' in bad
    assert 'kind="checksum"} 0' in bad


def test_the_state_file_is_never_read_through_a_link(verify: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(json.dumps(state()))
    link = tmp_path / "pgbackup-verify.json"
    link.symlink_to(secret)
    assert verify.read_state(str(link)) is None
    assert verify.read_state(str(secret)) == state()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert verify.read_state(str(fifo)) is None
    big = tmp_path / "big"
    big.write_text(" " * (verify.STATE_MAX_BYTES + 1))
    assert verify.read_state(str(big)) is None


DRILL = {"time": "2026-11-25T05:31:00Z", "ok": True, "rtoSeconds": 61.5, "restoredBytes": 1175000000,
         "replayedToArchiveEnd": True, "repo": 1, "node": "pg2", "reason": "", "phases": {"restore": 9.1}}


def test_last_verify_and_last_drill_are_the_contracts_fields_or_null() -> None:
    assert last_verify(json.dumps(state())) == {"time": "2026-11-26T05:00:00Z", "ok": False,
                                                "errors": {"checksum": 1, "missing_wal": 0, "other": 0}}
    assert last_drill(json.dumps(DRILL)) == {"time": "2026-11-25T05:31:00Z", "ok": True, "rtoSeconds": 61.5,
                                             "restoredBytes": 1175000000, "replayedToArchiveEnd": True}
    # "ok" is what the counts say.
    assert last_verify(json.dumps(state(ok=True)))["ok"] is False  # type: ignore[index]
    for hostile in (None, "", "[]", "{", "x" * 70000, json.dumps(state(time=1)), json.dumps(state(ok="yes")),
                    json.dumps(state(errors={"checksum": 1.5, "missing_wal": 0, "other": 0})),
                    json.dumps(state(errors={"checksum": 0})), json.dumps({**DRILL, "rtoSeconds": "fast"})):
        assert last_verify(hostile) is None or last_drill(hostile) is None, hostile
    assert last_drill(json.dumps({**DRILL, "rtoSeconds": "fast"})) is None
    assert last_drill(json.dumps({**DRILL, "restoredBytes": -1})) is None
    assert last_drill(json.dumps({**DRILL, "replayedToArchiveEnd": "no"})) is None


NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)  # the program's clock in these tests


def test_outputs_are_the_newest_across_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proofs_module, "clock", lambda: NOW)
    older, newer = state(time="2026-11-25T05:00:00Z"), state(time="2026-11-26T05:00:00Z", ok=True,
                                                              errors={"checksum": 0, "missing_wal": 0, "other": 0})
    proofs: dict[str, dict[str, Any]] = {
        "cluster-pg1-verify": {"verify": json.dumps(older), "drill": "not json"},
        "cluster-pg2-verify": {"verify": json.dumps(newer), "drill": json.dumps(DRILL)},
        "cluster-pg3-verify": {"verify": None, "drill": None}}
    outputs = run_program(stack_config(), command_stdout=reporting(proofs)).outputs
    assert outputs["lastVerify"] == {"time": "2026-11-26T05:00:00Z", "ok": True,
                                     "errors": {"checksum": 0, "missing_wal": 0, "other": 0}}
    # pg1's damaged drill file: the output says so, and is not ok, whatever pg2's drill says.
    assert outputs["lastDrill"] == {**last_drill(json.dumps(DRILL)), "ok": False,  # type: ignore[dict-item]
                                    "unreadable": "pg1: /var/lib/pgbackrest/pgbackup-drill.json: not JSON"}
    assert proofs_of([json.loads(verify_report("pg1", "replica", None))], NOW) == {"lastVerify": None,
                                                                                  "lastDrill": None,
                                                                                  "recoveryWindow": None}


def reporting(proofs: dict[str, dict[str, Any]]) -> Any:
    """The mocks' stdout: each node's verify report with the given state files' text."""
    def stdout(args: Any) -> str:
        if args.name in proofs:
            report = json.loads(healthy_stdout(args))
            return json.dumps({**report, "proofs": proofs[args.name]}) + "\n"
        return healthy_stdout(args)
    return stdout


def reports(**texts: dict[str, Any]) -> list[dict[str, Any]]:
    """Verify reports of nodes (pg1 the leader) with their state files' text."""
    return [{"node": node, "role": "leader" if node == "pg1" else "replica", "proofs": proofs}
            for node, proofs in texts.items()]


DEEP = ("[" * 60000, '{"":' * 12000 + "1" + "}" * 12000,
        json.dumps(state()).removesuffix("}") + ', "x": ' + "[" * 30000 + "]" * 30000 + "}")


def test_deeply_nested_json_is_an_unreadable_proof_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """json.loads recurses once per level: 60000 levels (within the 64 KiB cap) raised RecursionError, which
    failed the whole `pulumi up`. The nesting is refused before json.loads is called."""
    for text in DEEP:
        assert len(text) <= proofs_module.STATE_MAX_BYTES
        with pytest.raises(Unreadable, match="nested deeper than 16 levels"):
            read_verify(text)
        assert last_verify(text) is None
        assert last_drill(text) is None
    # Brackets inside strings are no nesting (and escaped quotes do not end a string).
    assert last_verify(json.dumps(state(node='\\"[' * 5000))) == last_verify(json.dumps(state()))
    # Under the mocks, the whole program: the apply completes, the outputs name the node and the reason.
    monkeypatch.setattr(proofs_module, "clock", lambda: NOW)
    hostile = {"cluster-pg2-verify": {"verify": DEEP[0], "drill": DEEP[1]}}
    outputs = run_program(stack_config(), command_stdout=reporting(hostile)).outputs
    reason = "pg2: /var/lib/pgbackrest/pgbackup-{}.json: nested deeper than 16 levels"
    assert outputs["lastVerify"] == {"time": None, "ok": False, "errors": None, "unreadable": reason.format("verify")}
    assert outputs["lastDrill"] == {"time": None, "ok": False, "rtoSeconds": None, "restoredBytes": None,
                                    "replayedToArchiveEnd": False, "unreadable": reason.format("drill")}


def test_a_replicas_far_future_time_does_not_hide_the_leaders_failure() -> None:
    """Compared as text, pg2's 2099 success was "newest" and lastVerify said ok while the leader's last
    verification had found a corrupt file."""
    failing = json.dumps(state())  # the leader's: 2026-11-26T05:00:00Z, one checksum error
    forged = json.dumps(state(time="2099-01-01T00:00:00Z", ok=True, errors={"checksum": 0, "missing_wal": 0,
                                                                              "other": 0}))
    found = proofs_of(reports(pg1={"verify": failing}, pg2={"verify": forged}), NOW)["lastVerify"]
    assert found == {"time": "2026-11-26T05:00:00Z", "ok": False,
                     "errors": {"checksum": 1, "missing_wal": 0, "other": 0},
                     "unreadable": "pg2: /var/lib/pgbackrest/pgbackup-verify.json: time 2099-01-01T00:00:00Z is "
                                   "more than 5 minutes past this run's clock (2026-11-26T06:00:00Z): a wrong "
                                   "clock or a forged time"}
    drill = json.dumps({**DRILL, "time": "2099-01-01T00:00:00Z"})
    assert proofs_of(reports(pg2={"drill": drill}), NOW)["lastDrill"]["ok"] is False  # type: ignore[index]
    # A node's clock a little ahead of the program's (within 5 minutes) is no forgery: its result is newest.
    ahead = state(time="2026-11-26T06:04:59Z", ok=True, errors={"checksum": 0, "missing_wal": 0, "other": 0})
    assert proofs_of(reports(pg1={"verify": failing}, pg2={"verify": json.dumps(ahead)}), NOW)["lastVerify"] == \
        last_verify(json.dumps(ahead))
    # The same second on two nodes: the failure wins, whichever node comes first.
    same = json.dumps(state(ok=True, errors={"checksum": 0, "missing_wal": 0, "other": 0}))
    for order in ((same, failing), (failing, same)):
        found = proofs_of(reports(pg1={"verify": order[0]}, pg2={"verify": order[1]}), NOW)["lastVerify"]
        assert found is not None, order
        assert found["ok"] is False, order


@pytest.mark.parametrize("time", [
    1795669200, -1, 1e308, "1795669200", "-001-01-01T00:00:00Z", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
    "2026-11-26T24:00:00Z", "0000-01-01T00:00:00Z", "2026-11-26T05:00:00", "2026-11-26 05:00:00Z",
    "\u0662\u0660\u0662\u0666-11-26T05:00:00Z", "2026-11-26T05:00:00." + "1" * 100 + "Z", None, [], {},
])
def test_a_time_that_is_no_utc_date_is_unreadable(time: Any) -> None:
    """Compared as text, "2026-13-01..." (no such month) was newer than any real date; a number crashed
    nothing but was dropped silently. Each is an unreadable proof, never a result."""
    for read, good in ((read_verify, state()), (read_drill, DRILL)):
        with pytest.raises(Unreadable, match=r"time: (expected UTC ISO 8601|no such date)"):
            read(json.dumps({**good, "time": time}, ensure_ascii=False))
    text = json.dumps({**state(), "time": time}, ensure_ascii=False)
    found = proofs_of(reports(pg1={"verify": json.dumps(state(ok=True, errors={"checksum": 0, "missing_wal": 0,
                                                                                  "other": 0}))},
                              pg2={"verify": text}), NOW)["lastVerify"]
    assert found is not None
    assert found["ok"] is False
    assert found["unreadable"].startswith("pg2: ")


def test_fractions_of_a_second_compare_as_time() -> None:
    early, late = state(time="2026-11-26T05:00:00Z"), state(time="2026-11-26T05:00:00.5Z", ok=True,
                                                            errors={"checksum": 0, "missing_wal": 0, "other": 0})
    # As text "00Z" sorts after "00.5Z" ("Z" after "."); as time it is earlier.
    found = proofs_of(reports(pg1={"verify": json.dumps(early)}, pg2={"verify": json.dumps(late)}),
                      datetime(2026, 11, 26, 5, 0, 1, tzinfo=UTC))["lastVerify"]
    assert found == last_verify(json.dumps(late))
    assert found is not None
    assert found["ok"] is True


WRONG_VERIFY = [
    ({"ok": "yes"}, "ok: expected true or false"), ({"ok": 1}, "ok: expected true or false"),
    ({"ok": None}, "ok: expected true or false"),
    ({"errors": []}, "errors: expected a count"), ({"errors": "0"}, "errors: expected a count"),
    ({"errors": {"checksum": 0, "missing_wal": 0}}, "errors: expected a count"),
    ({"errors": {"checksum": True, "missing_wal": 0, "other": 0}}, "errors: expected a count"),
    ({"errors": {"checksum": 0, "missing_wal": -1, "other": 0}}, "errors: expected a count"),
    ({"errors": {"checksum": 0, "missing_wal": 0, "other": 2**53}}, "errors: expected a count"),
    ({"errors": {"checksum": 0.0, "missing_wal": 0, "other": 0}}, "errors: expected a count"),
]
WRONG_DRILL = [
    ({"ok": "true"}, "ok: expected true or false"),
    ({"replayedToArchiveEnd": "no"}, "replayedToArchiveEnd: expected true or false"),
    ({"replayedToArchiveEnd": None}, "replayedToArchiveEnd: expected true or false"),
    ({"rtoSeconds": "fast"}, "rtoSeconds: expected a number"), ({"rtoSeconds": -1}, "rtoSeconds: expected a number"),
    ({"rtoSeconds": True}, "rtoSeconds: expected a number"), ({"rtoSeconds": [61]}, "rtoSeconds: expected a number"),
    ({"restoredBytes": -1}, "restoredBytes: expected a count"), ({"restoredBytes": 1.5}, "restoredBytes: expected"),
    ({"restoredBytes": "1175000000"}, "restoredBytes: expected a count"),
    ({"restoredBytes": 10**400}, "not JSON"),  # past Python's digit limit for int(): a ValueError in json.loads
    ({"rtoSeconds": None}, "ok is true without rtoSeconds"),
]


@pytest.mark.parametrize(("change", "reason"), WRONG_VERIFY)
def test_each_verify_field_of_a_wrong_type_is_unreadable(change: dict[str, Any], reason: str) -> None:
    text = json.dumps(state(**change))
    with pytest.raises(Unreadable, match=reason):
        read_verify(text)
    found = proofs_of(reports(pg3={"verify": text}), NOW)["lastVerify"]
    assert found is not None
    assert found["ok"] is False
    assert found.get("unreadable", "").startswith("pg3: /var/lib/pgbackrest/pgbackup-verify.json: " + reason), found


@pytest.mark.parametrize(("change", "reason"), WRONG_DRILL)
def test_each_drill_field_of_a_wrong_type_is_unreadable(change: dict[str, Any], reason: str) -> None:
    text = json.dumps({**DRILL, **change}) if "restoredBytes" not in change or change["restoredBytes"] != 10**400 \
        else json.dumps(DRILL).replace("1175000000", "9" * 5000)
    with pytest.raises(Unreadable, match=reason):
        read_drill(text)
    found = proofs_of(reports(pg2={"drill": text}), NOW)["lastDrill"]
    assert found is not None
    assert found["ok"] is False
    assert found.get("unreadable", "").startswith("pg2: /var/lib/pgbackrest/pgbackup-drill.json: "), found


def test_what_is_no_state_file_text_is_unreadable() -> None:
    for text, reason in ((5, "not text (int)"), ({"time": "x"}, "not text (dict)"), ("", "not JSON"),
                         ("[]", "not a JSON object"), ("x" * 70000, "larger than 65536 bytes")):
        found = proofs_of(reports(pg1={"verify": text, "drill": text}), NOW)
        assert found["lastVerify"] == {"time": None, "ok": False, "errors": None,
                                       "unreadable": f"pg1: /var/lib/pgbackrest/pgbackup-verify.json: {reason}"}
        assert found["lastDrill"] is not None
        assert found["lastDrill"]["ok"] is False
    # A report whose node name is not one is not echoed.
    named = proofs_of([{"node": "pg1\x1b[31m", "proofs": {"verify": "{"}}], NOW)["lastVerify"]
    assert named is not None
    assert named.get("unreadable", "").startswith("node 1: ")
