"""The metrics collector run for real (issue 26): the rendered program, by python as root, in the node sandbox of
the adversary tests (pgbackup_testkit/adversary.py: a node's directories with Debian's owners), against stand-ins
for pgBackRest (a known `info`), psql (pg_stat_archiver), runuser and Patroni's REST API, with segments waiting in
pg_wal/archive_status. Each metric is read back from the file node_exporter reads."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from components.context import node_context as template_context
from components.render import render
from pgbackup_testkit.adversary import NodeSandbox, gid, uid
from pgbackup_testkit.standins import Binaries, Patroni
from tests.test_adversary_collectors import STUB_RUNUSER
from tests.test_hostile import valid_settings

SEGMENT = 16 * 1024 * 1024
DB1, DB2 = {"id": 1, "repo-key": 1}, {"id": 1, "repo-key": 2}


def sizes(size: object, delta: object, **more: object) -> dict[str, object]:
    """A backup's `info` as pgBackRest writes it: the database's size and what the backup stored."""
    return {"size": size, "delta": size, "repository": {"size": delta, "delta": delta, **more}}


INFO = [{"name": "main", "status": {"code": 0}, "archive": [], "backup": [
    {"label": "F1", "type": "full", "timestamp": {"start": 1000, "stop": 1100}, "database": DB1,
     "info": sizes(1000, 100)},
    {"label": "F2", "type": "full", "timestamp": {"start": 5000, "stop": 5100}, "database": DB1,
     "info": sizes(2000, 300, **{"delta-map": 20, "size-map": 20})},
    {"label": "I1", "type": "incr", "timestamp": {"start": 6000, "stop": 6050}, "database": DB1,
     "info": sizes(2100, 40)},
    {"label": "I2", "type": "incr", "timestamp": {"start": 3000, "stop": 3050}, "database": DB1,
     "info": sizes(2050, "7")},  # not as pgBackRest writes it: left out of the repository's sum
    {"label": "M1", "type": "full", "timestamp": {"start": 2000, "stop": 2200}, "database": DB2,
     "info": sizes(1500, 250)},
]}]


class Collector:
    def __init__(self, box: NodeSandbox, patroni: Patroni) -> None:
        self.box = box
        settings = valid_settings()
        ctx = dataclasses.replace(
            template_context(settings, settings.cluster.nodes[0]), paths=box.paths,
            primary_url=f"{patroni.url}/primary",
            cluster=settings.cluster.model_copy(update={"pg_data": box.pg_data}))
        self.bins = Binaries(box.root / "bin", box.root / "standin", ("pgbackrest", "psql"))
        self.program = box.root / "bin" / "pgbackup-metrics"
        self.program.write_text(render("monitoring/pgbackup-metrics.py.j2", ctx))
        (box.root / "bin" / "runuser").write_text(STUB_RUNUSER)
        (box.root / "bin" / "runuser").chmod(0o755)
        self.bins.answer("pgbackrest", "info", stdout=json.dumps(INFO))
        self.bins.answer("psql", "pg_stat_archiver", stdout="1795669000 4 1\n")
        self.ready = Path(box.pg_data) / "pg_wal" / "archive_status"

    def wal(self, name: str, age: float) -> None:
        """A segment's archive status file, `age` seconds old, postgres's (as PostgreSQL makes it)."""
        path = self.ready / name
        path.write_text("")
        os.chown(path, uid("postgres"), gid("postgres"))
        when = time.time() - age
        os.utime(path, (when, when))

    def run(self) -> dict[str, float]:
        """{name{labels}: value} of the file the collector wrote."""
        env = {**self.bins.env(), "LANG": "C.UTF-8"}
        result = subprocess.run(["/usr/bin/python3", str(self.program)], capture_output=True, text=True, env=env,
                                timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        text = Path(self.box.paths.metrics_file).read_text()
        return {match.group(1): float(match.group(2))
                for match in re.finditer(r"^(\w+\{[^}]*\}) (\S+)$", text, re.M)}


@pytest.fixture
def collector(node_sandbox: NodeSandbox, patroni: Patroni) -> Collector:
    patroni.status = 200
    return Collector(node_sandbox, patroni)


def test_backups_of_a_known_info(collector: Collector) -> None:
    metrics = collector.run()
    assert metrics['pgbackrest_stanza_status{stanza="main"}'] == 0
    assert metrics['pgbackrest_backup_count{stanza="main"}'] == 5
    newest = {key: value for key, value in metrics.items() if key.startswith("pgbackrest_last_backup_timestamp")}
    assert newest == {
        'pgbackrest_last_backup_timestamp_seconds{stanza="main",type="full",repo="1"}': 5100,
        'pgbackrest_last_backup_timestamp_seconds{stanza="main",type="incr",repo="1"}': 6050,
        'pgbackrest_last_backup_timestamp_seconds{stanza="main",type="full",repo="2"}': 2200,
    }


def of(metrics: dict[str, float], name: str) -> dict[str, float]:
    """{labels: value} of one metric's samples."""
    return {key[len(name):]: value for key, value in metrics.items() if key.startswith(name + "{")}


def test_the_newest_backups_size_duration_and_each_repositorys_storage(collector: Collector) -> None:
    metrics = collector.run()
    full1, incr1, full2 = ('{stanza="main",type="full",repo="1"}', '{stanza="main",type="incr",repo="1"}',
                           '{stanza="main",type="full",repo="2"}')
    assert of(metrics, "pgbackrest_last_backup_size_bytes") == {full1: 2000, incr1: 2100, full2: 1500}
    # What each stored: its repository delta, with the block map beside it (F2).
    assert of(metrics, "pgbackrest_last_backup_repository_bytes") == {full1: 320, incr1: 40, full2: 250}
    assert of(metrics, "pgbackrest_last_backup_duration_seconds") == {full1: 100, incr1: 50, full2: 200}
    # Every backup each repository holds (F1 + F2 + I1; I2's size is not a number), not only the newest.
    assert of(metrics, "pgbackrest_repository_backup_bytes") == {'{stanza="main",repo="1"}': 100 + 320 + 40,
                                                                '{stanza="main",repo="2"}': 250}
    text = Path(collector.box.paths.metrics_file).read_text()
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                           check=False)
    assert check.returncode in (0, 3), check.stdout + check.stderr  # 3: lint only (the older _count names)
    assert "parsing error" not in check.stderr, check.stderr
    # Each metric's samples in one group under its HELP and TYPE (the text format's rule, which promtool lets by).
    names = [line.split("{")[0] for line in text.splitlines() if not line.startswith("#")]
    groups = [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]
    assert len(groups) == len(set(groups)), groups


def test_what_info_does_not_give_as_pgbackrest_writes_it_has_no_sample(collector: Collector) -> None:
    """A newest backup whose sizes or times are missing, of another type, negative or reversed: its timestamp
    is still written, the values it lacks are not (never a crash, never a made-up number)."""
    info = json.loads(json.dumps(INFO))
    backups = info[0]["backup"]
    backups[1]["info"] = {"size": True, "repository": {"delta": 5, "delta-map": -1}}  # F2, the newest full
    backups[1]["timestamp"]["start"] = 5200  # after its stop
    backups[2]["info"] = ["not", "an", "object"]  # I1, the newest incr
    del backups[2]["timestamp"]["start"]
    backups[4]["info"] = {"size": 2 ** 64, "repository": {"delta": 1.5}}  # M1
    collector.bins.answer("pgbackrest", "info", stdout=json.dumps(info))
    metrics = collector.run()
    assert len(of(metrics, "pgbackrest_last_backup_timestamp_seconds")) == 3
    for name in ("pgbackrest_last_backup_size_bytes", "pgbackrest_last_backup_repository_bytes"):
        assert of(metrics, name) == {}, name
    assert of(metrics, "pgbackrest_last_backup_duration_seconds") == {'{stanza="main",type="full",repo="2"}': 200}
    assert of(metrics, "pgbackrest_repository_backup_bytes") == {'{stanza="main",repo="1"}': 100}  # F1 alone


def test_pgbackrest_info_failing_is_status_99_and_no_backup(collector: Collector) -> None:
    collector.bins.answer("pgbackrest", "info", code=1, stdout=json.dumps(INFO), stderr="ERROR: [039]: unreachable")
    metrics = collector.run()
    assert metrics['pgbackrest_stanza_status{stanza="main"}'] == 99
    assert metrics['pgbackrest_backup_count{stanza="main"}'] == 0
    assert not [key for key in metrics if key.startswith(("pgbackrest_last_backup", "pgbackrest_repository"))]


def test_the_wal_waiting_for_archiving(collector: Collector) -> None:
    collector.wal("000000010000000000000003.ready", 600)
    collector.wal("000000010000000000000004.ready", 60)
    collector.wal("000000010000000000000005.ready", 5)
    collector.wal("000000010000000000000002.done", 3600)  # archived: not waiting
    metrics = collector.run()
    assert metrics['pgbackrest_archive_queue_bytes{stanza="main"}'] == 3 * SEGMENT
    assert metrics['pgbackrest_wal_ready_count{stanza="main"}'] == 3
    assert 600 <= metrics['pgbackrest_wal_ready_oldest_age_seconds{stanza="main"}'] < 630


def test_nothing_waiting_is_zero(collector: Collector) -> None:
    metrics = collector.run()
    assert metrics['pgbackrest_archive_queue_bytes{stanza="main"}'] == 0
    assert metrics['pgbackrest_wal_ready_count{stanza="main"}'] == 0
    assert metrics['pgbackrest_wal_ready_oldest_age_seconds{stanza="main"}'] == 0
    assert abs(metrics['pgbackrest_metrics_collected_timestamp_seconds{stanza="main"}'] - time.time()) < 60


def test_the_leader_reports_its_archiver(collector: Collector) -> None:
    metrics = collector.run()
    assert metrics['pgbackrest_is_leader{stanza="main"}'] == 1
    assert metrics['pgbackrest_archive_last_archived_timestamp_seconds{stanza="main"}'] == 1795669000
    assert metrics['pgbackrest_archive_failed_total{stanza="main"}'] == 4
    assert metrics['pgbackrest_archive_check_failed{stanza="main"}'] == 1


@pytest.mark.parametrize("status", [503, 404])
def test_a_replica_is_no_leader_and_reports_no_archiver(collector: Collector, patroni: Patroni, status: int) -> None:
    patroni.status = status
    metrics = collector.run()
    assert metrics['pgbackrest_is_leader{stanza="main"}'] == 0
    assert not [key for key in metrics if "archive_last_archived" in key or "archive_check_failed" in key]
    assert collector.bins.calls("psql") == []
