"""The operator's command against hostile nodes: the state files `postgres` writes (and root's own recovery
state) read by `pgbackup status`, `drill` and `recover`, what a node's text does to the terminal, and the
separate confirmation of `recover --cleanup`.

Each node is a directory here: its scripts run for real under bash as root on this machine (runuser, python3,
the reader), with the node's /var/lib/pgbackrest (postgres's home), /var/lib/pgbackup (root's) and
/var/lib/postgresql mapped to directories of its own; systemctl is not run. Needs root and a `postgres` user.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from components.layout import PATHS
from pgbackup_cli import cli, operations, recover
from pgbackup_cli.cluster import RECOVER_STATE, Cluster
from pgbackup_cli.remote import Node, RemoteError, Result, script_text
from pgbackup_cli.stack import Stack, load_stack
from tests.harness import HEALTHY_INFO

ROOT = Path(__file__).resolve().parent.parent
HOME, STATE_DIR, PG = (os.path.dirname(PATHS.verify_state) + "/", PATHS.state_dir + "/", "/var/lib/postgresql/")
VERIFY, DRILL = (os.path.basename(PATHS.verify_state), os.path.basename(PATHS.drill_state))
ESC = "\x1b]0;owned\x07\x1b[2J\x1b[31m"  # set the window title, clear the screen, red
SENTINEL = "SENTINEL-8d1f"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None,
                                reason="runs the node's reader for real: needs root, runuser and a postgres user")


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def verify_state(seconds: float, ok: bool = True, **changes: Any) -> dict[str, Any]:
    errors = {"checksum": 0 if ok else 2, "missing_wal": 0, "other": 0}
    return {"time": iso(seconds), "ok": ok, "errors": errors, "repos": {}, "node": "x", **changes}


def drill_state(seconds: float, **changes: Any) -> dict[str, Any]:
    return {"time": iso(seconds), "epoch": int(seconds), "ok": True, "node": "x", "repo": 1, "reason": "",
            "refused": None, "phases": {"restore": 10.5, "replay": 2.0, "cleanup": 0.1}, "rtoSeconds": 12.5,
            "restoredBytes": 4096, "replayedToArchiveEnd": True, **changes}


class FakeNode(Node):
    """A node whose scripts run here (see the module's docstring); `on_start(node)` runs for `systemctl start`."""

    def __init__(self, name: str, base: Path, on_start: Callable[[FakeNode], None] | None = None) -> None:
        self.name, self.config = name, SimpleNamespace(host=f"{name}.example")  # type: ignore[assignment]
        self.home, self.state, self.pg = base / "home", base / "state", base / "pg"
        for directory in (self.home, self.state, self.pg):
            directory.mkdir()
        shutil.chown(self.home, "postgres", "postgres")
        shutil.chown(self.pg, "postgres", "postgres")
        self.state.chmod(0o700)
        self.map = {HOME: f"{self.home}/", STATE_DIR: f"{self.state}/", PG: f"{self.pg}/"}
        self.on_start = on_start

    def plant(self, name: str, how: str | dict[str, Any], target: str = "") -> None:
        """As postgres, in the node's /var/lib/pgbackrest: a file with this JSON, or a FIFO, link or sparse file."""
        path = shlex.quote(str(self.home / name))
        command = {"fifo": f"mkfifo {path}", "link": f"ln -s {shlex.quote(target)} {path}",
                   "sparse": f"truncate -s 10G {path}"}.get(how) if isinstance(how, str) else None
        text = ""
        if command is None:
            text = how if isinstance(how, str) else json.dumps(how)
            command = f"cat >{path}"
        subprocess.run(["runuser", "-u", "postgres", "--", "sh", "-c", command], input=text, text=True, check=True)

    def run(self, script: str, stdin: str = "", timeout: float = 600,
            on_output: Callable[[str], None] | None = None) -> Result:
        if script.startswith("systemctl "):
            if script.startswith("systemctl start") and self.on_start is not None:
                self.on_start(self)
            return Result(0, "", "")
        for theirs, ours in self.map.items():
            script, stdin = script.replace(theirs, ours), stdin.replace(theirs, ours)
        # 4 GB of memory at most: a reader that follows a link to /dev/zero fails instead of eating the machine.
        done = subprocess.run(["bash", "-c", "ulimit -v 4194304\n" + script_text(script)], input=stdin,
                              capture_output=True, text=True, timeout=20, check=False)
        out, err = done.stdout, done.stderr
        for theirs, ours in self.map.items():
            out, err = out.replace(ours, theirs), err.replace(ours, theirs)
        return Result(done.returncode, out, err)


@functools.cache
def lab_stack() -> Stack:
    return load_stack("lab", ROOT)


class FakeCluster(Cluster):
    """The lab stack's settings; Patroni, pgbackrest info and psql answer as a healthy cluster led by the
    first node; everything else (the node report, the state files, cleanup) runs on the FakeNodes."""

    def __init__(self, nodes: list[FakeNode]) -> None:
        self.stack = lab_stack()
        self.nodes = {node.name: node for node in nodes}  # type: ignore[misc]
        self.q = shlex.quote

    def members(self, prefer: str | None = None) -> list[dict[str, Any]]:
        return [{"Member": name, "Role": "Leader" if i == 0 else "Replica",
                 "State": "running" if i == 0 else "streaming", "TL": 3, "Lag in MB": 0}
                for i, name in enumerate(self.nodes)]

    def info(self, node: str, timeout: int = 120) -> dict[str, Any]:
        return copy.deepcopy(HEALTHY_INFO[0])

    def sql(self, node: str, query: str) -> str:
        now = time.time()
        return json.dumps({"lastArchivedWal": "000000030000000000000009", "lastArchivedTime": now - 10,
                           "lastFailedWal": None, "lastFailedTime": None, "failedCount": 0})


@pytest.fixture
def nodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeNode]]:
    base = Path(tempfile.mkdtemp(prefix="pgbackup-reads-", dir="/tmp"))  # postgres must reach it
    base.chmod(0o755)
    made = []
    for name in ("pgnode1", "pgnode2", "pgnode3"):
        (base / name).mkdir()
        made.append(FakeNode(name, base / name))
    secret = base / "secret"
    secret.mkdir(mode=0o700)
    (secret / "root-only.json").write_text(json.dumps(verify_state(time.time(), reason=SENTINEL, node=SENTINEL)))
    (secret / "root-only.json").chmod(0o600)
    (secret / "drill.json").write_text(json.dumps(drill_state(time.time() + 60, reason=SENTINEL)))
    (secret / "drill.json").chmod(0o600)
    cluster = FakeCluster(made)
    monkeypatch.setattr(cli, "Cluster", lambda stack, key: cluster)
    monkeypatch.setattr(cli, "load_stack", lambda name, cwd: lab_stack())
    yield made
    shutil.rmtree(base)


def pgbackup(*args: str) -> list[str]:
    return [*args[:1], "-s", "lab", "-C", str(ROOT), *args[1:]]


def status_json(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    began = time.monotonic()
    code = cli.main(pgbackup("status", "--json"))
    assert time.monotonic() - began < 10
    out = capsys.readouterr().out
    return code, json.loads(out), out


HOSTILE = {  # what postgres plants at a state file, and what status says of it
    "fifo": ("", "not a regular file"),  # root's open() waited for a writer: status hung
    "/dev/zero": ("", "a symbolic link, not followed"),  # root read forever
    "sparse": ("", "too large (10737418240 bytes, at most 65536)"),  # root read 10 GB
    "root-only": ("{secret}/root-only.json", "a symbolic link, not followed"),  # root printed it in --json
}


@pytest.mark.parametrize("plants", [(("fifo", "/dev/zero"), ("sparse", "root-only")),
                                    (("root-only", "sparse"), ("/dev/zero", "fifo"))])
def test_status_reads_hostile_state_files_quickly_never_as_root(
        nodes: list[FakeNode], capsys: pytest.CaptureFixture[str], plants: tuple[tuple[str, str], ...]) -> None:
    """pgnode2's and pgnode3's verify and drill files are each a FIFO, a link to /dev/zero, a 10 GB sparse file
    or a link to a root-only file holding a result; pgnode1's verification is a good one."""
    secret = str(nodes[0].home.parent.parent / "secret")
    nodes[0].plant(VERIFY, verify_state(time.time() - 600))
    expected = []
    for node, kinds in zip(nodes[1:], plants, strict=True):
        for name, kind in zip((VERIFY, DRILL), kinds, strict=True):
            target, why = HOSTILE[kind]
            target = target.format(secret=secret).replace("root-only", "drill" if name == DRILL else "root-only")
            node.plant(name, "link" if kind in ("/dev/zero", "root-only") else kind, target or kind)
            expected.append(f"{node.name}: {HOME}{name} unreadable: {why}")
    code, doc, out = status_json(capsys)
    assert SENTINEL not in out
    assert [n["reachable"] for n in doc["nodes"]] == [True, True, True]  # the node answered; its files did not
    assert sorted(p for p in doc["problems"] if "unreadable" in p) == sorted(expected)
    assert doc["cluster"]["lastVerify"]["node"] == "pgnode1"
    assert doc["cluster"]["lastDrill"] is None
    assert code == 1


MALFORMED_VERIFY: list[tuple[Any, str]] = [
    ("[" * 30000 + "]" * 30000, "nested deeper than 16 levels"),  # json.load's RecursionError
    ({"time": [2026], "ok": True, "errors": {}}, "time: expected an ISO 8601 time, got list"),
    ({"time": "2026-13-01T00:00:00Z"}, "time: '2026-13-01T00:00:00Z' is not an ISO 8601 time"),
    ({"errors": ["checksum"]}, "errors: expected {checksum, missing_wal, other}, got list"),
    ({"errors": {"checksum": "0", "missing_wal": 0, "other": 0}}, "checksum: expected a count, got str"),
    ({"ok": "yes"}, "ok: expected true or false, got str"),
]
MALFORMED_DRILL: list[tuple[Any, str]] = [
    ({"phases": {"restore": [1]}}, "phases.restore: expected seconds, got list"),
    ({"rtoSeconds": "12"}, "rtoSeconds: expected seconds, got str"),  # the table's format crashed on it
    ({"repo": "1"}, "repo: expected a repository number, got str"),
    ({"reason": {"a": 1}}, "reason: expected text, got dict"),
    ({"time": "2026-12-40T00:00:00Z"}, "is not an ISO 8601 time"),
    ("{not json", "Expecting property name"),
]


@pytest.mark.parametrize("first", [0, 3])
def test_malformed_fields_read_as_unreadable_and_the_table_prints(
        nodes: list[FakeNode], capsys: pytest.CaptureFixture[str], first: int) -> None:
    now = time.time()
    for node, (verify, _), (drill, _) in zip(nodes, MALFORMED_VERIFY[first:first + 3],
                                             MALFORMED_DRILL[first:first + 3], strict=True):
        node.plant(VERIFY, {**verify_state(now - 60), **verify} if isinstance(verify, dict) else verify)
        node.plant(DRILL, {**drill_state(now - 60), **drill} if isinstance(drill, dict) else drill)
    code, doc, _ = status_json(capsys)
    assert [n["reachable"] for n in doc["nodes"]] == [True, True, True]
    for node, (_, why_verify), (_, why_drill) in zip(nodes, MALFORMED_VERIFY[first:first + 3],
                                                    MALFORMED_DRILL[first:first + 3], strict=True):
        said = [p for p in doc["problems"] if p.startswith(f"{node.name}: ")]
        assert said[0].startswith(f"{node.name}: {PATHS.verify_state} unreadable: "), said
        assert why_verify in said[0], said
        assert said[1].startswith(f"{node.name}: {PATHS.drill_state} unreadable: "), said
        assert why_drill in said[1], said
    assert (doc["cluster"]["lastVerify"], doc["cluster"]["lastDrill"], code) == (None, None, 1)
    assert cli.main(pgbackup("status")) == 1  # the table
    table = capsys.readouterr().out
    assert "last verify: none recorded" in table
    assert f"  - pgnode2: {PATHS.verify_state} unreadable: " in table


def test_the_newest_result_is_the_newest_in_real_time_and_a_future_one_is_refused(
        nodes: list[FakeNode], capsys: pytest.CaptureFixture[str]) -> None:
    """The leader's verification failed a minute ago; a replica's success dated 2099 (a forged or broken clock)
    sorted last as text and hid it. A time more than FUTURE_SECONDS after the operator's clock is refused."""
    now = time.time()
    nodes[0].plant(VERIFY, verify_state(now - 60, ok=False))
    nodes[1].plant(VERIFY, verify_state(now, time="2099-01-01T00:00:00Z"))
    code, doc, _ = status_json(capsys)
    last = doc["cluster"]["lastVerify"]
    assert (last["node"], last["ok"]) == ("pgnode1", False), last
    assert any(p.startswith(f"pgnode2: {PATHS.verify_state} unreadable: time: 2099-01-01T00:00:00Z is in the "
                            "future") for p in doc["problems"]), doc["problems"]
    assert any(p.startswith("the last verify (") and "on pgnode1) failed: checksum 2" in p for p in doc["problems"])
    assert code == 1


def test_a_zone_offset_time_compares_by_its_instant(nodes: list[FakeNode], capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    nodes[0].plant(VERIFY, verify_state(now - 60, ok=False))  # e.g. 12:00:00Z
    earlier = time.strftime("%Y-%m-%dT%H:%M:%S+09:00", time.gmtime(now - 3600 + 9 * 3600))  # 20:00+09:00 = 11:00Z
    nodes[1].plant(VERIFY, verify_state(now, time=earlier))
    _, doc, _ = status_json(capsys)
    assert (doc["cluster"]["lastVerify"]["node"], doc["cluster"]["lastVerify"]["ok"]) == ("pgnode1", False)


def test_node_text_reaches_the_terminal_escaped(nodes: list[FakeNode], capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    nodes[0].plant(VERIFY, verify_state(now - 60))
    nodes[1].plant(DRILL, drill_state(now - 30, ok=False, reason=f"restore failed {ESC}\r\u202eevil"))
    assert cli.main(pgbackup("status")) == 1
    table = capsys.readouterr().out
    assert not {"\x1b", "\r", "\u202e"} & set(table)
    assert "restore failed \\x1b]0;owned\\x07\\x1b[2J\\x1b[31m\\x0d\\u202eevil" in table
    cli.main(pgbackup("status", "--json"))
    assert "\x1b" not in capsys.readouterr().out


def on_start_write(**changes: Any) -> Callable[[FakeNode], None]:
    """The drill, as `systemctl start` runs it on this node: its result, written now."""
    def write(node: FakeNode) -> None:
        node.plant(DRILL, drill_state(time.time(), **changes))
    return write


def test_drill_prints_a_nodes_text_escaped(nodes: list[FakeNode], capsys: pytest.CaptureFixture[str]) -> None:
    nodes[1].on_start = on_start_write(ok=False, reason=f"replay stopped {ESC}")
    assert cli.main(pgbackup("drill")) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "drill on pgnode2 from repo1: FAILED; RTO 12.5 s (restore 10.5 s, replay 2.0 s, cleanup 0.1 s); " \
           "restored 4096 bytes; replay stopped \\x1b]0;owned\\x07\\x1b[2J\\x1b[31m" in out


def test_drill_with_malformed_fields_says_unreadable(nodes: list[FakeNode]) -> None:
    """Each node writes a malformed result (the service starts on every node); each is said, none crashes."""
    for node, (changes, _) in zip(nodes, MALFORMED_DRILL, strict=False):
        node.on_start = on_start_write(**changes)
    lines: list[str] = []
    assert operations.drill(FakeCluster(nodes), lines.append) == 1
    for node, (_, why) in zip(nodes, MALFORMED_DRILL, strict=False):
        assert any(line.startswith(f"{node.name}: {PATHS.drill_state} unreadable: ") and why in line
                   for line in lines), lines
    assert lines[-1].startswith("no drill result newer than the start")


def test_drill_never_follows_a_link_to_a_root_only_result(nodes: list[FakeNode],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    secret = nodes[0].home.parent.parent / "secret" / "drill.json"
    nodes[1].on_start = lambda node: node.plant(DRILL, "link", str(secret))
    assert cli.main(pgbackup("drill")) == 1
    out = capsys.readouterr().out
    assert SENTINEL not in out
    assert f"pgnode2: {PATHS.drill_state} unreadable: a symbolic link, not followed" in out


def test_a_fifo_as_root_own_recovery_state_is_refused_quickly(nodes: list[FakeNode]) -> None:
    os.mkfifo(nodes[0].state / "recover.json")
    began = time.monotonic()
    with pytest.raises(RemoteError, match=f"pgnode1: {RECOVER_STATE} unreadable: not a regular file"):
        recover.find_state(FakeCluster(nodes))
    assert time.monotonic() - began < 10


def test_root_own_recovery_state_is_read_as_root(nodes: list[FakeNode]) -> None:
    state = {**recover.Plan(stack="lab", target="latest", leader="pgnode1", replicas=["pgnode2"], scope="lab",
                            backup="b", holds="h", pg_data="/d", aside={}, old_timeline=1).to_json(), "finished": True}
    (nodes[0].state / "recover.json").write_text(json.dumps(state))
    plan = recover.find_state(FakeCluster(nodes))
    assert plan is not None
    assert plan.finished


# -- `recover --cleanup`: its own run, its own confirmation
def aside(node: FakeNode) -> Path:
    path = node.pg / "17" / "main.before-pitr-20261122T130000Z"
    path.mkdir(parents=True)
    for directory in (path.parent, path):  # postgres's, as on a Debian node
        shutil.chown(directory, "postgres", "postgres")
    return path


@pytest.mark.parametrize("argv", [
    ["recover", "-s", "lab", "--to", "latest", "--yes", "--cleanup"],  # deleted the old data in the same run
    ["recover", "-s", "lab", "--to", "latest", "--cleanup"],
    ["recover", "-s", "lab", "--cleanup", "--yes"],  # --yes confirms a recovery, not a deletion
    ["recover", "-s", "lab", "--to", "latest", "--yes-delete-old-data"],
])
def test_cleanup_is_a_run_of_its_own(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.parse(argv)
    assert exit_.value.code == 2


def test_cleanup_without_its_confirmation_deletes_nothing(nodes: list[FakeNode], monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    old = [aside(node) for node in nodes]
    monkeypatch.setattr("sys.stdin", SimpleNamespace(isatty=lambda: False))
    assert cli.main(pgbackup("recover", "--cleanup")) == 3
    assert "no terminal to confirm the cleanup on: add --yes-delete-old-data" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")  # the recovery's word is not the stack's name
    assert cli.main(pgbackup("recover", "--cleanup")) == 3
    assert all(path.is_dir() for path in old)
    asked: list[str] = []

    def answer(prompt: str) -> str:
        asked.append(prompt)
        return "lab"

    monkeypatch.setattr("builtins.input", answer)
    assert cli.main(pgbackup("recover", "--cleanup")) == 0
    assert asked == ["Type the stack's name (lab) to delete them: "]
    assert not any(path.exists() for path in old)
    old = [aside(node) for node in nodes]
    assert cli.main(pgbackup("recover", "--cleanup", "--yes-delete-old-data")) == 0
    assert not any(path.exists() for path in old)


def test_patronis_member_fields_of_any_type_print_in_the_table(
        nodes: list[FakeNode], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Patroni writes the DCS as postgres: a member's fields may be any JSON value, with escapes in them."""
    members = FakeCluster.members

    def odd(self: FakeCluster, prefer: str | None = None) -> list[dict[str, Any]]:
        found = members(self, prefer)
        found[1].update({"TL": [3], "Lag in MB": {"a": 1}, "State": f"streaming{ESC}"})
        return found

    monkeypatch.setattr(FakeCluster, "members", odd)
    assert cli.main(pgbackup("status")) == 1
    out = capsys.readouterr().out
    assert "pgnode2          pgnode2.example          replica    streaming\\x1b]0;owned" in out
    assert "\x1b" not in out
