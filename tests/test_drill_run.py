"""The restore drill run for real (issue 26): the rendered script, by python, as the drill unit runs it, against
stand-ins for Patroni's REST API (the members), pgBackRest, pg_ctl, psql and pg_amcheck. Each phase failing in turn,
replay short of the archive's end, space refused, no backup, a node not chosen: the exit status, the state file,
the metrics and the scratch directory say what happened, and the copy never outlives the run."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgbackup_testkit.standins import Binaries, Patroni
from tests.harness import Run, node_files, run_program, stack_config

DRILL = "/usr/local/lib/pgbackup/pgbackup-drill"
SEGMENT = 16 * 1024 * 1024
ARCHIVE_MAX = "000000010000000000000006"


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    run: Run = run_program(stack_config(drill={"amcheck": True}))
    return {node: node_files(run, node)[DRILL]["content"] for node in ("pg1", "pg2")}


@pytest.fixture(scope="module")
def patroni() -> Iterator[Patroni]:
    api = Patroni()
    api.members = [{"name": "pg1", "role": "leader", "state": "running"},
                   {"name": "pg2", "role": "replica", "state": "streaming"}]
    try:
        yield api
    finally:
        api.close()


def info(size: int = 1000, backups: bool = True) -> str:
    db = {"id": 1, "repo-key": 1}
    return json.dumps([{
        "name": "main", "status": {"code": 0},
        "backup": [{"label": "20261206-010000F", "type": "full", "timestamp": {"start": 1, "stop": 2},
                    "info": {"size": size}, "database": db}] if backups else [],
        "archive": [{"id": "15-1", "min": "000000010000000000000001", "max": ARCHIVE_MAX, "database": db}],
    }])


class Drill:
    """The script of one node with its paths moved under tmp, the stand-ins, and what a run left."""

    def __init__(self, script: str, tmp: Path, patroni: Patroni, **constants: Any) -> None:
        self.tmp = tmp
        self.bins = Binaries(tmp / "bin", tmp / "standin", ("pgbackrest", "pg_ctl", "psql", "pg_amcheck"))
        self.scratch = tmp / "scratch"
        self.metrics = tmp / "drill.prom"
        self.metrics.write_text("")
        moved = {"CLUSTER_URL": f"{patroni.url}/cluster", "PG_BIN": str(tmp / "bin"), "PG_DATA": str(tmp / "pgdata"),
                 "SCRATCH": str(self.scratch), "STATE": str(tmp / "state.json"), "METRICS": str(self.metrics),
                 "LOCK": str(tmp / "drill.lock"), **constants}
        for name, value in moved.items():
            line = f"{name} = {value!r}"
            script, count = re.subn(rf"^{name} = .*$", line.replace("\\", "\\\\"), script, flags=re.M)
            assert count == 1, name
        self.path = tmp / "pgbackup-drill"
        self.path.write_text(script)
        # A healthy run: the newest backup, a restore, a copy that starts and reaches the archive's end.
        self.bins.answer("pgbackrest", "info", stdout=info())
        self.bins.answer("pgbackrest", "restore", effect="restore")
        self.bins.answer("pg_ctl", "start", effect="start")
        self.bins.answer("pg_ctl", "stop", effect="stop")
        self.bins.answer("psql", "pg_is_in_recovery", stdout="f\n")
        self.bins.answer("psql", "wal_segment_size", stdout=f"{SEGMENT}\n")
        self.bins.answer("psql", "pg_last_wal_replay_lsn", stdout="0/6000100\n")
        self.bins.answer("psql", "datname", stdout="app\npostgres\n")
        self.bins.answer("psql", "count(*)", stdout="42\n")

    def run(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["python3", str(self.path), "--repo=1"], capture_output=True, text=True, timeout=60,
                              env=self.bins.env(), check=False)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.tmp / "state.json").read_text())
        return state

    def sample(self, name: str, extra: str = "") -> str | None:
        match = re.search(rf'^{name}{{stanza="main",repo="1"{extra}}} (\S+)$', self.metrics.read_text(), re.M)
        return match.group(1) if match else None

    def assert_cleaned(self) -> None:
        """Nothing of the copy left: no file of the drill in the scratch directory, the copy stopped."""
        assert list(self.scratch.iterdir()) == [], list(self.scratch.iterdir())
        assert not self.bins.running(), "the copy was started and never stopped"


@pytest.fixture
def drill(rendered: dict[str, str], tmp_path: Path, patroni: Patroni) -> Drill:
    return Drill(rendered["pg2"], tmp_path, patroni)


def test_a_healthy_drill_succeeds_and_says_so(drill: Drill) -> None:
    result = drill.run()
    assert result.returncode == 0, result.stdout + result.stderr
    state = drill.state()
    assert (state["ok"], state["refused"]) == (True, None), state
    assert set(state["phases"]) == {"prepare", "restore", "replay", "checks", "cleanup"}
    assert state["shortfallBytes"] == 0
    assert state["replayedToArchiveEnd"] is True
    assert state["backup"] == "20261206-010000F"
    assert state["databases"] == ["app", "postgres"]
    assert drill.sample("pgbackup_drill_success") == "1"
    assert drill.sample("pgbackup_drill_replay_shortfall_bytes") == "0"
    restore = [c for c in drill.bins.calls("pgbackrest") if c[-1] == "restore"]
    assert len(restore) == 1
    assert "--repo=1" in restore[0]
    assert drill.bins.calls("pg_amcheck"), "drill.amcheck is set: pg_amcheck runs"
    drill.assert_cleaned()


# (stand-in, words, phase that fails): each command of each phase failing in turn.
FAILURES = [
    ("pgbackrest", ("info",), "prepare"),
    ("pgbackrest", ("restore",), "restore"),
    ("pg_ctl", ("start",), "replay"),
    ("psql", ("wal_segment_size",), "checks"),
    ("psql", ("count(*)",), "checks"),
    ("pg_amcheck", (), "checks"),
]


@pytest.mark.parametrize(("name", "words", "phase"), FAILURES, ids=[f"{n}-{'-'.join(w) or 'any'}"
                                                                    for n, w, _ in FAILURES])
def test_a_failing_command_fails_the_drill(drill: Drill, name: str, words: tuple[str, ...], phase: str) -> None:
    drill.bins.answer(name, *words, code=3, stderr="ERROR: stand-in failure\n")
    result = drill.run()
    assert result.returncode == 1, result.stdout + result.stderr
    state = drill.state()
    assert (state["ok"], state["refused"]) == (False, None), state
    assert "stand-in failure" in state["reason"], state["reason"]
    assert name in state["reason"], state["reason"]
    assert phase not in state["phases"], f"the {phase} phase is recorded as done: {state['phases']}"
    assert drill.sample("pgbackup_drill_success") == "0"
    assert "FAILED" in result.stdout
    drill.assert_cleaned()


def test_the_copy_stopping_during_recovery_fails_the_drill(drill: Drill) -> None:
    drill.bins.answer("pg_ctl", "start", effect="")  # "started", but no postmaster.pid: it stopped at once
    result = drill.run()
    assert result.returncode == 1
    assert "stopped during recovery" in drill.state()["reason"]
    drill.assert_cleaned()


def test_replay_short_of_the_archive_s_end_fails_the_drill(drill: Drill) -> None:
    drill.bins.answer("psql", "pg_last_wal_replay_lsn", stdout="0/4000100\n")  # in segment 4 of 6
    result = drill.run()
    assert result.returncode == 1, result.stdout
    state = drill.state()
    assert state["ok"] is False
    assert state["replayedToArchiveEnd"] is False
    assert state["shortfallBytes"] == 7 * SEGMENT - 0x4000100
    assert "replay stopped at 0/4000100" in state["reason"]
    assert ARCHIVE_MAX in state["reason"]
    assert drill.sample("pgbackup_drill_replay_shortfall_bytes") == str(7 * SEGMENT - 0x4000100)
    assert drill.sample("pgbackup_drill_success") == "0"
    drill.assert_cleaned()


def test_a_backup_larger_than_the_free_space_is_refused_before_anything_is_restored(drill: Drill) -> None:
    drill.bins.answer("pgbackrest", "info", stdout=info(size=1 << 60))
    result = drill.run()
    assert result.returncode == 1
    state = drill.state()
    assert state["refused"] == "no_space", state
    assert state["ok"] is False
    assert "bytes free" in state["reason"]
    assert not [c for c in drill.bins.calls("pgbackrest") if c[-1] == "restore"]
    assert not drill.bins.calls("pg_ctl")
    assert drill.sample("pgbackup_drill_refused", ',reason="no_space"') == "1"
    assert "refused" in result.stdout
    drill.assert_cleaned()


def test_a_repository_without_a_backup_is_refused(drill: Drill) -> None:
    drill.bins.answer("pgbackrest", "info", stdout=info(backups=False))
    result = drill.run()
    assert result.returncode == 1
    assert drill.state()["refused"] == "no_backup"
    assert drill.sample("pgbackup_drill_refused", ',reason="no_backup"') == "1"
    assert not [c for c in drill.bins.calls("pgbackrest") if c[-1] == "restore"]


def test_without_amcheck_pg_amcheck_never_runs(rendered: dict[str, str], tmp_path: Path, patroni: Patroni) -> None:
    drill = Drill(rendered["pg2"], tmp_path, patroni, AMCHECK=False)
    assert drill.run().returncode == 0
    assert drill.bins.calls("pg_amcheck") == []


def test_a_node_not_chosen_does_nothing(rendered: dict[str, str], tmp_path: Path, patroni: Patroni) -> None:
    drill = Drill(rendered["pg1"], tmp_path, patroni)  # the leader, with a running replica
    result = drill.run()
    assert result.returncode == 0, result.stderr
    assert "not this node (pg1)" in result.stdout
    assert drill.bins.calls() == []
    assert not (tmp_path / "state.json").exists()
    assert not drill.scratch.exists()
