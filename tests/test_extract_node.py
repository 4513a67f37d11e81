"""`pgbackup extract` on the node: the rendered drill program's --extract mode, run by python as on a node
with stand-ins for pgbackrest, pg_ctl, psql and pg_dump that record how they were called. What it restores
(only the database, to the time, from the chosen backup), how the copy starts (the drill's cut-off settings and
the recovery target), what it dumps, what it refuses and when, and that it leaves nothing behind: after the
fetch, on a refusal, when interrupted, and never touching the scratch directory of a drill holding the lock."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import pytest

from tests.harness import node_files, run_program, stack_config
from tests.test_drill_cut_off import NEUTRAL, PRODUCTION_CONF, constant, installed_postgres

DRILL = "/usr/local/lib/pgbackup/pgbackup-drill"
TARGET = "2026-11-20T14:15:00+00:00"
RESULT = "pgbackup-extract: result "

STAND_IN = r"""#!{python}
import json, os, sys, time
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["EXTRACT_CALLS"], "a") as calls:
    calls.write(json.dumps({{"tool": tool, "argv": args, "pgoptions": os.environ.get("PGOPTIONS"),
                            "pgdatabase": os.environ.get("PGDATABASE")}}) + "\n")
option = lambda name: next(a.split("=", 1)[1] for a in args if a.startswith(name + "="))
world = json.loads(os.environ["EXTRACT_WORLD"])
if tool == "pgbackrest" and args[-1] == "info":
    print(json.dumps([{{"name": "main", "backup": [{{"label": "20261120-020000F", "timestamp": {{"start": 1, "stop": 2}},
                        "database": {{"id": 1, "repo-key": 1}}, "info": {{"size": world["size"]}},
                        "database-ref": [{{"name": n, "oid": 1}} for n in world["backup_databases"]]}}]}}]))
elif tool == "pgbackrest" and args[-1] == "restore":
    time.sleep(world.get("restore_seconds", 0))
    with open(os.path.join(option("--pg1-path"), "postgresql.conf"), "w") as out:
        out.write("archive_mode = on\n")
elif tool == "pg_ctl":
    pid = os.path.join(args[args.index("-D") + 1], "postmaster.pid")
    if args[-1] == "start":
        open(pid, "w").close()
    elif os.path.exists(pid):
        os.unlink(pid)
elif tool == "psql":
    query = args[-1]
    if "pg_is_in_recovery" in query:
        print("f")
    elif "FROM pg_catalog.pg_database" in query:
        print("\n".join(world["databases"]))
    elif "json_agg" in query:
        print(json.dumps(world["relations"]))
elif tool == "pg_dump":
    with open(args[args.index("-f") + 1], "wb") as out:
        out.write(b"PGDMP" + bytes(range(256)) * 40)
"""

WORLD = {"size": 1000, "backup_databases": ["postgres", "template0", "template1", "appdb"],
         "databases": ["appdb", "postgres", "template1"],
         "relations": [["public", "orders"], ["public", "customers"], ["Sales", "Q1 \"final\""]]}


@pytest.fixture(scope="module")
def program() -> str:
    return node_files(run_program(stack_config()), "pg2")[DRILL]["content"]


class Node:
    """The program's places (scratch directory, lock) under a test directory, its stand-ins first on PATH."""

    def __init__(self, script: str, root: Path, **world: Any) -> None:
        self.root, self.scratch, self.lock = root, root / "scratch", root / "drill.lock"
        bin_dir = root / "bin"
        bin_dir.mkdir()
        for tool in ("pgbackrest", "pg_ctl", "psql", "pg_dump"):
            (bin_dir / tool).write_text(STAND_IN.format(python=sys.executable))
            (bin_dir / tool).chmod(0o755)
        for name, value in {"PG_BIN": str(bin_dir), "PG_DATA": str(root / "pgdata"), "SCRATCH": str(self.scratch),
                            "STATE": str(root / "drill.json"), "METRICS": str(root / "drill.prom"),
                            "LOCK": str(self.lock)}.items():
            script = constant(script, name, value)
        script, count = re.subn(r"^PROGRESS_SECONDS = .*$", "PROGRESS_SECONDS = 0.2", script, flags=re.M)
        assert count == 1
        self.program = root / "pgbackup-drill"
        self.program.write_text(script)
        self.calls_file = root / "calls.jsonl"
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                    "EXTRACT_CALLS": str(self.calls_file), "EXTRACT_WORLD": json.dumps({**WORLD, **world})}
        self.env.pop("PGOPTIONS", None)
        self.env.pop("NOTIFY_SOCKET", None)

    def start(self, database: str = "appdb", tables: list[list[str]] | None = None,
              label: str = "20261120-020000F") -> subprocess.Popen[str]:
        request = {"to": TARGET, "database": database, "tables": [["public", "orders"]] if tables is None else tables,
                   "set": label}
        argument = base64.urlsafe_b64encode(json.dumps(request).encode()).decode()
        return subprocess.Popen([sys.executable, str(self.program), f"--extract={argument}"], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        if not self.calls_file.exists():
            return []
        found = [json.loads(line) for line in self.calls_file.read_text().splitlines()]
        return [c for c in found if tool is None or c["tool"] == tool]

    def left(self) -> list[str]:
        return sorted(os.listdir(self.scratch)) if self.scratch.exists() else []


def until_result(process: subprocess.Popen[str]) -> tuple[dict[str, Any], list[str]]:
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):]), lines
    raise AssertionError(f"no result line: {lines} {process.stderr.read() if process.stderr else ''}")


def finished(process: subprocess.Popen[str]) -> tuple[dict[str, Any], int]:
    result, _ = until_result(process)
    return result, process.wait(timeout=30)


def test_restores_only_the_database_to_the_time_dumps_the_table_and_waits_for_the_fetch(
        program: str, tmp_path: Path) -> None:
    node = Node(program, tmp_path, restore_seconds=0.5)
    process = node.start()
    result, lines = until_result(process)
    # Ready: the dump is there, its size and sha256 on the result line; the copy is already gone.
    dump = node.scratch / "extract.dump"
    assert (result["ok"], result["ready"], result["refused"]) == (True, True, None), result
    assert result["bytes"] == dump.stat().st_size
    assert result["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert node.left() == ["extract.dump"]
    assert set(result["phases"]) >= {"restore", "replay", "dump"}
    assert any("restoring backup 20261120-020000F" in line for line in lines)
    assert any(line.startswith("pgbackup-extract: dumped ") for line in lines)
    # Progress while the restore runs.
    assert any(re.fullmatch(r"pgbackup-extract: restoring: \d+ bytes written", line) for line in lines), lines

    info = node.calls("pgbackrest")[0]["argv"]
    assert info[-1] == "info"
    assert "--set=20261120-020000F" in info
    assert "--repo=1" in info
    restore = node.calls("pgbackrest")[1]["argv"]
    assert restore[-1] == "restore"
    # Only that database, to the time, from the backup the command chose; archiving off in the copy.
    for option in ("--db-include=appdb", "--type=time", "--target=2026-11-20 14:15:00.000000+00",
                   "--target-action=promote", "--set=20261120-020000F", "--archive-mode=off", "--repo=1"):
        assert option in restore, (option, restore)
    assert f"--pg1-path={node.scratch}/data" in restore
    # The copy starts as the drill's does (every neutral setting), with the recovery target on top.
    start = next(c["argv"] for c in node.calls("pg_ctl") if c["argv"][-1] == "start")
    words = shlex.split(start[start.index("-o") + 1])
    settings = dict(word.split("=", 1) for word in words[1::2])
    for name, value in NEUTRAL.items():
        if name != "recovery_target_time":
            assert settings[name] == value, name
    assert settings["recovery_target_time"] == "2026-11-20 14:15:00.000000+00"
    assert settings["recovery_target_inclusive"] == "on"
    assert settings["restore_command"].endswith('--no-archive-async archive-get %f "%p"')
    # pg_dump: custom format, exactly that table, the database by PGDATABASE (never read as a conninfo).
    dumps = node.calls("pg_dump")
    assert len(dumps) == 1
    argv = dumps[0]["argv"]
    assert "-Fc" in argv
    assert "--strict-names" in argv
    assert argv[argv.index("-t") + 1] == '"public"."orders"'
    assert dumps[0]["pgdatabase"] == "appdb"
    assert "-c search_path=pg_catalog" in (dumps[0]["pgoptions"] or "")

    # The command fetched it and stops the unit: the program deletes the dump and exits 0.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert node.left() == []


def test_a_database_the_backup_does_not_hold_is_refused_before_the_restore(program: str, tmp_path: Path) -> None:
    node = Node(program, tmp_path)
    result, status = finished(node.start(database="shop"))
    assert (status, result["refused"], result["ok"]) == (3, "no_database", False)
    assert "database shop did not exist at 2026-11-20 14:15:00.000000+00" in result["reason"]
    assert "holds appdb, postgres, template0, template1" in result["reason"]
    assert [c["argv"][-1] for c in node.calls("pgbackrest")] == ["info"]
    assert node.left() == []


def test_not_enough_free_space_is_refused_before_the_restore(program: str, tmp_path: Path) -> None:
    node = Node(program, tmp_path, size=1 << 62)
    result, status = finished(node.start())
    assert (status, result["refused"]) == (3, "no_space")
    assert "bytes free, short of the 4611686018427387904 bytes of backup 20261120-020000F" in result["reason"]
    assert [c["argv"][-1] for c in node.calls("pgbackrest")] == ["info"]
    assert node.left() == []


def test_a_table_missing_at_the_time_is_refused_after_the_replay_listing_those_that_were_there(
        program: str, tmp_path: Path) -> None:
    node = Node(program, tmp_path)
    result, status = finished(node.start(tables=[["public", "orders"], ["public", "invoices"]]))
    assert (status, result["refused"]) == (3, "no_table")
    assert result["reason"] == ("at 2026-11-20 14:15:00.000000+00, database appdb had no public.invoices; its "
                                'tables then: Sales.Q1 "final", public.customers, public.orders')
    assert node.calls("pg_dump") == []
    assert node.left() == []
    assert [c for c in node.calls("pg_ctl") if c["argv"][-1] == "start"]  # said after the replay


def test_a_database_created_after_the_time_is_refused_after_the_replay(program: str, tmp_path: Path) -> None:
    """In the backup (it existed then), dropped before the time: the copy at the time says so."""
    node = Node(program, tmp_path, databases=["postgres", "template1"])
    result, status = finished(node.start())
    assert (status, result["refused"]) == (3, "no_database")
    assert "database appdb did not exist at 2026-11-20 14:15:00.000000+00 (databases then: postgres, template1)" \
        in result["reason"]
    assert node.calls("pg_dump") == []
    assert node.left() == []


def test_a_whole_database_without_tables(program: str, tmp_path: Path) -> None:
    node = Node(program, tmp_path)
    process = node.start(tables=[])
    result, _ = until_result(process)
    assert result["ok"] is True
    argv = node.calls("pg_dump")[0]["argv"]
    assert "-t" not in argv
    assert "--strict-names" not in argv
    assert not [c for c in node.calls("psql") if "json_agg" in c["argv"][-1]]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert node.left() == []


def test_while_a_drill_holds_the_lock_refused_and_its_copy_untouched(program: str, tmp_path: Path) -> None:
    node = Node(program, tmp_path)
    (node.scratch / "data").mkdir(parents=True)
    (node.scratch / "data" / "PG_VERSION").write_text("17\n")
    with open(node.lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result, status = finished(node.start())
        clean = subprocess.run([sys.executable, str(node.program), "--clean"], env=node.env, capture_output=True,
                               text=True, timeout=30, check=False)
    assert (status, result["refused"]) == (3, "busy")
    assert node.calls() == []
    assert clean.returncode == 0
    assert "holds" in clean.stdout
    assert node.left() == ["data"]  # the drill's copy, neither by the extract nor by --clean
    # Without the lock held, --clean (the unit's ExecStopPost) deletes what a killed run left.
    subprocess.run([sys.executable, str(node.program), "--clean"], env=node.env, check=True, timeout=30)
    assert node.left() == []


def test_stopped_during_the_restore_it_deletes_everything(program: str, tmp_path: Path) -> None:
    node = Node(program, tmp_path, restore_seconds=20)
    process = node.start()
    deadline = time.monotonic() + 20
    while not [c for c in node.calls("pgbackrest") if c["argv"][-1] == "restore"]:
        assert time.monotonic() < deadline, "the restore never started"
        time.sleep(0.05)
    assert "data" in node.left()
    process.send_signal(signal.SIGTERM)
    result, status = finished(process)
    assert status == 1
    assert result["ok"] is False
    assert result["ready"] is False
    assert node.left() == []
    assert node.calls("pg_dump") == []


@pytest.fixture(scope="module")
def real_postgres() -> Any:
    """A throwaway PostgreSQL (Debian's server binaries) on a Unix socket, as postgres; stopped afterwards."""
    binaries = [f"/usr/lib/postgresql/{v}/bin" for v in (17, 16, 15) if os.access(f"/usr/lib/postgresql/{v}/bin/initdb",
                                                                                 os.X_OK)]
    assert binaries, "no PostgreSQL server binaries: `make setup` installs Debian's postgresql"
    bin_dir = binaries[0]
    place = Path(tempfile.mkdtemp(prefix="pgbackup-extract-", dir="/tmp"))
    shutil.chown(place, "postgres")

    def as_postgres(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", "env", *(f"{k}={v}" for k, v in env.items()),
                               *argv], capture_output=True, text=True, cwd="/", timeout=60, check=False)

    assert as_postgres(f"{bin_dir}/initdb", "-D", f"{place}/data", "-A", "peer", "-N").returncode == 0
    started = as_postgres(f"{bin_dir}/pg_ctl", "-D", f"{place}/data", "-l", f"{place}/log", "-w", "-o",
                          f"-c listen_addresses='' -c unix_socket_directories={place} -p 5497", "start")
    assert started.returncode == 0, started.stderr
    try:
        yield bin_dir, place, as_postgres
    finally:
        as_postgres(f"{bin_dir}/pg_ctl", "-D", f"{place}/data", "-m", "immediate", "stop")
        shutil.rmtree(place)


def test_the_relations_query_and_the_dump_patterns_on_a_real_postgresql(program: str, real_postgres: Any,
                                                                         tmp_path: Path) -> None:
    """What the stand-ins cannot say: the program's catalog query runs (as its sessions run it, search_path
    pg_catalog) and lists the relations pg_dump -t takes, and its patterns name exactly one relation each,
    quotes and capitals included, in a database whose name looks like a connection string."""
    bin_dir, place, as_postgres = real_postgres
    drill = types.ModuleType("drill")
    exec(compile(program, "drill", "exec"), drill.__dict__)  # noqa: S102 -- the program under test
    database = "host=elsewhere shop"
    session = {"PGHOST": str(place), "PGPORT": "5497", "PGOPTIONS": "-c search_path=pg_catalog"}

    def sql(query: str, db: str) -> str:
        done = as_postgres("psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", query, PGDATABASE=db, **session)
        assert done.returncode == 0, done.stderr
        return str(done.stdout.strip())

    sql(f"CREATE DATABASE {drill.pattern('x', database).split('.')[1]}", "postgres")
    sql('CREATE SCHEMA "Sales"; CREATE TABLE "Sales"."Q1 ""final""" (a int); CREATE TABLE public.orders '
        "(id int PRIMARY KEY); CREATE TABLE public.\"Orders\" (b int); CREATE VIEW public.v AS SELECT 1; "
        "CREATE SEQUENCE public.s", database)
    assert json.loads(sql(drill.RELATIONS_QUERY, database)) == [
        ["Sales", 'Q1 "final"'], ["public", "Orders"], ["public", "orders"], ["public", "s"], ["public", "v"]]
    assert json.loads(sql(drill.RELATIONS_QUERY, "postgres")) == []
    dump = f"{place}/d.dump"
    done = as_postgres(f"{bin_dir}/pg_dump", "-Fc", "--no-password", "--strict-names", "-t",
                       drill.pattern("Sales", 'Q1 "final"'), "-t", drill.pattern("public", "orders"), "-f", dump,
                       PGDATABASE=database, **session)
    assert done.returncode == 0, done.stderr
    listing = subprocess.run([f"{bin_dir}/pg_restore", "-l", dump], capture_output=True, text=True, check=True,
                             timeout=30).stdout
    tables = sorted(line.split(" TABLE DATA ")[1].rsplit(" ", 1)[0] for line in listing.splitlines()
                    if " TABLE DATA " in line)
    assert tables == ['Sales Q1 "final"', "public orders"]  # not public."Orders"


def test_the_real_server_accepts_the_copys_command_line_with_its_recovery_target(program: str,
                                                                                    tmp_path: Path) -> None:
    """`postgres -C` (which starts nothing) reads the extract's command line over a restored configuration
    (pgBackRest's recovery settings in postgresql.auto.conf, production's postgresql.conf): the server takes
    the time as its one recovery target and the drill's neutral values (a recovery_target_* emptied after
    the time is set stops the server: "multiple recovery targets specified")."""
    found = installed_postgres()
    assert found is not None, "no PostgreSQL 15 or 17 server binary: `make setup` installs Debian's postgresql"
    _, postgres = found
    node = Node(program, tmp_path)
    process = node.start()
    until_result(process)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    start = next(c["argv"] for c in node.calls("pg_ctl") if c["argv"][-1] == "start")
    options = shlex.split(start[start.index("-o") + 1])
    data = Path(dict(word.split("=", 1) for word in options[1::2])["data_directory"])
    data.mkdir(parents=True)
    (data / "postgresql.conf").write_text(PRODUCTION_CONF)
    (data / "postgresql.auto.conf").write_text(
        "restore_command = 'pgbackrest --stanza=main archive-get %f \"%p\"'\n"
        "recovery_target_time = '2026-11-20 14:15:00+00'\nrecovery_target_action = 'promote'\n")

    def effective(name: str) -> str:
        result = subprocess.run([postgres, "-C", name, "-D", str(data), *options], capture_output=True, text=True,
                                timeout=30, check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        return result.stdout.rstrip("\n")

    assert effective("recovery_target_time") == "2026-11-20 14:15:00.000000+00"
    assert [effective(name) for name in ("recovery_target", "recovery_target_xid", "recovery_target_lsn")] == \
        ["", "", ""]
    assert (effective("recovery_target_action"), effective("recovery_target_inclusive")) == ("promote", "on")
    assert (effective("archive_mode"), effective("listen_addresses")) == ("off", "")
