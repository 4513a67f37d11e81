"""The restore drill as each node receives it: its units (as postgres, one node per run, the monthly drill only
with monthly archives), and its script's own logic (which node drills, how far replay got, what the metrics
say), run by python from the rendered file. The drill itself runs against the real cluster in the lab
(tests/lab/test_drill.py)."""

from __future__ import annotations

import re
import subprocess
import types
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Run, node_files, run_program, stack_config

DRILL = "/usr/local/lib/pgbackup/pgbackup-drill"
UNITS = "/etc/systemd/system/"
SEGMENT = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def monthly_run() -> Run:
    return run_program(stack_config(retention={"full": 4, "monthly": 12}, drill={"amcheck": True}))


def load(script: str, tmp_path: Path) -> types.ModuleType:
    """The rendered script as a module (its main() is not run)."""
    path = tmp_path / "pgbackup_drill.py"
    path.write_text(script)
    module = types.ModuleType("pgbackup_drill")
    exec(compile(script, str(path), "exec"), module.__dict__)  # noqa: S102 -- the script under test
    return module


@pytest.fixture(scope="module")
def scripts(monthly_run: Run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, types.ModuleType]:
    return {node: load(node_files(monthly_run, node)[DRILL]["content"], tmp_path_factory.mktemp(node))
            for node in ("pg1", "pg2", "pg3")}


def member(name: str, role: str = "replica", state: str = "streaming") -> dict[str, Any]:
    return {"name": name, "role": role, "state": state, "host": name, "port": 5432}


def test_every_node_has_the_script_and_both_drills_as_postgres(monthly_run: Run) -> None:
    for node in ("pg1", "pg2", "pg3"):
        files = node_files(monthly_run, node)
        assert files[DRILL]["mode"] == "0755"
        assert (files[DRILL]["owner"], files[DRILL]["group"]) == ("root", "root")
        for unit, repo in (("pgbackup-drill", 1), ("pgbackup-drill-monthly", 2)):
            service = files[f"{UNITS}{unit}.service"]["content"]
            assert re.search(r"^User=postgres$", service, re.M)
            assert re.search(r"^Group=postgres$", service, re.M)
            # No command of the unit runs as root (systemd's `+` / `!` prefixes).
            assert not re.search(r"^Exec\w+=[-@:]*[+!]", service, re.M), service
            assert re.search(rf"^ExecStart={DRILL} --repo={repo}$", service, re.M), service
            timer = files[f"{UNITS}{unit}.timer"]["content"]
            assert f"Unit={unit}.service" in timer
        calendars = {unit: re.findall(r"^OnCalendar=(.*)$", files[f"{UNITS}{unit}.timer"]["content"], re.M)
                     for unit in ("pgbackup-drill", "pgbackup-drill-monthly")}
        assert calendars == {"pgbackup-drill": ["Wed *-*-* 05:30:00"],
                             "pgbackup-drill-monthly": ["Sun *-*-08..14 06:00:00"]}


def test_the_drill_timers_are_enabled_on_every_node(monthly_run: Run) -> None:
    for node in ("pg1", "pg2", "pg3"):
        schedule = monthly_run.named(f"cluster-{node}-schedule").inputs["create"]
        assert "pgbackup-drill.timer" in schedule
        assert "pgbackup-drill-monthly.timer" in schedule


def test_without_monthly_archives_no_monthly_drill_and_its_units_are_retired() -> None:
    run = run_program(stack_config())
    files = node_files(run, "pg1")
    assert f"{UNITS}pgbackup-drill.timer" in files
    assert not [path for path in files if "drill-monthly" in path]
    schedule = run.named("cluster-pg1-schedule").inputs["create"]
    assert "disable --now --quiet pgbackup-drill-monthly.timer" in schedule


def test_the_metrics_file_is_made_for_postgres_and_the_scratch_directory_is_not_made_by_root(
        monthly_run: Run) -> None:
    tmpfiles = node_files(monthly_run, "pg1")["/etc/tmpfiles.d/pgbackup.conf"]["content"]
    assert "f /var/lib/prometheus/node-exporter/pgbackup-drill.prom 0644 postgres postgres -" in tmpfiles
    assert "pgbackup-drill " not in tmpfiles.replace("pgbackup-drill.prom", "")


def test_the_script_carries_the_configuration(scripts: dict[str, types.ModuleType]) -> None:
    drill = scripts["pg2"]
    assert (drill.NODE, drill.PINNED, drill.AMCHECK) == ("pg2", None, True)
    assert drill.SCRATCH == "/var/lib/postgresql/pgbackup-drill"
    assert drill.CLUSTER_URL == "http://pg2.example.net:8008/cluster"
    assert drill.PG_BIN == "/usr/lib/postgresql/15/bin"  # the test stack sets pgVersion 15


CASES = {
    "replicas: the first running one by name": (
        [member("pg1", "leader", "running"), member("pg3"), member("pg2")], None, "pg2"),
    "a stopped replica is passed over": (
        [member("pg1", "leader", "running"), member("pg2", state="stopped"), member("pg3")], None, "pg3"),
    "Patroni 3 calls the leader master? it is still not chosen": (
        [member("pg1", "master", "running"), member("pg2", state="running")], None, "pg2"),
    "no running replica: nobody, not the leader": (
        [member("pg1", "leader", "running"), member("pg2", state="starting")], None, None),
    "a single node: the leader": ([member("pg1", "leader", "running")], None, "pg1"),
    "pinned replica": ([member("pg1", "leader", "running"), member("pg2"), member("pg3")], "pg3", "pg3"),
    "pinned node is the leader now: a replica instead": (
        [member("pg3", "leader", "running"), member("pg1"), member("pg2")], "pg3", "pg1"),
    "pinned node down: nobody": ([member("pg1", "leader", "running"), member("pg2")], "pg3", None),
    "a standby cluster's leader is a leader": (
        [member("pg1", "standby_leader", "streaming"), member("pg2")], None, "pg2"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exactly_one_node_drills(case: str, scripts: dict[str, types.ModuleType]) -> None:
    members, pinned, expected = CASES[case]
    chosen = {node: script.choose(members, pinned) for node, script in scripts.items()}
    # Every node reads the same list and comes to the same answer, so at most one runs the drill.
    assert {name for name, _ in chosen.values()} == {expected}
    assert all(why for _, why in chosen.values())


def wal(timeline: int, segment: int) -> str:
    return f"{timeline:08X}{segment >> 8:08X}{segment & 0xFF:08X}"


def test_shortfall_is_zero_when_replay_reached_the_newest_segment(scripts: dict[str, types.ModuleType]) -> None:
    drill = scripts["pg1"]
    assert drill.segment_number(wal(1, 0x1A5), SEGMENT) == 0x1A5
    assert drill.parse_lsn("1/A5000028") == (1 << 32) + 0xA5000028
    newest = wal(2, 0x1A5)  # timeline 2: the copy follows the latest timeline, segments are counted alike
    # The newest segment ended with a switch: replay stops at the start of the next one.
    assert drill.shortfall(newest, drill.parse_lsn("1/A6000000"), SEGMENT) == 0
    # Replay ended inside the newest segment.
    assert drill.shortfall(newest, drill.parse_lsn("1/A5123456"), SEGMENT) == 0
    # A segment missing before it: replay stopped in 1/A3.
    reached = drill.parse_lsn("1/A3FFF000")
    assert drill.shortfall(newest, reached, SEGMENT) == (0x1A6 * SEGMENT) - reached > 2 * SEGMENT


def info(*backups: dict[str, Any], archives: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": "main", "status": {"code": 0}, "backup": list(backups), "archive": archives}]


def backup(label: str, stop: int, repo: int, db: int = 1, size: int = 1000) -> dict[str, Any]:
    return {"label": label, "timestamp": {"start": stop - 10, "stop": stop}, "type": "full",
            "database": {"id": db, "repo-key": repo}, "info": {"size": size}}


def test_the_newest_backup_of_the_repository_and_its_archive_end(scripts: dict[str, types.ModuleType]) -> None:
    drill = scripts["pg1"]
    archives = [{"database": {"id": 1, "repo-key": 1}, "max": wal(1, 0x40)},
                {"database": {"id": 1, "repo-key": 2}, "max": wal(1, 0x41)},
                {"database": {"id": 2, "repo-key": 1}, "max": wal(3, 0x90)}]
    found = drill.newest_backup(info(backup("A", 100, 1), backup("B", 300, 1, db=2, size=5),
                                     backup("M", 400, 2), archives=archives), 1)
    assert (found[0]["label"], found[1]) == ("B", wal(3, 0x90))
    found = drill.newest_backup(info(backup("A", 100, 1), backup("M", 400, 2), archives=archives), 2)
    assert (found[0]["label"], found[1]) == ("M", wal(1, 0x41))
    assert drill.newest_backup(info(backup("A", 100, 1), archives=archives), 2) == (None, None)
    assert drill.newest_backup([], 1) == (None, None)


def result(ok: bool, refused: str | None = None, repo: int = 1) -> dict[str, Any]:
    return {"ok": ok, "refused": refused, "repo": repo, "epoch": 1_800_000_000, "lastSuccessEpoch":
            1_799_000_000, "rtoSeconds": 0.0 if refused else 42.5, "restoredBytes": 123456789,
            "shortfallBytes": None if refused else (0 if ok else 4096),
            "phases": {} if refused else {"restore": 30.0, "replay": 12.5, "checks": 1.0, "cleanup": 0.5}}


def test_metrics_pass_promtool_and_say_what_happened(scripts: dict[str, types.ModuleType]) -> None:
    text = scripts["pg1"].prom_text({"1": result(True), "2": result(False, refused="no_space", repo=2)})
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert samples['pgbackup_drill_success{stanza="main",repo="1"}'] == "1"
    assert samples['pgbackup_drill_success{stanza="main",repo="2"}'] == "0"
    assert samples['pgbackup_drill_duration_seconds{stanza="main",repo="1"}'] == "42.5"
    assert 'pgbackup_drill_duration_seconds{stanza="main",repo="2"}' not in samples
    assert samples['pgbackup_drill_phase_duration_seconds{stanza="main",repo="1",phase="replay"}'] == "12.5"
    assert samples['pgbackup_drill_replay_shortfall_bytes{stanza="main",repo="1"}'] == "0"
    assert samples['pgbackup_drill_refused{stanza="main",repo="2",reason="no_space"}'] == "1"
    assert samples['pgbackup_drill_refused{stanza="main",repo="1",reason="no_space"}'] == "0"
    assert samples['pgbackup_drill_last_success_timestamp_seconds{stanza="main",repo="2"}'] == "1799000000"
    assert samples['pgbackup_drill_last_run_timestamp_seconds{stanza="main",repo="2"}'] == "1800000000"


def test_promtool_refuses_a_broken_metrics_text() -> None:
    check = subprocess.run(["promtool", "check", "metrics"], input='pgbackup_drill_success{repo="1" 1\n',
                           capture_output=True, text=True, check=False)
    assert check.returncode != 0


def test_the_copy_is_started_on_its_socket_only_with_nothing_that_reaches_the_cluster(
        scripts: dict[str, types.ModuleType]) -> None:
    import shlex

    options = dict(word.split("=", 1) for word in shlex.split(scripts["pg1"].start_options(2)) if word != "-c")
    scratch = "/var/lib/postgresql/pgbackup-drill"
    assert options["listen_addresses"] == ""
    assert options["unix_socket_directories"] == f"{scratch}/socket"
    assert options["data_directory"] == f"{scratch}/data"
    assert options["hba_file"] == f"{scratch}/pg_hba.conf"
    assert (options["archive_mode"], options["primary_conninfo"], options["primary_slot_name"]) == ("off", "", "")
    assert options["external_pid_file"] == ""
    # archive-get only, from the drill's repository, synchronous (no worker shares the node's spool).
    assert options["restore_command"] == (f"pgbackrest --stanza=main --repo=2 --pg1-path={scratch}/data "
                                          '--no-archive-async archive-get %f "%p"')
