"""The operator's command (pgbackup_cli) without a lab: arguments, the stack file, what a repository holds
and whether a recovery target lies within it (against a known `pgbackrest info` document), the plan, and a
recovery carrying on from its recorded steps."""

from __future__ import annotations

import copy
import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from components.config import ConfigError
from pgbackup_cli import cli, recover
from pgbackup_cli.cluster import RECOVER_STATE, Cluster
from pgbackup_cli.remote import RemoteError, script_text
from pgbackup_cli.repository import (
    TargetRefused,
    choose_backup,
    holdings,
    newest_backups,
    newest_wal_time,
    parse_target,
    wal_listing_path,
)
from pgbackup_cli.stack import load_stack
from tests.harness import HEALTHY_INFO

ROOT = Path(__file__).resolve().parent.parent
INFO: dict[str, Any] = HEALTHY_INFO[0]  # full ended 1795313000, incr ended 1795399300; WAL max ...09
WAL_TIME = 1795400000.0


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


# -- arguments
def test_subcommands_and_their_arguments() -> None:
    options = cli.parse(["recover", "-s", "prod", "--to", "2026-11-20 14:15:00+00", "--yes"])
    assert (options.command, options.stack, options.to, options.yes, options.cleanup) == (
        "recover", "prod", "2026-11-20 14:15:00+00", True, False)
    assert cli.parse(["status", "-s", "lab", "--json"]).json is True
    backup = cli.parse(["backup", "-s", "lab", "--type", "diff", "--repo", "2"])
    assert (backup.type, backup.repo) == ("diff", 2)
    assert cli.parse(["recover", "-s", "lab", "--cleanup"]).to is None


@pytest.mark.parametrize("argv", [
    ["status"],  # no stack
    ["backup", "-s", "lab", "--type", "weekly"],
    ["backup", "-s", "lab"],
    ["recover", "-s", "lab"],  # neither --to nor --cleanup
    ["recover", "-s", "lab", "--to", "2026-11-20 14:15:00"],  # no time zone
    ["recover", "-s", "lab", "--to", "yesterday"],
])
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.parse(argv)
    assert exit_.value.code == 2


def test_parse_target() -> None:
    assert parse_target("latest") is None
    assert parse_target("2026-11-20 14:15:00+00") == datetime(2026, 11, 20, 14, 15, tzinfo=UTC)
    assert parse_target("2026-11-20T14:15:00Z") == datetime(2026, 11, 20, 14, 15, tzinfo=UTC)
    with pytest.raises(ValueError, match="time zone"):
        parse_target("2026-11-20 14:15:00")


# -- the stack file
def test_the_stack_is_read_from_its_file_without_pulumi() -> None:
    stack = load_stack("lab", ROOT)
    assert [n.name for n in stack.cluster.nodes] == ["pgnode1", "pgnode2", "pgnode3"]
    assert (stack.cluster.stanza, stack.pg_data, stack.pg_bin) == (
        "lab", "/var/lib/postgresql/17/main", "/usr/lib/postgresql/17/bin")
    assert all(n.host_key for n in stack.cluster.nodes)


def test_a_stack_without_pinned_host_keys_or_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pgbackup:cluster.nodes\[0\].hostKey: required"):
        load_stack("prod", ROOT)
    config = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())
    config["config"]["pgbackup:retension"] = {"full": 2}
    config["config"]["pgbackup:sshPrivateKey"] = {"secure": "AAAA"}  # a secret: neither read nor refused
    (tmp_path / "Pulumi.x.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="pgbackup:retension: unknown key"):
        load_stack("x", tmp_path)
    with pytest.raises(ConfigError, match="no such stack file"):
        load_stack("nope", tmp_path)
    assert cli.main(["status", "-s", "nope", "-C", str(tmp_path)]) == 2


# -- what the repository holds
def test_newest_backup_per_repository_and_the_newest_wal() -> None:
    assert newest_backups(INFO) == {"1": {"label": "20261122-020000F_20261123-020000I", "type": "incr",
                                          "stopTime": "2026-11-23T02:01:40Z"}}
    assert wal_listing_path("stanza", INFO) == ("archive/stanza/15-1/0000000100000000", "000000010000000000000009")
    listing = {"000000010000000000000008-aaaa.zst": {"type": "file", "size": 10, "time": 1795399999},
               "000000010000000000000009-bbbb.zst": {"type": "file", "size": 10, "time": WAL_TIME}}
    assert newest_wal_time(listing, "000000010000000000000009") == WAL_TIME
    assert newest_wal_time(listing, "00000001000000000000000A") is None


def test_a_target_within_the_repository_uses_the_newest_backup_before_it() -> None:
    held = holdings(INFO, WAL_TIME)
    assert choose_backup(held, at(1795313000 + 60))["label"] == "20261122-020000F"
    assert choose_backup(held, at(1795399300))["label"] == "20261122-020000F_20261123-020000I"
    assert choose_backup(held, at(WAL_TIME))["label"] == "20261122-020000F_20261123-020000I"
    assert choose_backup(held, None)["label"] == "20261122-020000F_20261123-020000I"  # latest


def test_a_target_outside_the_repository_is_refused_saying_what_it_holds() -> None:
    held = holdings(INFO, WAL_TIME)
    with pytest.raises(TargetRefused, match="older than the oldest backup's end") as old:
        choose_backup(held, at(1795313000 - 1))
    assert ("holds 2 backups, the oldest 20261122-020000F (ended 2026-11-22 02:03:20+00), the newest "
            "20261122-020000F_20261123-020000I (ended 2026-11-23 02:01:40+00), and WAL up to "
            "000000010000000000000009 (archived 2026-11-23 02:13:20+00)") in str(old.value)
    with pytest.raises(TargetRefused, match="newer than the newest archived WAL"):
        choose_backup(held, at(WAL_TIME + 1))
    with pytest.raises(TargetRefused, match="newer than the newest archived WAL"):
        choose_backup(holdings(INFO, None), at(1795399300))  # the WAL's time unknown: not provably covered
    empty = {**copy.deepcopy(INFO), "backup": []}
    with pytest.raises(TargetRefused, match="holds no backup"):
        choose_backup(holdings(empty, WAL_TIME), None)


# -- the plan and the recovery's steps
def plan(**changes: Any) -> recover.Plan:
    values: dict[str, Any] = {
        "stack": "prod", "target": "2026-11-22 12:00:00+00", "leader": "db-2", "replicas": ["db-1", "db-3"],
        "scope": "proposalsapp", "backup": "20261122-020000F", "holds": holdings(INFO, WAL_TIME).describe(),
        "pg_data": "/var/lib/postgresql/17/main",
        "aside": {"db-1": "/var/lib/postgresql/17/main.before-pitr-20261122T130000Z",
                  "db-3": "/var/lib/postgresql/17/main.before-pitr-20261122T130000Z"},
        "old_timeline": 4}
    return recover.Plan(**{**values, **changes})


def test_the_plan_names_leader_order_backup_and_the_directories_moved_aside() -> None:
    text = plan().text()
    assert "Point-in-time recovery of stack prod to 2026-11-22 12:00:00+00" in text
    assert "leader (restored, then leads): db-2" in text
    assert "Patroni stopped in this order: db-1, db-3, db-2" in text
    assert "backup used: 20261122-020000F (repo1)" in text
    assert "the repository (repo1) holds 2 backups" in text
    assert "db-1: /var/lib/postgresql/17/main -> /var/lib/postgresql/17/main.before-pitr-20261122T130000Z" in text
    assert "db-2: /var" not in text  # the leader is restored in place
    assert [line.strip()[:2] for line in text.splitlines() if line.startswith("    ") and ". " in line[:8]] == [
        f"{i}." for i in range(1, 8)]
    assert recover.Plan.from_json(plan().to_json()) == plan()


class Recorder(recover.Recovery):
    """The recovery's bookkeeping with every remote step replaced by a note of its name."""

    def __init__(self, state: recover.Plan) -> None:
        self.plan, self.ran, self.saved, self.lines = state, [], [], []  # type: ignore[var-annotated]
        self.say = self.lines.append
        for name, _ in recover.STEPS:
            setattr(self, "step_" + name.replace("-", "_"), lambda name=name: self.ran.append(name))

    def save(self) -> None:
        self.saved.append(sorted(self.plan.done or {}))

    def finish(self) -> dict[str, Any]:
        return {"done": self.plan.done}


def test_a_recovery_carries_on_after_its_recorded_steps() -> None:
    names = [name for name, _ in recover.STEPS]
    fresh = Recorder(plan())
    fresh.run()
    assert fresh.ran == names
    assert fresh.saved[0] == []  # recorded before step 1 touches anything
    assert len(fresh.saved) == 2 * len(names) + 2  # and before (the step begun) and after every step, and the RTO
    resumed = Recorder(plan(done={"stop-patroni": 1.0, "forget-dcs": 2.0, "restore": 30.0}, started=1.0))
    resumed.run()
    assert resumed.ran == names[3:]
    assert resumed.lines[2] == ("[3/7] restore the leader, replay, promote it by hand, stop it; the replicas as standbys "
                                "at once: done before (30.0 s)")


class LocalNode:
    """A node whose scripts run under bash on this machine, in a directory of its own."""

    def __init__(self, name: str, root: Path) -> None:
        self.name, self.root, self.scripts = name, root, []  # type: ignore[var-annotated]

    def check(self, script: str, stdin: str = "", timeout: float = 600, what: str = "") -> str:
        self.scripts.append(script)
        result = subprocess.run(["bash", "-c", script_text(script)], capture_output=True, text=True, check=False,
                                timeout=60)
        if result.returncode != 0:
            raise RemoteError(f"{self.name}: {what} failed (exit {result.returncode}): {result.stderr}")
        return result.stdout


class LocalCluster(Cluster):
    """Cluster's cleanup surface (nodes, node, on_each, q, stack.pg_data) over LocalNodes."""

    def __init__(self, pg_data: str, names: list[str], root: Path) -> None:
        self.stack = SimpleNamespace(pg_data=pg_data)  # type: ignore[assignment]
        self.local = {name: LocalNode(name, root) for name in names}
        self.nodes = self.local  # type: ignore[assignment]
        self.q = shlex.quote


def test_cleanup_removes_what_every_recovery_moved_aside_and_nothing_else(tmp_path: Path) -> None:
    """One node's directory stands for every node's (the nodes share it): each node removes what it finds."""
    data = tmp_path / "17 main"  # a space: the path is quoted, the glob is not
    data.mkdir()
    latest, older = (Path(f"{data}.before-pitr-{stamp}") for stamp in ("20261122T130000Z", "20250101T000000Z"))
    for aside in (latest, older):
        (aside / "base").mkdir(parents=True)
    kept = [Path(f"{data}.before-pitr-by-hand"), Path(f"{data}.before-pitr-20261122T130000Z.old")]
    for path in kept:
        path.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = Path(f"{data}.before-pitr-20261123T000000Z")
    link.symlink_to(target)
    cluster = LocalCluster(str(data), ["db-1"], tmp_path)
    lines: list[str] = []
    recover.cleanup(cluster, plan(finished=True, leader="db-1", aside={"db-1": str(latest)}), lines.append)
    assert (latest.exists(), older.exists()) == (False, False)  # the recorded recovery's and an earlier one's
    assert [data.is_dir(), *(path.is_dir() for path in kept), link.is_symlink(), target.is_dir()] == [True] * 5
    assert lines == [f"db-1: removed {older}, {latest}"]
    assert cluster.local["db-1"].scripts[-1] == f"rs_rm_tree {RECOVER_STATE}"
    lines.clear()
    recover.cleanup(cluster, None, lines.append)  # nothing recorded, nothing left
    assert lines == ["db-1: nothing moved aside"]


def test_cleanup_is_refused_while_the_recorded_recovery_has_not_finished(tmp_path: Path) -> None:
    data = tmp_path / "main"
    aside = Path(f"{data}.before-pitr-20261122T130000Z")
    aside.mkdir(parents=True)
    cluster = LocalCluster(str(data), ["db-1", "db-3"], tmp_path)
    with pytest.raises(recover.RecoveryRefused, match="the recovery to 2026-11-22 12:00:00\\+00 has not finished"):
        recover.cleanup(cluster, plan(finished=False), print)
    assert aside.is_dir()
    assert all(node.scripts == [] for node in cluster.local.values())


def test_ctrl_c_interrupts_even_when_started_with_sigint_ignored(tmp_path: Path) -> None:
    """A background job of a non-interactive shell starts with SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: `pgbackup recover` would go on through an operator's Ctrl-C (the lab caught it).
    main() installs the handlers itself."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert cli.main(["status", "-s", "missing", "-C", str(tmp_path)]) == 2  # no Pulumi.missing.yaml
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
