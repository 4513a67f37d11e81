"""`pgbackup extract` against the real cluster: a dropped table comes back as it was at a time, restored into the
live database under another name as the README's "A table was dropped or damaged" says, while the cluster keeps
serving and sees nothing (its timeline, leader and members unchanged, writes made meanwhile kept, nothing of
the copy archived); and an extract interrupted during its restore leaves nothing on the node.

The tests run in file order and share one lab.
"""

from __future__ import annotations

import base64
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lab.control import ROOT, Lab, sh
from tests.lab.test_drill import archive_keys, patroni_history

pytestmark = pytest.mark.lab

SCRATCH = "/var/lib/postgresql/pgbackup-drill"
UNIT = "pgbackup-extract.service"
DATABASE = "extract_shop"


def db_sql(lab: Lab, node: str, database: str, query: str) -> str:
    command = (f"cd /tmp && runuser -u postgres -- env PGDATABASE={shlex.quote(database)} psql -XAtq "
               f"-v ON_ERROR_STOP=1 -c {shlex.quote(query)}")
    return lab.ssh(node, command).stdout.strip()


def as_postgres(lab: Lab, node: str, command: str) -> str:
    return lab.ssh(node, f"cd /tmp && runuser -u postgres -- {command}").stdout


def members(lab: Lab) -> list[tuple[str, str, str, int]]:
    return sorted((str(m["Member"]), str(m["Role"]), str(m["State"]), int(m["TL"])) for m in lab.members())


def extract_node(lab: Lab) -> str:
    """The node the extract should choose, as the drill chooses: the first running replica by name."""
    return sorted(str(m["Member"]) for m in lab.members()
                  if m.get("Role") != "Leader" and m.get("State") in ("running", "streaming"))[0]


def nothing_left(lab: Lab, node: str) -> None:
    assert lab.ssh(node, f"ls -A {SCRATCH}").stdout.strip() == ""
    assert lab.ssh(node, f"systemctl is-active {UNIT}", check=False).stdout.strip() in ("inactive", "unknown", "")
    assert lab.ssh(node, "pgrep -u postgres -f 'cluster_name=pgbackup-drill'", check=False).returncode == 1


def noted_time(lab: Lab, leader: str) -> str:
    time.sleep(1.5)
    moment = lab.sql(leader, "SELECT now()")
    time.sleep(1.5)
    return moment


class Meanwhile:
    """While the extract runs: a write into another table every 0.3 s on the leader (each one it commits
    counted), and the members sampled every 2 s."""

    def __init__(self, lab: Lab, leader: str) -> None:
        self.lab, self.leader, self.committed = lab, leader, 0
        self.samples: list[list[tuple[str, str, str, int]]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        db_sql(lab, leader, DATABASE, "CREATE TABLE IF NOT EXISTS extract_writes (at timestamptz DEFAULT now())")
        self.before = int(db_sql(lab, leader, DATABASE, "SELECT count(*) FROM extract_writes"))
        self.threads = [threading.Thread(target=self.write), threading.Thread(target=self.sample)]

    def write(self) -> None:
        while not self.stop.is_set():
            try:
                db_sql(self.lab, self.leader, DATABASE, "INSERT INTO extract_writes DEFAULT VALUES")
                self.committed += 1
            except AssertionError as error:
                self.errors.append(str(error))
            self.stop.wait(0.3)

    def sample(self) -> None:
        while not self.stop.is_set():
            self.samples.append(members(self.lab))
            self.stop.wait(2)

    def __enter__(self) -> Meanwhile:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def test_a_dropped_table_comes_back_as_it_was_and_the_cluster_sees_nothing(lab: Lab, tmp_path: Path) -> None:
    leader = lab.leader()
    lab.sql(leader, f"DROP DATABASE IF EXISTS {DATABASE}")
    lab.sql(leader, f"CREATE DATABASE {DATABASE}")
    db_sql(lab, leader, DATABASE, "CREATE TABLE orders (id int PRIMARY KEY, batch text)")
    db_sql(lab, leader, DATABASE, "INSERT INTO orders SELECT g, 'before' FROM generate_series(1, 100) g")
    lab.ssh(leader, "systemctl start pgbackup-backup-full.service")
    db_sql(lab, leader, DATABASE, "INSERT INTO orders SELECT g, 'before' FROM generate_series(101, 120) g")
    target = noted_time(lab, leader)
    db_sql(lab, leader, DATABASE, "INSERT INTO orders SELECT g, 'after' FROM generate_series(121, 170) g")
    db_sql(lab, leader, DATABASE, "DROP TABLE orders")
    lab.wait_archived(lab.switch_wal(leader))
    state, history, archive = members(lab), patroni_history(lab, leader), archive_keys(lab)
    timelines = {tl for *_, tl in state}

    out = tmp_path / "orders.dump"
    with Meanwhile(lab, leader) as meanwhile:
        result = lab.pgbackup("extract", "--to", target, "--database", DATABASE, "--table", "public.orders",
                              "--out", str(out), timeout=900)
    print(result.stdout)
    chosen = extract_node(lab)
    assert f"on {chosen} (the first running replica by name)" in result.stdout
    for progress in ("restoring backup", "replayed to", "dumped"):
        assert progress in result.stdout, progress
    assert f"extracted into {out}: {out.stat().st_size} bytes in " in result.stdout
    assert out.read_bytes().startswith(b"PGDMP")
    nothing_left(lab, chosen)

    # The README's procedure: into a database of its own on the live cluster, moved into a schema `restored`,
    # and from there into the live database under that other name.
    blob = base64.b64encode(out.read_bytes()).decode()
    sh("ssh", "-F", lab.env["LAB_SSH_CONFIG"], leader, "base64 -d > /var/tmp/orders.dump && chmod 0644 "
       "/var/tmp/orders.dump", input=blob)
    lab.sql(leader, "DROP DATABASE IF EXISTS extract_shop_restore")
    lab.sql(leader, "CREATE DATABASE extract_shop_restore")
    as_postgres(lab, leader, "pg_restore --no-owner --no-acl -d extract_shop_restore /var/tmp/orders.dump")
    db_sql(lab, leader, "extract_shop_restore", "CREATE SCHEMA restored; ALTER TABLE public.orders SET SCHEMA restored")
    as_postgres(lab, leader, "bash -c 'pg_dump -Fc -d extract_shop_restore -n restored | "
                             f"pg_restore --no-owner --no-acl -d {DATABASE}'")
    lab.sql(leader, "DROP DATABASE extract_shop_restore")
    assert db_sql(lab, leader, DATABASE, "SELECT count(*), min(id), max(id), string_agg(DISTINCT batch, ',') "
                                         "FROM restored.orders") == "120|1|120|before"
    # The swap: the restored table back under its own name.
    db_sql(lab, leader, DATABASE, "ALTER TABLE restored.orders SET SCHEMA public")
    assert db_sql(lab, leader, DATABASE, "SELECT count(*) FROM public.orders") == "120"

    # The cluster saw nothing: the same members throughout, every write made meanwhile kept, no history file
    # (the copy's timeline) and no WAL of another timeline in the repository, the same Patroni history.
    assert meanwhile.errors == []
    assert meanwhile.committed > 5
    assert meanwhile.samples
    assert all(sample == state for sample in meanwhile.samples), meanwhile.samples
    assert int(db_sql(lab, leader, DATABASE, "SELECT count(*) FROM extract_writes")) == \
        meanwhile.before + meanwhile.committed
    assert members(lab) == state
    new = archive_keys(lab) - archive
    assert not [k for k in new if k.endswith(".history")], new
    assert all(k.rsplit("/", 1)[1][:8] == f"{max(timelines):08X}" for k in new), new
    assert patroni_history(lab, leader) == history


@pytest.mark.same_on_every_release
def test_an_extract_interrupted_during_its_restore_leaves_nothing_on_the_node(lab: Lab, tmp_path: Path) -> None:
    leader, chosen = lab.leader(), extract_node(lab)
    # Enough data in the database that its restore takes a while.
    db_sql(lab, leader, DATABASE, "CREATE TABLE IF NOT EXISTS ballast AS SELECT g, md5(g::text) AS h "
                                  "FROM generate_series(1, 1500000) g")
    lab.ssh(leader, "systemctl start pgbackup-backup-incr.service")
    target = noted_time(lab, leader)
    lab.wait_archived(lab.switch_wal(leader))
    out = tmp_path / "ballast.dump"
    process = subprocess.Popen(lab.pgbackup_argv("extract", "--to", target, "--database", DATABASE, "--out", str(out)),
                               cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "restoring backup" in line:
            break
    assert lab.ssh(chosen, f"systemctl is-active {UNIT}", check=False).stdout.strip() == "activating", seen
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=900)
    output = "".join(seen) + rest
    assert process.returncode == 130, output
    assert "dumped" not in output
    assert f"{chosen}: stopped; nothing of the extract is left there" in output
    assert not out.exists()
    assert not list(tmp_path.iterdir())
    nothing_left(lab, chosen)
    db_sql(lab, leader, DATABASE, "DROP TABLE ballast")
