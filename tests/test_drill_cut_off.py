"""The restore drill's copy is cut off from everything but itself: the rendered drill program, run by python
as on a node with stand-ins for pgbackrest, pg_ctl, psql and pg_amcheck that record how they were called,
starts the copy with every neutral setting on its command line, and its own connections pin what a database
or role could set again; a real `postgres -C` (where PostgreSQL is installed) shows that production's values
in the restored postgresql.conf and postgresql.auto.conf lose to them."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import node_files, run_program, stack_config

DRILL = "/usr/local/lib/pgbackup/pgbackup-drill"
SEGMENT = 16 * 1024 * 1024
Runs = dict[int, tuple[list[dict[str, Any]], Path]]

# What the copy must start with, whatever the restored configuration says (independent of the template's
# table: a setting dropped from it fails here).
NEUTRAL = {
    "listen_addresses": "", "bonjour": "off", "ssl": "off", "ssl_passphrase_command": "",
    "external_pid_file": "",
    "archive_mode": "off", "archive_command": "", "archive_cleanup_command": "", "recovery_end_command": "",
    "primary_conninfo": "", "primary_slot_name": "", "max_logical_replication_workers": "0",
    "shared_preload_libraries": "", "session_preload_libraries": "", "local_preload_libraries": "",
    "autovacuum": "off", "search_path": "pg_catalog", "synchronous_standby_names": "",
    "recovery_target": "", "recovery_target_lsn": "", "recovery_target_name": "", "recovery_target_time": "",
    "recovery_target_xid": "", "recovery_target_timeline": "latest", "recovery_target_action": "promote",
    "recovery_min_apply_delay": "0", "logging_collector": "off", "log_destination": "stderr",
}
SINCE = {"archive_library": (15, ""), "sync_replication_slots": (17, "off"), "event_triggers": (17, "off")}
# What production may set per database or role: every connection of the drill's sends it.
SESSION = {"search_path": "pg_catalog", "session_preload_libraries": "", "local_preload_libraries": ""}

# Production's configuration as the restore brings it back (Patroni's postgresql.conf, ALTER SYSTEM's
# postgresql.auto.conf): everything the copy must not do.
PRODUCTION_CONF = """\
listen_addresses = '*'
port = 5433
unix_socket_directories = '/var/run/postgresql'
hba_file = '/etc/postgresql/main/pg_hba.conf'
external_pid_file = '/var/run/postgresql/main.pid'
ssl = on
ssl_passphrase_command = '/usr/local/bin/unlock-key'
archive_mode = on
archive_command = 'pgbackrest --stanza=main archive-push %p'
archive_cleanup_command = 'pg_archivecleanup /mnt/archive %r'
recovery_end_command = 'curl -X POST https://ops.example.net/promoted'
primary_conninfo = 'host=pg2 user=replicator'
primary_slot_name = 'pg1'
max_logical_replication_workers = 8
shared_preload_libraries = 'pg_stat_statements'
session_preload_libraries = 'auto_explain'
local_preload_libraries = 'local_hook'
autovacuum = on
search_path = 'app, pg_catalog'
synchronous_standby_names = '*'
recovery_target_action = 'shutdown'
recovery_min_apply_delay = '1h'
hot_standby = off
cluster_name = 'main'
logging_collector = on
log_destination = 'syslog'
"""
PRODUCTION_AUTO_CONF = """\
shared_preload_libraries = 'pg_cron,pg_stat_statements'
recovery_target_time = '2026-01-01 00:00:00+00'
"""
PRODUCTION_LATER = {15: "archive_library = 'basic_archive'\n",
                    17: "archive_library = 'basic_archive'\nsync_replication_slots = on\nevent_triggers = on\n"}

# Stand-ins: each appends {"tool", "argv", "pgoptions"} to $DRILL_CALLS and acts just enough for the drill.
STAND_IN = r"""#!{python}
import json, os, sys
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.environ["DRILL_CALLS"], "a") as calls:
    calls.write(json.dumps({{"tool": tool, "argv": args, "pgoptions": os.environ.get("PGOPTIONS")}}) + "\n")
option = lambda name: next(a.split("=", 1)[1] for a in args if a.startswith(name + "="))
if tool == "pgbackrest" and args[-1] == "info":
    print(json.dumps([{{"name": "main", "backup": [{{"label": "F", "timestamp": {{"start": 1, "stop": 2}},
                        "database": {{"id": 1, "repo-key": 1}}, "info": {{"size": 1000}}}}],
                       "archive": [{{"database": {{"id": 1, "repo-key": 1}}, "max": "000000010000000000000003"}}]}}]))
elif tool == "pgbackrest" and args[-1] == "restore":
    data = option("--pg1-path")
    for name, text in json.loads(os.environ["DRILL_RESTORED"]).items():
        with open(os.path.join(data, name), "w") as out:
            out.write(text)
elif tool == "pg_ctl":
    pid = os.path.join(args[args.index("-D") + 1], "postmaster.pid")
    if args[-1] == "start":
        open(pid, "w").close()
    elif os.path.exists(pid):
        os.unlink(pid)
elif tool == "psql":
    query = args[-1]
    answers = {{"pg_is_in_recovery": "f", "wal_segment_size": "{segment}", "pg_last_wal_replay_lsn": "0/3000000",
               "FROM pg_database": "postgres\nappdb", "pg_catalog.pg_class": "1",
               "pg_event_trigger": 'ALTER EVENT TRIGGER "notify ops" DISABLE'}}
    print(next((answer for key, answer in answers.items() if key in query), ""))
"""


def rendered(version: int) -> str:
    config = stack_config(drill={"amcheck": True})
    config["cluster"]["pgVersion"] = version
    return node_files(run_program(config), "pg1")[DRILL]["content"]


@pytest.fixture(scope="module")
def scripts() -> dict[int, str]:
    return {version: rendered(version) for version in (14, 15, 17)}


@pytest.fixture(scope="module")
def runs(scripts: dict[int, str], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """One drill per version (15, 17): the stand-ins' calls, and its scratch directory."""
    places = {version: tmp_path_factory.mktemp(f"drill{version}") for version in (15, 17)}
    return {version: (drill_run(scripts[version], version, place), place / "scratch")
            for version, place in places.items()}


def constant(script: str, name: str, value: str) -> str:
    """The script with one of its top-level constants pointed at the test's own place."""
    changed, count = re.subn(rf"^{name} = .*$", f"{name} = {json.dumps(value)}", script, flags=re.M)
    assert count == 1, name
    return changed


def restored(version: int) -> dict[str, str]:
    """The files the stand-in restore writes into the copy's data directory."""
    return {"postgresql.conf": PRODUCTION_CONF + PRODUCTION_LATER.get(version, ""),
            "postgresql.auto.conf": PRODUCTION_AUTO_CONF, "standby.signal": ""}


def drill_run(script: str, version: int, tmp_path: Path) -> list[dict[str, Any]]:
    """Runs the rendered drill (`--repo=1`, SCRATCH = tmp_path/scratch) as a program with the stand-ins
    first on PATH; the calls they recorded, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("pgbackrest", "pg_ctl", "psql", "pg_amcheck"):
        (bin_dir / tool).write_text(STAND_IN.format(python=sys.executable, segment=SEGMENT))
        (bin_dir / tool).chmod(0o755)
    members = tmp_path / "cluster.json"
    members.write_text(json.dumps({"members": [{"name": "pg1", "role": "leader", "state": "running"}]}))
    for name, value in {"PG_BIN": str(bin_dir), "CLUSTER_URL": members.as_uri(), "PG_DATA": str(tmp_path / "pgdata"),
                        "SCRATCH": str(tmp_path / "scratch"), "STATE": str(tmp_path / "drill.json"),
                        "METRICS": str(tmp_path / "drill.prom"), "LOCK": str(tmp_path / "drill.lock")}.items():
        script = constant(script, name, value)
    program = tmp_path / "pgbackup-drill"
    program.write_text(script)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DRILL_CALLS": str(calls),
           "DRILL_RESTORED": json.dumps(restored(version))}
    env.pop("PGOPTIONS", None)
    result = subprocess.run([sys.executable, str(program), "--repo=1"], capture_output=True, text=True, env=env,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "drill.json").read_text())["ok"] is True
    return [json.loads(line) for line in calls.read_text().splitlines()]


def start_settings(calls: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The -c settings of the copy's start, in order, as the shell pg_ctl hands -o to reads them."""
    starts = [c["argv"] for c in calls if c["tool"] == "pg_ctl" and c["argv"][-1] == "start"]
    assert len(starts) == 1, starts
    words = shlex.split(starts[0][starts[0].index("-o") + 1])
    assert words[0::2] == ["-c"] * (len(words) // 2), words
    return [tuple(word.split("=", 1)) for word in words[1::2]]  # type: ignore[misc]


def expected(version: int) -> dict[str, str]:
    return {**NEUTRAL, **{name: value for name, (since, value) in SINCE.items() if version >= since}}


@pytest.mark.parametrize("version", [15, 17])
def test_every_neutral_setting_reaches_the_copys_command_line(version: int, runs: Runs) -> None:
    calls, scratch = runs[version]
    settings = start_settings(calls)
    names = [name for name, _ in settings]
    # Each once: a second -c of the same name would win over the first.
    assert len(names) == len(set(names)), names
    found = dict(settings)
    assert {name: found.get(name) for name in expected(version)} == expected(version)
    # Its own places, nothing of the cluster's.
    assert (found["data_directory"], found["hba_file"], found["unix_socket_directories"]) == \
        (str(scratch / "data"), str(scratch / "pg_hba.conf"), str(scratch / "socket"))
    assert found["restore_command"].startswith("pgbackrest --stanza=main --repo=1 ")


@pytest.mark.parametrize("version", [15, 17])
def test_every_connection_of_the_drill_pins_what_a_database_or_role_could_set_again(
        version: int, runs: Runs) -> None:
    calls, _ = runs[version]
    session = {**SESSION, **({"event_triggers": "off"} if version >= 17 else {})}
    clients = [c for c in calls if c["tool"] in ("psql", "pg_amcheck")]
    assert {c["tool"] for c in clients} == {"psql", "pg_amcheck"}
    for client in clients:
        words = (client["pgoptions"] or "").split(" ")
        assert words[0::2] == ["-c"] * (len(words) // 2), client
        assert dict(word.split("=", 1) for word in words[1::2]) == session, client
    # Without event_triggers (before 17), every event trigger of every database is disabled before
    # pg_amcheck's CREATE EXTENSION, the drill's only DDL; ALTER EVENT TRIGGER itself fires none.
    amcheck = next(i for i, c in enumerate(calls) if c["tool"] == "pg_amcheck")
    disabled = {c["argv"][c["argv"].index("-d") + 1] for c in calls[:amcheck]
                if c["tool"] == "psql" and c["argv"][-1].startswith("ALTER EVENT TRIGGER")}
    assert disabled == (set() if version >= 17 else {"postgres", "appdb"})
    # Never a statement that reaches a publisher (DROP SUBSCRIPTION drops its slot there).
    assert not [c for c in clients if "SUBSCRIPTION" in c["argv"][-1].upper()]


def test_archive_library_only_where_postgresql_has_it(scripts: dict[int, str]) -> None:
    """A parameter the server does not know stops it: archive_library only from 15, the 17 ones only
    from 17."""
    names = {}
    for version in (14, 15, 17):
        options = __import__("types").ModuleType("drill")
        exec(compile(scripts[version], "drill", "exec"), options.__dict__)  # noqa: S102 -- the script under test
        names[version] = {word.split("=", 1)[0] for word in shlex.split(options.start_options(1))[1::2]}
    assert "archive_library" not in names[14]
    assert {"archive_library"} <= names[15] - names[14]
    assert names[17] - names[15] == {"sync_replication_slots", "event_triggers"}


def installed_postgres() -> tuple[int, str] | None:
    for version in (17, 15):
        binary = f"/usr/lib/postgresql/{version}/bin/postgres"
        if os.access(binary, os.X_OK):
            return version, binary
    return None


def test_production_values_in_the_restored_configuration_lose_to_the_command_line(
        runs: Runs) -> None:
    """The real server of that version reads the restored postgresql.conf and postgresql.auto.conf and the
    drill's command line, and says what it would run with (`postgres -C`, which starts nothing): the
    neutral value of every setting, and every one of them a parameter it knows."""
    found = installed_postgres()
    assert found is not None, "no PostgreSQL 15 or 17 server binary: `make setup` installs Debian's postgresql"
    version, postgres = found
    calls, scratch = runs[version]
    settings = start_settings(calls)
    options = [word for name, value in settings for word in ("-c", f"{name}={value}")]
    # The copy's data directory as the restore left it (the drill deleted it at the end): postgresql.conf
    # is read from -D, postgresql.auto.conf from data_directory, the same directory.
    data = scratch / "data"
    assert dict(settings)["data_directory"] == str(data)
    data.mkdir()
    for name, text in restored(version).items():
        (data / name).write_text(text)

    def effective(name: str, *extra: str) -> str:
        # -C first: the server allows it as root (the fast suite runs as root in CI).
        result = subprocess.run([postgres, "-C", name, "-D", str(data), *extra], capture_output=True,
                                text=True, timeout=30, check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        return result.stdout.rstrip("\n")

    # Without the drill's command line, production's values are what the server would run with.
    assert effective("shared_preload_libraries") == "pg_cron,pg_stat_statements"
    assert effective("max_logical_replication_workers") == "8"
    assert effective("recovery_end_command") == "curl -X POST https://ops.example.net/promoted"
    # Every setting the copy must have neutral, and everything else on its command line, as given.
    for name, value in {**dict(settings), **expected(version)}.items():
        assert effective(name, *options) == value, name
