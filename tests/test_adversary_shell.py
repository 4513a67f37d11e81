"""Every shell script that runs as root on a node, run for real under bash against an adversary (issue 20,
"The mechanism"; pgbackup_testkit/shell_adversary.py): the Pulumi program's step scripts as the program renders
them, and the operator command's node scripts (recover's restore, replicas and cleanup, its state file, the
Patroni queries). Before and during each run, postgres and prometheus replace every name they can (in the
directories they own) on the way to every path of the layout, pgData and Patroni's configuration by links to
a root-only sentinel directory and file, FIFOs and huge sparse files. Whatever the script's exit status:
the sentinels and what lies outside the sandbox are unchanged, and nothing hangs. The long steps (restore,
backup) go through their transient unit: the launcher writes the unit's script root-only and the stand-in
systemd-run runs it at once, so the unit's own script meets the adversary too.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from components.layout import PATHS
from pgbackup_cli import recover
from pgbackup_cli.cluster import Cluster
from pgbackup_cli.remote import RemoteError, Result
from pgbackup_testkit.shell_adversary import Adversary, Sandbox, content_attack, make_sandbox

STEPS = ("install", "files", "patroni-local", "stanza", "archiving", "verify", "schedule", "unschedule")
OPERATOR = ("restore", "backup", "replicas", "cleanup", "state", "forget-state", "abort", "members", "scope",
            "rejoin-stop", "rejoin-put-back", "rejoin-promote", "rejoin-rebuild", "replica-restore")
ASIDE = "20261122T130000Z"


@pytest.fixture
def box() -> Iterator[Sandbox]:
    sandbox = make_sandbox()
    try:
        yield sandbox
    finally:
        sandbox.cleanup()


def targets(box: Sandbox) -> list[str]:
    """Every path the scripts name: the layout, pgData and what a recovery puts beside it, Patroni's file."""
    paths = [getattr(box.paths, name) for name in box.paths.__dataclass_fields__]
    config = box.patroni_config
    return [*paths, box.pg_data, f"{box.pg_data}{recover.ASIDE_SUFFIX}{ASIDE}", f"{box.pg_data}/PG_VERSION",
            config, f"{config}.pgbackup-prev", recover_log(box),
            *(f"{box.paths.state_dir}/recover-{step}.{kind}" for step in ("restore", "backup", "promote", "rebuild")
              for kind in ("sh", "status"))]


def recover_log(box: Sandbox) -> str:
    return str(box.root / "var/log/postgresql/pgbackup-recover.log")


class BoxNode:
    """A node whose scripts run in the sandbox (remote.script_text, as Node.run sends them), each after
    `before()`."""

    def __init__(self, name: str, box: Sandbox, before: Callable[[], None]) -> None:
        self.name, self.box, self.before = name, box, before
        self.results: list[subprocess.CompletedProcess[str]] = []

    def run(self, script: str, stdin: str = "", timeout: float = 600, on_output: Any = None) -> Result:
        self.before()
        result = self.box.run(script, stdin=stdin, operator=True)
        self.results.append(result)
        return Result(result.returncode, result.stdout, result.stderr)

    def check(self, script: str, stdin: str = "", timeout: float = 600, what: str = "") -> str:
        result = self.run(script, stdin=stdin, timeout=timeout)
        if result.status != 0:
            raise RemoteError(f"{self.name}: {what} failed (exit {result.status}): {result.err}")
        return result.out


def box_cluster(box: Sandbox, before: Callable[[], None]) -> Cluster:
    cluster = Cluster.__new__(Cluster)
    cluster.stack = SimpleNamespace(pg_data=box.pg_data, pg_bin=str(box.bin), cluster=box.settings.cluster)  # type: ignore[assignment]
    cluster.nodes = {name: BoxNode(name, box, before) for name in ("pg1", "pg2")}  # type: ignore[misc]
    cluster.q = shlex.quote
    cluster.recover_state = f"{box.paths.state_dir}/recover.json"  # type: ignore[misc]
    return cluster


def plan(box: Sandbox, **changes: Any) -> recover.Plan:
    return recover.Plan(**{
        "stack": "adv", "target": "latest", "leader": "pg1", "replicas": ["pg2"], "scope": "lab", "backup": "F",
        "holds": "", "pg_data": box.pg_data, "aside": {"pg2": f"{box.pg_data}{recover.ASIDE_SUFFIX}{ASIDE}"},
        "old_timeline": 1, "finished": True, **changes})


def recovery(cluster: Cluster, box: Sandbox, **changes: Any) -> recover.Recovery:
    steps = recover.Recovery(cluster, plan(box, **changes), print)
    steps.log = recover_log(box)
    return steps


def run_operator(name: str, box: Sandbox, before: Callable[[], None]) -> None:
    """One operator node script, through the code that builds it."""
    cluster = box_cluster(box, before)
    steps = recovery(cluster, box)
    # `--abort` after the restore began (recover.Rejoin): each of its node scripts (its waits for Patroni are
    # not root's work on the node).
    rejoin = recover.Rejoin(cluster, plan(box, finished=False, current="replicas"), print)
    rejoin.log = recover_log(box)
    work: dict[str, Callable[[], Any]] = {
        "restore": lambda: recovery(cluster, box, replicas=[], aside={}).step_restore(),
        "backup": steps.step_backup,
        "replicas": steps.step_replicas,
        "cleanup": lambda: cluster.node("pg1").check(recover.aside_script(cluster.q, box.pg_data)),
        "state": lambda: cluster.write_json("pg1", cluster.recover_state, {"plan": 1}),
        "forget-state": lambda: recover.cleanup(cluster, plan(box), print),
        "abort": lambda: recover.abort(cluster, plan(box, finished=False, done={"stop-patroni": 1.0},
                                                     current="forget-dcs"), print),
        "members": cluster.members,
        "scope": lambda: cluster.scope("pg1"),
        "rejoin-stop": lambda: cluster.node("pg1").check(rejoin.stop_script()),
        "rejoin-put-back": lambda: rejoin.put_back("pg2"),
        "rejoin-promote": lambda: rejoin.in_unit("pg2", "promote", rejoin.promote_script(), 60),
        "rejoin-rebuild": lambda: rejoin.in_unit("pg1", "rebuild", rejoin.standby_script("F"), 60),
        # A replica's restore in step 3 (the leader's is "restore": the sandbox is one file system for both).
        "replica-restore": lambda: steps.in_unit("pg2", "restore", steps.standby_script("F", plan(box).aside["pg2"]),
                                                 60),
    }
    with mock.patch("pgbackup_cli.cluster.PATHS", box.paths):  # the backups' lock, in the sandbox
        work[name]()


def run_step(name: str, box: Sandbox, before: Callable[[], None]) -> subprocess.CompletedProcess[str]:
    script = box.step_scripts()[name]
    stdin = box.manifest() if name == "files" else ""
    before()
    return box.run(script, stdin=stdin)


# (which names, what is planted, whether it is planted again and again during the run)
ROUNDS = (("deep", "link-dir", True), ("deep", "alternate", False), ("all", "link-file", False))


@pytest.mark.parametrize("name", STEPS + OPERATOR)
def test_root_scripts_survive_the_adversary(name: str, box: Sandbox) -> None:
    """A quiet run succeeds (the script works in the sandbox, so the runs below test something); then, for
    each round, a fresh layout, the adversary's plants, and the same plants again and again during the run."""
    before = box.snapshot()
    run: Callable[[Callable[[], None]], object] = (
        (lambda hook: run_step(name, box, hook)) if name in STEPS else (lambda hook: run_operator(name, box, hook)))
    if name in ("cleanup", "forget-state", "abort", "rejoin-put-back"):
        aside = f"{box.pg_data}{recover.ASIDE_SUFFIX}{ASIDE}"
        subprocess.run(["runuser", "-u", "postgres", "--", "mkdir", "-p", f"{aside}/base"], check=True)
    quiet = run(lambda: None)
    if isinstance(quiet, subprocess.CompletedProcess):
        assert quiet.returncode == 0, quiet.stderr
    box.assert_unchanged(before)
    adversary = Adversary(box)
    everything = adversary.points(targets(box))
    deepest = [(user, path) for user, path in everything if path in targets(box)]
    for depth, kind, race in ROUNDS:
        points = deepest if depth == "deep" else everything
        adversary.plant(points, kind)
        # refused or broken by the adversary: allowed
        with adversary.racing(points if race else [], kind), contextlib.suppress(RemoteError):
            run(lambda: None)
        box.assert_unchanged(before)


def test_the_adversary_reaches_pg_data_and_plants_a_link_there(box: Sandbox) -> None:
    """The fixture itself: pgData's name is a point postgres controls, and a planted link is a link."""
    adversary = Adversary(box)
    points = adversary.points([box.pg_data])
    assert ("postgres", box.pg_data) in points
    adversary.plant([("postgres", box.pg_data)], "link-dir")
    assert os.readlink(box.pg_data) == str(box.sentinel_dir)


def test_recover_refuses_a_link_at_pg_data_naming_it(box: Sandbox) -> None:
    """Issue 20.1: the restore step meets pgData replaced by a link to a root-owned directory: refused with a
    clear message, the directory unchanged (before the fix: it became postgres:postgres 0700)."""
    before = box.snapshot()
    adversary = Adversary(box)
    cluster = box_cluster(box, lambda: adversary.plant([("postgres", box.pg_data)], "link-dir"))
    with pytest.raises(RemoteError, match=f"{box.pg_data} is a symbolic link, not a directory: refused"):
        recovery(cluster, box, replicas=[], aside={}).step_restore()  # the leader's (one file system here)
    box.assert_unchanged(before)


def test_patronictl_runs_as_the_owner_of_patroni_yml(box: Sandbox) -> None:
    """Root never runs patronictl against a file postgres may write: every call runs as its owner."""
    for step in ("patroni-local", "stanza", "archiving", "verify"):
        result = run_step(step, box, lambda: None)
        assert result.returncode == 0, result.stderr
    box_cluster(box, lambda: None).members()
    calls = [c for c in box.calls() if " patronictl " in f" {c} "]
    assert calls, "no patronictl call recorded"
    assert all(c.startswith("postgres patronictl ") for c in calls), calls


@pytest.mark.parametrize("name", ["patroni-local", "archiving", "scope"])
def test_a_huge_patroni_yml_is_refused_not_read_forever(name: str, box: Sandbox) -> None:
    """postgres owns patroni.yml: a 1 TiB sparse one ends the script (refused), it does not hang root."""
    content_attack(box.root / "etc/patroni/patroni.yml", "postgres")
    if name == "scope":
        with pytest.raises(RemoteError, match="larger than"):
            run_operator(name, box, lambda: None)
    else:
        result = run_step(name, box, lambda: None)
        assert result.returncode != 0
        assert "larger than" in result.stderr


def test_patroni_local_keeps_no_copy_of_patronis_passwords(box: Sandbox) -> None:
    """Issue 20 (Low): after a successful change, no patroni.yml.pgbackup-prev (it holds Patroni's passwords);
    one an interrupted earlier run left goes too."""
    config = box.root / "etc/patroni/patroni.yml"
    result = run_step("patroni-local", box, lambda: None)
    assert result.returncode == 0, result.stderr
    assert "patroni local configuration changed" in result.stdout
    assert "pgbackrest" in config.read_text()
    assert not (box.root / "etc/patroni/patroni.yml.pgbackup-prev").exists()
    (box.root / "etc/patroni/patroni.yml.pgbackup-prev").write_text("password: left-by-an-interrupted-run\n")
    again = run_step("patroni-local", box, lambda: None)
    assert "patroni local configuration unchanged" in again.stdout
    assert not (box.root / "etc/patroni/patroni.yml.pgbackup-prev").exists()


def test_every_step_of_the_program_is_run_against_the_adversary_in_the_sandbox(box: Sandbox) -> None:
    """A new step is added to STEPS (or this fails); every path the rendered scripts name lies in the sandbox."""
    scripts = box.step_scripts()
    assert set(scripts) == set(STEPS)
    for step, script in scripts.items():
        for path in (getattr(PATHS, name) for name in PATHS.__dataclass_fields__):
            assert f" {path}" not in script, f"{step} names {path} outside the sandbox"
            assert f"'{path}" not in script, f"{step} names {path} outside the sandbox"
