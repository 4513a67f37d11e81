"""`pgbackup extract` on the operator's side, with fake nodes: its arguments, the node it picks (the restore
drill's rule), the refusals made before anything runs on a node, the flow (start, follow, fetch, check, stop),
an interrupt that stops the unit on the node, and the byte stream's bound."""

from __future__ import annotations

import hashlib
import json
import subprocess
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import pytest

from components.layout import PATHS
from pgbackup_cli import cli, extract, remote
from pgbackup_cli.cluster import Cluster
from pgbackup_cli.remote import Node, RemoteError, Result, script_text
from tests.harness import HEALTHY_INFO
from tests.test_drill import CASES, monthly_run, scripts  # noqa: F401 -- the drill programs' fixtures

INFO: dict[str, Any] = HEALTHY_INFO[0]  # full ended 1795313000, incr ended 1795399300
WAL_TIME = 1795400000.0
WITHIN = "2026-11-22 12:00:00+00"  # 1795348800: after the full backup's end, before the incremental's
DUMP = b"PGDMP" + bytes(range(256)) * 100


# -- arguments
def test_table_names_are_read_as_postgresql_reads_them() -> None:
    assert extract.parse_table("public.orders") == ("public", "orders")
    assert extract.parse_table("Public.Orders") == ("public", "orders")
    assert extract.parse_table('"My Schema"."Q1 ""final"""') == ("My Schema", 'Q1 "final"')
    assert extract.parse_table('"a.b".c') == ("a.b", "c")
    for bad in ("orders", "a.b.c", "public.", ".orders", '"unterminated.x', "a..b"):
        with pytest.raises(ValueError, match=r"expected SCHEMA\.NAME"):
            extract.parse_table(bad)


def test_the_request_is_refused_before_anything_is_reached(tmp_path: Path) -> None:
    out = tmp_path / "orders.dump"
    request = extract.parse_request(WITHIN, "appdb", ["public.orders", "PUBLIC.ORDERS"], out)
    assert request.tables == [("public", "orders")]
    decoded = json.loads(__import__("base64").urlsafe_b64decode(request.encoded("L")))
    assert decoded == {"to": "2026-11-22T12:00:00+00:00", "database": "appdb", "tables": [["public", "orders"]],
                       "set": "L"}
    for to, database, message in (("latest", "appdb", "not 'latest'"), ("2026-11-22 12:00", "appdb", "time zone"),
                                  (WITHIN, "", "not a database name"), (WITHIN, "x" * 64, "not a database name"),
                                  (WITHIN, "template0", "accepts no connections")):
        with pytest.raises(ValueError, match=message):
            extract.parse_request(to, database, [], out)
    out.write_bytes(b"earlier")
    with pytest.raises(ValueError, match="exists; give a new file's name"):
        extract.parse_request(WITHIN, "appdb", [], out)
    with pytest.raises(ValueError, match="no directory"):
        extract.parse_request(WITHIN, "appdb", [], tmp_path / "missing" / "x.dump")


def test_the_subcommand_and_its_exit_code_for_bad_arguments(tmp_path: Path) -> None:
    options = cli.parse(["extract", "-s", "lab", "--to", WITHIN, "--database", "appdb", "--table", "public.a",
                         "--table", "public.b", "--out", str(tmp_path / "x.dump"), "--node", "pg2"])
    assert (options.command, options.database, options.table, options.node) == (
        "extract", "appdb", ["public.a", "public.b"], "pg2")
    reached = []
    options.table = ["orders"]
    assert extract.command(lambda: reached.append(1), options, print) == 2  # type: ignore[arg-type,return-value,func-returns-value]
    assert reached == []
    with pytest.raises(SystemExit):
        cli.parse(["extract", "-s", "lab", "--to", WITHIN, "--out", "x.dump"])  # no --database


# -- the node
def test_the_node_is_the_one_the_drill_would_choose(scripts: dict[str, types.ModuleType]) -> None:  # noqa: F811
    """The drill's own cases, given as `patronictl list` reports members: the same choice."""
    roles = {"leader": "Leader", "master": "Leader", "replica": "Replica", "standby_leader": "Standby Leader"}
    for members, pinned, expected in CASES.values():
        listed = [{"Member": m["name"], "Role": roles[m["role"]], "State": m["state"]} for m in members]
        assert extract.choose_node(listed, pinned)[0] == expected == scripts["pg1"].choose(members, pinned)[0]


# -- the flow, with fake nodes
class FakeNode:
    """A node that answers the start script with `lines` (and `status`), streams `dump`, records scripts."""

    def __init__(self, name: str, lines: list[str], status: int = 0, dump: bytes = DUMP,
                 interrupt: bool = False) -> None:
        self.name, self.lines, self.status, self.dump, self.interrupt = name, lines, status, dump, interrupt
        self.scripts: list[str] = []

    def run(self, script: str, stdin: str = "", timeout: float = 600, on_output: Any = None) -> Result:
        self.scripts.append(script)
        if self.interrupt:
            raise KeyboardInterrupt
        for line in self.lines:
            on_output(line)
        return Result(self.status, "\n".join(self.lines), "")

    def check(self, script: str, stdin: str = "", timeout: float = 600, what: str = "") -> str:
        self.scripts.append(script)
        return ""

    def stream(self, script: str, sink: BinaryIO, limit: int, timeout: float = 3600) -> Result:
        self.scripts.append(script)
        sink.write(self.dump[:limit])
        return Result(0, "", "")


class FakeCluster:
    def __init__(self, node: FakeNode, newest_wal_time: float | None = WAL_TIME) -> None:
        self.stack = SimpleNamespace(drill=SimpleNamespace(node=None, path="/var/lib/postgresql/pgbackup-drill",
                                                           rto_budget_seconds=1800))
        self.nodes = {"pg1": node, "pg2": node}
        self.fake = node
        self.wal_time = newest_wal_time
        self.q = __import__("shlex").quote

    def members(self, prefer: str | None = None) -> list[dict[str, Any]]:
        return [{"Member": "pg1", "Role": "Leader", "State": "running"},
                {"Member": "pg2", "Role": "Replica", "State": "streaming"}]

    def node(self, name: str) -> FakeNode:
        return self.fake

    def info(self, node: str) -> dict[str, Any]:
        return INFO

    def newest_wal_time(self, node: str, info: dict[str, Any]) -> float | None:
        return self.wal_time

    reachable = Cluster.reachable  # the real check, over this fake's info and newest WAL time

    def verified_window(self) -> None:
        return None  # no verification has run: the window narrows nothing (tests/test_recover_interrupted.py)

    def as_postgres(self, command: str) -> str:
        return f"runuser -u postgres -- env --chdir=/ {command}"


def ready(**changes: Any) -> str:
    result = {"ok": True, "ready": True, "refused": None, "reason": "", "bytes": len(DUMP),
              "sha256": hashlib.sha256(DUMP).hexdigest(), "phases": {"restore": 3.0, "replay": 2.0, "dump": 1.0}}
    return extract.RESULT + json.dumps({**result, **changes})


def go(cluster: FakeCluster, out: Path, to: str = WITHIN) -> tuple[int, list[str]]:
    lines: list[str] = []
    options = SimpleNamespace(to=to, database="appdb", table=["public.orders"], out=out, node=None)
    return extract.command(lambda: cluster, options, lines.append), lines  # type: ignore[arg-type,return-value]


def test_a_time_outside_the_repository_is_refused_before_any_node_runs_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = FakeNode("pg2", [ready()])
    for to in ("2026-11-21 00:00:00+00", "2027-01-01 00:00:00+00"):  # before the oldest backup; after the WAL
        assert go(FakeCluster(node), tmp_path / "x.dump", to)[0] == 3
    assert node.scripts == []
    err = capsys.readouterr().err
    assert "older than the oldest backup's end" in err
    assert "newer than the newest archived WAL" in err
    assert not (tmp_path / "x.dump").exists()


def test_the_dump_is_fetched_checked_and_the_unit_stopped(tmp_path: Path) -> None:
    node = FakeNode("pg2", ["pgbackup-extract: restoring backup 20261122-020000F", ready()])
    out = tmp_path / "orders.dump"
    status, lines = go(FakeCluster(node), out)
    assert status == 0, lines
    assert out.read_bytes() == DUMP
    assert [p.name for p in tmp_path.iterdir()] == ["orders.dump"]  # no partial file left
    start, fetch, stop = node.scripts
    assert "systemd-run" in start
    assert "--unit=pgbackup-extract.service" in start
    assert "User=postgres" in start
    assert "ExecStopPost=" in start
    assert "--service-type=notify" in start
    assert "on pg2 (the first running replica by name), from backup 20261122-020000F;" in lines[0]
    assert fetch == ("runuser -u postgres -- env --chdir=/ head -c 25605 -- "
                     "/var/lib/postgresql/pgbackup-drill/extract.dump")
    assert stop == extract.stop_script()
    assert "systemctl stop pgbackup-extract.service" in stop
    assert "pg2: pgbackup-extract: restoring backup 20261122-020000F" in lines
    assert lines[-1].startswith(f"extracted into {out}: 25605 bytes in ")
    assert "restore 3.0 s, replay 2.0 s, dump 1.0 s, fetch " in lines[-1]


def test_a_dump_that_arrives_otherwise_is_not_kept(tmp_path: Path) -> None:
    node = FakeNode("pg2", [ready()], dump=DUMP[:-1] + b"X")
    out = tmp_path / "orders.dump"
    with pytest.raises(RemoteError, match="the dump arrived with 25605 bytes, sha256"):
        go(FakeCluster(node), out)
    assert list(tmp_path.iterdir()) == []
    assert node.scripts[-1] == extract.stop_script()  # the node's copy goes all the same


def test_a_refusal_on_the_node_is_exit_3_with_its_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reason = "at 2026-11-22 12:00:00.000000+00, database appdb had no public.orders; its tables then: public.x"
    node = FakeNode("pg2", [ready(ok=False, ready=False, refused="no_table", reason=reason)], status=1)
    assert go(FakeCluster(node), tmp_path / "x.dump")[0] == 3
    assert reason in capsys.readouterr().err
    assert len([s for s in node.scripts if "head -c" in s]) == 0


def test_ctrl_c_stops_the_unit_on_the_node(tmp_path: Path) -> None:
    node = FakeNode("pg2", [], interrupt=True)
    status, lines = go(FakeCluster(node), tmp_path / "x.dump")
    assert status == 130
    assert len(node.scripts) == 2
    assert node.scripts[-1] == extract.stop_script()
    assert lines[-1] == "pg2: stopped; nothing of the extract is left there"
    assert list(tmp_path.iterdir()) == []


def test_the_start_script_prints_the_result_line_even_when_the_follower_missed_it(tmp_path: Path) -> None:
    """Under bash with systemd-run, systemctl and journalctl stood in for: the journal's result line is
    printed at the end whatever the follower printed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = tmp_path / "pgbackup-drill"
    program.write_text("# --extract\n")
    stubs = {"systemd-run": "exit 0", "systemctl": "exit 1",
             "journalctl": f"case \" $* \" in *' -f '*) exit 0;; esac; echo step; echo '{ready()}'"}
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = extract.start_script(FakeCluster(FakeNode("pg2", [])), "UkVR")  # type: ignore[arg-type]
    script = script.replace(PATHS.drill_script, str(program))
    done = subprocess.run(["bash", "-c", script_text(script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=False)
    assert done.returncode == 0, done.stderr
    assert extract.result_of(done.stdout.splitlines()) == json.loads(ready()[len(extract.RESULT):])
    program.write_text("# an older drill\n")
    done = subprocess.run(["bash", "-c", script_text(script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=False)
    assert done.returncode == 4
    assert "has no --extract" in done.stderr


# -- the byte stream
class Channel:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def exec_command(self, command: str) -> None:
        pass

    def shutdown_write(self) -> None:
        pass

    def recv_ready(self) -> bool:
        return bool(self.data)

    def recv(self, size: int) -> bytes:
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return True

    def recv_exit_status(self) -> int:
        return 0


def test_the_stream_refuses_more_bytes_than_announced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(SimpleNamespace(name="pg2"), None)  # type: ignore[arg-type]
    sent = [b""]
    client = SimpleNamespace(get_transport=lambda: SimpleNamespace(open_session=lambda: Channel(sent[0])),
                             close=lambda: None)
    monkeypatch.setattr(node, "_client", lambda: client)
    sent[0] = b"x" * 100
    with open(tmp_path / "ok", "wb") as sink:
        assert node.stream("cat", sink, limit=100).status == 0
    assert (tmp_path / "ok").read_bytes() == b"x" * 100
    sent[0] = b"x" * 101
    with open(tmp_path / "more", "wb") as sink, pytest.raises(RemoteError, match="more than the 100 bytes"):
        node.stream("cat", sink, limit=100)


def test_a_scripts_output_is_bounded_and_its_lines_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Node.run shares the session loop with stream: its output is collected whole up to OUTPUT_LIMIT (lines
    handed to on_output as they come), and a node sending more is refused, not read into memory without end."""
    node = Node(SimpleNamespace(name="pg2"), None)  # type: ignore[arg-type]
    sent = [b""]
    client = SimpleNamespace(get_transport=lambda: SimpleNamespace(open_session=lambda: Channel(sent[0])),
                             close=lambda: None)
    monkeypatch.setattr(node, "_client", lambda: client)
    monkeypatch.setattr(remote, "OUTPUT_LIMIT", 1000)
    sent[0] = b"one\ntwo\n" + b"x" * 900
    lines: list[str] = []
    result = node.run("true", on_output=lines.append)
    assert (result.status, result.out, lines) == (0, "one\ntwo\n" + "x" * 900, ["one", "two", "x" * 900])
    sent[0] = b"x" * 1001
    with pytest.raises(RemoteError, match="more than 1000 bytes of output"):
        node.run("true")
