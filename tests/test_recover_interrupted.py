"""`pgbackup recover` on a bad day (issue 22, items 1 and 2, and `--abort`), without a lab: a target PostgreSQL
refuses or the repository cannot reach is refused with exit 3 before anything stops; a restore run again after
its promotion follows the old timeline; the wait for the promotion ends at the server's fatal line; Ctrl-C
stops the step's unit; a run again waits for the unit an earlier run left running; `--abort` in each phase.

The nodes are scripted (every script they are sent is recorded, and answered by the test), except where the
script itself is the thing tested: then it runs for real under bash as root here, stand-ins for systemctl,
systemd-run, pg_ctl, psql and pgbackrest first on PATH. Needs root and a `postgres` user for those.
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
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from components.layout import PATHS
from components.window import iso
from pgbackup_cli import cli, recover
from pgbackup_cli.cluster import Cluster
from pgbackup_cli.remote import Node, RemoteError, Result, script_text
from pgbackup_cli.stack import Stack, load_stack
from tests.harness import HEALTHY_INFO

ROOT = Path(__file__).resolve().parent.parent
WAL_TIME = 1795400000.0  # 2026-11-23 02:13:20+00: repo1's newest archived WAL
OLDEST = 1795100000  # 2026-11-19 14:53:20+00: the oldest backup's end (moved back, for a wide reachable range)
W47 = "2026-W47-5T14:15:00+00:00"  # Python reads 2026-11-20 14:15:00+00 (in the range); PostgreSQL refuses it
BAD_TIME = ('ERROR:  invalid input syntax for type timestamp with time zone: "2026-W47-5T14:15:00+00:00"\n'
            "LINE 1: SELECT extract(epoch FROM '2026-W47-5T14:15:00+00:00'::timest...")
STOPS = ("systemctl stop", "patronictl", "restore", "systemd-run", "rs_rename", "rs_rm_tree", "rs_write")
real = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None,
                          reason="runs the node's script for real: needs root, runuser and a postgres user")


@functools.cache
def lab_stack() -> Stack:
    return load_stack("lab", ROOT)


def info() -> dict[str, Any]:
    doc = copy.deepcopy(HEALTHY_INFO[0])
    backups = sorted(doc["backup"], key=lambda b: b["timestamp"]["stop"])
    backups[0]["timestamp"]["stop"] = OLDEST
    return dict(doc)


class ScriptedNode(Node):
    """Records each script; `answer(node, script, stdin)` gives the Result (None: exit 0, no output)."""

    def __init__(self, name: str, cluster: ScriptedCluster) -> None:
        self.name, self.cluster = name, cluster

    def run(self, script: str, stdin: str = "", timeout: float = 600,
            on_output: Callable[[str], None] | None = None) -> Result:
        self.cluster.sent.append((self.name, script))
        return self.cluster.answer(self.name, script, stdin) or Result(0, "", "")


class ScriptedCluster(Cluster):
    def __init__(self, answer: Callable[[str, str, str], Result | None] | None = None) -> None:
        self.stack = lab_stack()
        self.q = shlex.quote
        self.nodes = {name: ScriptedNode(name, self) for name in ("pgnode1", "pgnode2", "pgnode3")}  # type: ignore[misc]
        self.sent: list[tuple[str, str]] = []
        self.files: dict[tuple[str, str], Any] = {}
        self.answer = answer or (lambda node, script, stdin: None)  # type: ignore[assignment]
        self.patroni_running = True

    def members(self, prefer: str | None = None) -> list[dict[str, Any]]:
        self.sent.append(("", "(members)"))
        return [{"Member": name, "Role": "Leader" if i == 0 else "Replica",
                 "State": "running" if i == 0 else "streaming", "TL": 4} for i, name in enumerate(self.nodes)]

    def info(self, node: str, timeout: int = 120) -> dict[str, Any]:
        return info()

    def newest_wal_time(self, node: str, info: dict[str, Any]) -> float | None:
        return WAL_TIME

    def scope(self, node: str) -> str:
        return "lab"

    def read_text(self, node: str, path: str, user: str | None = "postgres") -> Any:
        return self.files.get((node, path))

    def read_json(self, node: str, path: str, user: str | None = "postgres") -> dict[str, Any] | None:
        value = self.files.get((node, path))
        return copy.deepcopy(value) if isinstance(value, dict) else None

    def write_json(self, node: str, path: str, value: dict[str, Any]) -> None:
        self.files[(node, path)] = copy.deepcopy(value)
        self.sent.append((node, f"rs_write {path}"))

    def scripts(self, node: str | None = None) -> list[str]:
        return [script for name, script in self.sent if node in (None, name)]


def psql_says(out: str, status: int = 0) -> Callable[[str, str, str], Result | None]:
    """The leader's psql reading the target answers `out`; everything else exits 0."""
    return lambda node, script, stdin: Result(status, out, "") if "-v target=" in script else None


def recover_main(cluster: ScriptedCluster, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(cli, "Cluster", lambda stack, key: cluster)
    return cli.main(["recover", "-s", "lab", "-C", str(ROOT), *args])


def plan(**changes: Any) -> recover.Plan:
    values: dict[str, Any] = {
        "stack": "lab", "target": "2026-11-22 12:00:00+00", "leader": "pgnode1", "replicas": ["pgnode2", "pgnode3"],
        "scope": "lab", "backup": "20261122-020000F", "holds": "", "pg_data": "/var/lib/postgresql/17/main",
        "aside": {"pgnode2": "/var/lib/postgresql/17/main.before-pitr-20261122T130000Z",
                  "pgnode3": "/var/lib/postgresql/17/main.before-pitr-20261122T130000Z"},
        "old_timeline": 4, "started": 1.0, "target_utc": "2026-11-22 12:00:00+00"}
    return recover.Plan(**{**values, **changes})


# -- item 2: the target checked before anything stops
def test_a_target_postgresql_refuses_is_refused_with_exit_3_before_anything_stops(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Python reads W47 as 2026-11-20 14:15 (inside the reachable range): only PostgreSQL's refusal stops it."""
    cluster = ScriptedCluster(psql_says(BAD_TIME, status=3))
    assert recover_main(cluster, monkeypatch, "--to", W47, "--yes") == 3
    err = capsys.readouterr().err
    assert "pgnode1's PostgreSQL does not read it as a time" in err
    assert "invalid input syntax for type timestamp with time zone" in err
    touched = [s for s in cluster.scripts() if any(word in s for word in STOPS)]
    assert touched == [], touched
    assert not cluster.files  # no recovery recorded
    reading = next(s for s in cluster.scripts() if "-v target=" in s)
    assert f"-v target={shlex.quote(W47)}" in reading
    assert W47 not in reading.replace(shlex.quote(W47), "")


def test_the_target_goes_to_psql_as_a_variable_never_into_the_sql(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin_seen: list[str] = []

    def answer(node: str, script: str, stdin: str) -> Result | None:
        if "-v target=" in script:
            stdin_seen.append(stdin)
            return Result(0, "1795392000.000000 2026-11-22 12:00:00+00\n", "")
        return None

    cluster = ScriptedCluster(answer)
    moment, text = recover.read_target(cluster, "pgnode1", "2026-11-22 13:00:00+01", print)
    assert (moment.timestamp() if moment else None, text) == (1795392000.0, "2026-11-22 12:00:00+00")
    assert stdin_seen
    assert ":'target'::timestamptz" in stdin_seen[0]
    assert "2026" not in stdin_seen[0]


@pytest.mark.parametrize(("epoch", "why"), [(WAL_TIME + 3600, "is newer than the newest archived WAL"),
                                            (OLDEST - 3600, "is older than the oldest backup's end")])
def test_a_target_outside_the_reachable_range_is_refused_naming_it(
        epoch: float, why: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = ScriptedCluster(psql_says(f"{epoch:.6f} whatever+00\n"))
    assert recover_main(cluster, monkeypatch, "--to", "2026-11-22 12:00:00+00", "--yes") == 3
    err = capsys.readouterr().err
    assert why in err
    assert "the reachable range is 2026-11-19 14:53:20+00 to 2026-11-23 02:13:20+00" in err
    assert [s for s in cluster.scripts() if any(word in s for word in STOPS)] == []


def test_without_an_answering_postgresql_only_a_plain_time_is_read(capsys: pytest.CaptureFixture[str]) -> None:
    """The leader's server already down (--leader): Python's reading stands, said, for the plain form only."""
    down = ScriptedCluster(psql_says("psql: error: connection to server on socket failed", status=2))
    with pytest.raises(recover.RecoveryRefused, match="did not answer"):
        recover.read_target(down, "pgnode1", W47, print)
    _moment, text = recover.read_target(down, "pgnode1", "2026-11-22 13:00:00+01", print)
    assert text == "2026-11-22 12:00:00+00:00"
    assert "warning: pgnode1's PostgreSQL did not answer" in capsys.readouterr().out


# -- item 1: every step safe to repeat, every wait watching what it waits for
def test_a_rerun_after_promotion_restores_along_the_old_timeline() -> None:
    """The first run promoted (timeline 5 forked at the target): the restore run again must not follow it."""
    again = recover.Recovery(ScriptedCluster(), plan(done={"stop-patroni": 1.0, "forget-dcs": 1.0},
                                                     current="restore"), print)
    script = again.restore_script()
    assert "--type=time --target='2026-11-22 12:00:00+00' --target-timeline=4 --target-action=promote" in script
    latest = recover.Recovery(ScriptedCluster(), plan(target="latest"), print).restore_script()
    assert "--target-timeline" not in latest
    assert "--type=time" not in latest


class StubNode(Node):
    """A node whose scripts run here for real (as root, script_text as Node.run sends them), the stand-ins in
    `bin` first on PATH."""

    def __init__(self, name: str, bin_dir: Path) -> None:
        self.name, self.bin = name, bin_dir

    def run(self, script: str, stdin: str = "", timeout: float = 600,
            on_output: Callable[[str], None] | None = None) -> Result:
        done = subprocess.run(["bash", "-c", script_text(script)], input=stdin, capture_output=True, text=True,
                              timeout=30, check=False, env={**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}"})
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def node_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pgbackup-recover-", dir="/tmp"))
    base.chmod(0o755)
    for name in ("bin", "run"):
        (base / name).mkdir()
    shutil.chown(base / "run", "postgres", "postgres")
    (base / "state").mkdir(mode=0o700)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def stub(base: Path, name: str, body: str) -> None:
    path = base / "bin" / name
    path.write_text(f'#!/bin/bash\necho "{name} $*" >>{base}/run/calls\n{body}\n')
    path.chmod(0o755)


def stub_recovery(base: Path, pg_ctl_start: str, psql: str) -> recover.Recovery:
    """A Recovery whose restore script runs on a StubNode: pg_ctl's `start` does `pg_ctl_start` (the log in
    $log), psql prints what `psql` prints; pg_ctl status succeeds while $base/run/running exists."""
    run = base / "run"
    stub(base, "systemctl", "exit 3")
    stub(base, "pgbackrest", "exit 0")
    stub(base, "pg_ctl", f"""for a in "$@"; do [[ "$a" == status ]] && {{ [[ -e {run}/running ]]; exit; }}; done
log=""; prev=""; for a in "$@"; do [[ "$prev" == -l ]] && log=$a; prev=$a; done
for a in "$@"; do [[ "$a" == start ]] && {{ {pg_ctl_start}
exit 0; }}; done
rm -f {run}/running""")
    stub(base, "psql", psql)
    cluster = Cluster.__new__(Cluster)
    cluster.stack = SimpleNamespace(pg_bin=str(base / "bin"), cluster=lab_stack().cluster,  # type: ignore[assignment]
                                    pg_data=str(base / "main"))
    cluster.q = shlex.quote
    cluster.nodes = {"pgnode1": StubNode("pgnode1", base / "bin")}  # type: ignore[misc]
    cluster.recover_state = f"{base}/state/recover.json"  # type: ignore[misc]
    steps = recover.Recovery(cluster, plan(pg_data=str(base / "main"), leader="pgnode1"), print)
    steps.log = str(run / "recover.log")
    return steps


@real
def test_the_wait_for_promotion_ends_at_the_servers_fatal_line(node_dir: Path) -> None:
    """The issue's second run: recovery ended before the target and the server exited; the wait ended at
    once quoting the line (before: it polled the dead server for 3,600 s)."""
    fatal = "2026-12-06 14:00:01 UTC [42] FATAL:  recovery ended before configured recovery target was reached"
    steps = stub_recovery(node_dir, f"""echo '2026-12-06 14:00:00 UTC [42] LOG:  starting PostgreSQL' >>"$log"
echo '{fatal}' >>"$log" """, "echo t")
    result = steps.cluster.node("pgnode1").run(steps.restore_script())
    assert result.status == 1
    assert f"PostgreSQL on this node ended the recovery: {fatal}" in result.err
    assert "What to do:" in result.err
    assert "pgbackup recover --abort" in result.err


@real
def test_the_wait_ends_when_the_server_dies_without_a_line(node_dir: Path) -> None:
    steps = stub_recovery(node_dir, "true", "echo t")  # never running, nothing logged
    result = steps.cluster.node("pgnode1").run(steps.restore_script())
    assert result.status == 1
    assert "the server is not running" in result.err


@real
def test_an_old_fatal_line_and_a_clients_early_connection_do_not_end_the_wait(node_dir: Path) -> None:
    """The log is appended to across runs, and the server logs our own psql polls arriving too early."""
    run = node_dir / "run"
    (run / "recover.log").write_text("2026-12-05 FATAL:  recovery ended before configured recovery target\n")
    shutil.chown(run / "recover.log", "postgres", "postgres")
    steps = stub_recovery(node_dir, f"""touch {run}/running
echo '2026-12-06 FATAL:  the database system is not yet accepting connections' >>"$log" """,
                          f"""n=$(cat {run}/polls 2>/dev/null || echo 0); echo $((n + 1)) >{run}/polls
if [[ $n -ge 2 ]]; then echo f; else echo t; fi""")
    result = steps.cluster.node("pgnode1").run(steps.restore_script())
    assert result.status == 0, result.err
    assert (run / "polls").read_text().strip() == "3"


def unit_cluster(watch: Callable[[], Result], nodes: tuple[str, ...] = ("pgnode1", "pgnode2", "pgnode3")
                 ) -> ScriptedCluster:
    """The restore's units started; each watch of one answered by `watch()`; their status files say 0."""
    def answer(node: str, script: str, stdin: str) -> Result | None:
        if "systemd-run" in script:
            return Result(0, "started\n", "")
        if "for _ in $(seq" in script:
            return watch()
        return None

    cluster = ScriptedCluster(answer)
    for node in nodes:
        cluster.files[(node, f"{cluster.recover_state.rsplit('/', 1)[0]}/recover-restore.status")] = "0\n"
    return cluster


def test_the_restores_run_as_units_on_every_node_at_once_watched_until_each_ends() -> None:
    """The leader's restore and each replica's (as a standby from the plan's backup, its data moved aside
    first) start before any is watched; a failure on one stops the others and is quoted."""
    states = iter(["active", "inactive", "active", "inactive", "inactive"])
    cluster = unit_cluster(lambda: Result(0, next(states) + "\n", ""))
    recover.Recovery(cluster, plan(), print).step_restore()
    sent = [(node, s) for node, s in cluster.sent if node]
    starts = [i for i, (_, s) in enumerate(sent) if "systemd-run" in s]
    watches = [i for i, (_, s) in enumerate(sent) if "for _ in $(seq" in s]
    assert [sent[i][0] for i in starts] == ["pgnode1", "pgnode2", "pgnode3"]
    assert max(starts) < min(watches)
    assert "--unit=pgbackup-recover-restore --collect" in sent[starts[0]][1]
    assert "2026-11-22" not in sent[starts[0]][1]  # the step's script goes in on stdin, into a root-only file
    assert len(watches) == 5
    replica = recover.Recovery(cluster, plan(), print).standby_script("20261122-020000F", plan().aside["pgnode2"])
    assert ("rs_rename /var/lib/postgresql/17/main /var/lib/postgresql/17/main.before-pitr-20261122T130000Z"
            in replica)
    assert "--delta --set=20261122-020000F --type=standby" in replica
    cluster.files[("pgnode2", f"{cluster.recover_state.rsplit('/', 1)[0]}/recover-restore.status")] = "1\n"
    states = iter(["active", "inactive", "active"] + ["inactive"] * 5)
    cluster.sent.clear()
    with pytest.raises(RemoteError, match=r"pgnode2: pgbackup-recover-restore.service failed \(exit 1\)"):
        recover.Recovery(cluster, plan(), print).step_restore()
    assert [n for n, s in cluster.sent if s.startswith("systemctl stop pgbackup-recover-restore")] == [
        "pgnode1", "pgnode3"]  # still running: stopped


def test_ctrl_c_stops_the_steps_unit_and_says_so() -> None:
    def interrupted() -> Result:
        raise KeyboardInterrupt

    cluster = unit_cluster(interrupted)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        recover.Recovery(cluster, plan(), lines.append).step_restore()
    for node in cluster.nodes:  # every node's restore
        assert cluster.scripts(node)[-1].startswith("systemctl stop pgbackup-recover-restore.service")
        assert any(f"stopped pgbackup-recover-restore.service on {node}" in line for line in lines), lines


@real
@pytest.mark.parametrize("active", [True, False])
def test_a_run_again_waits_for_the_unit_an_earlier_run_left_running(node_dir: Path, active: bool) -> None:
    """The launcher, for real: a unit still active is left to run (no second systemd-run), else started with
    the script written root-only."""
    stub(node_dir, "systemctl", f'[[ "$1" == is-active ]] && exit {0 if active else 3}; exit 0')
    stub(node_dir, "systemd-run", "exit 0")
    cluster = Cluster.__new__(Cluster)
    cluster.q = shlex.quote
    cluster.nodes = {"pgnode1": StubNode("pgnode1", node_dir / "bin")}  # type: ignore[misc]
    cluster.recover_state = f"{node_dir}/state/recover.json"  # type: ignore[misc]
    cluster.stack = SimpleNamespace(pg_bin="/bin")  # type: ignore[assignment]
    state = recover.Recovery(cluster, plan(), print)
    assert state.start_unit("pgnode1", "restore", "echo restoring") == ("running" if active else "started")
    calls = (node_dir / "run" / "calls").read_text()
    script = node_dir / "state" / "recover-restore.sh"
    if active:
        assert "systemd-run" not in calls
        assert not script.exists()
    else:
        assert "systemd-run --quiet --unit=pgbackup-recover-restore --collect" in calls
        assert script.stat().st_uid == 0
        assert oct(script.stat().st_mode & 0o777) == "0o700"
        assert "echo restoring" in script.read_text()


# -- --abort
def aborting(state: recover.Plan, restore_active: bool = False) -> tuple[ScriptedCluster, list[str], int]:
    def answer(node: str, script: str, stdin: str) -> Result | None:
        if "is-active --quiet pgbackup-recover-restore" in script:
            return Result(0 if restore_active else 3, "", "")
        if "is-active --quiet pgbackup-recover-" in script:
            return Result(3, "", "")
        return None

    cluster = ScriptedCluster(answer)
    cluster.files[("pgnode1", cluster.recover_state)] = state.to_json()
    lines: list[str] = []
    code = recover.abort(cluster, recover.find_state(cluster), lines.append)
    return cluster, lines, code


def test_abort_before_the_restore_starts_patroni_again_leader_first_and_forgets_the_recovery() -> None:
    cluster, lines, code = aborting(plan(done={"stop-patroni": 1.0, "forget-dcs": 1.0}, current="forget-dcs"))
    assert code == 0
    starts = [name or "list" for name, script in cluster.sent if script in ("systemctl start patroni", "(members)")]
    assert starts[:3] == ["pgnode1", "list", "pgnode2"]  # the replicas after the leader leads again
    assert [name for name in starts if name != "list"] == ["pgnode1", "pgnode2", "pgnode3"]
    assert cluster.scripts("pgnode1")[-1] == f"rs_rm_tree {cluster.recover_state}"
    assert "the cluster runs on its old data" in lines[-1]


def test_abort_moves_a_replicas_data_back_before_starting_it() -> None:
    cluster, _, code = aborting(plan(done={"stop-patroni": 1.0}, current="forget-dcs"))
    back = next(s for s in cluster.scripts("pgnode2") if "rs_rename" in s)
    assert ("rs_rename /var/lib/postgresql/17/main.before-pitr-20261122T130000Z /var/lib/postgresql/17/main"
            in back)
    assert code == 0


def rejoining(state: recover.Plan, old: dict[str, str], restore_active: bool = False
              ) -> tuple[ScriptedCluster, list[str], int]:
    """`--abort` after the restore began; `old`: what each replica's put-back prints (its old data's state)."""
    def answer(node: str, script: str, stdin: str) -> Result | None:
        if script.startswith("systemctl is-active --quiet pgbackup-recover-restore"):
            return Result(0 if restore_active else 3, "", "")
        if script.startswith("systemctl is-active --quiet pgbackup-recover-"):
            return Result(3, "", "")
        if "state:" in script:
            return Result(0, old[node], "")
        return None

    cluster = ScriptedCluster(answer)
    directory = cluster.recover_state.rsplit("/", 1)[0]
    for node in cluster.nodes:
        for step in ("promote", "rebuild", "backup"):
            cluster.files[(node, f"{directory}/recover-{step}.status")] = "0\n"
    cluster.members = lambda prefer=None: [  # type: ignore[method-assign]  # pgnode2 leads once started there
        {"Member": name, "Role": "Leader" if name == "pgnode2" else "Replica",
         "State": "running" if name == "pgnode2" else "streaming", "TL": 6}
        for name in cluster.nodes] if "systemctl start patroni" in cluster.scripts("pgnode2") else []
    cluster.files[("pgnode1", cluster.recover_state)] = state.to_json()
    lines: list[str] = []
    code = recover.abort(cluster, recover.find_state(cluster), lines.append)
    return cluster, lines, code


STANDBY = "state:shut down in recovery\n"
MID_3 = {"done": {"stop-patroni": 1.0, "forget-dcs": 1.0}, "current": "restore", "started": 1795399400.0}
MID_6 = {"done": {"stop-patroni": 1.0, "forget-dcs": 1.0, "restore": 9.0, "leader": 2.0, "backup": 5.0},
         "current": "replicas", "started": 1795399200.0}  # the newest backup (1795399300) is the recovery's


def test_abort_in_step_3_lets_a_replicas_old_data_lead_and_rebuilds_the_restored_node() -> None:
    """The order: Patroni stopped everywhere, the DCS forgotten, the first replica with old data replayed
    and promoted in its unit, Patroni there (it leads), the restored node restored as a standby from the
    newest backup made before the recovery, Patroni on the others; no backup (the newest set is on the old
    history); the state gone."""
    cluster, lines, code = rejoining(plan(**MID_3), {"pgnode2": STANDBY, "pgnode3": STANDBY}, restore_active=True)
    assert code == 0, lines
    order = [(node, script) for node, script in cluster.sent if node]
    def first(node: str, words: str) -> int:
        return next(i for i, (n, s) in enumerate(order) if n == node and words in s)
    assert first("pgnode1", "systemctl stop pgbackup-recover-restore") < first("pgnode2", "systemctl stop patroni")
    stopped = max(first(n, "systemctl stop patroni") for n in cluster.nodes)
    assert stopped < first("pgnode1", "patronictl") < first("pgnode2", "rs_rename") < (
        first("pgnode2", "--unit=pgbackup-recover-promote"))
    assert first("pgnode2", "--unit=pgbackup-recover-promote") < first("pgnode2", "systemctl start patroni") < (
        first("pgnode1", "--unit=pgbackup-recover-rebuild")) < first("pgnode1", "systemctl start patroni")
    assert first("pgnode3", "systemctl start patroni") > first("pgnode2", "systemctl start patroni")
    assert not [n for n, s in order if "--unit=pgbackup-recover-promote" in s and n != "pgnode2"]
    assert not [s for s in cluster.scripts() if "--unit=pgbackup-recover-backup" in s]
    assert cluster.scripts("pgnode1")[-1] == f"rs_rm_tree {cluster.recover_state}"
    assert "the cluster runs on pgnode2's old data, timeline 6, every member streaming" in lines[-1]
    rejoin = recover.Rejoin(cluster, plan(**MID_3), print)
    # The old timeline, not `latest` (the recovery's fork, if it promoted, forked before the replica's data).
    assert "-c recovery_target_timeline=4" in rejoin.promote_script()
    assert "recovery_target_timeline=current" in recover.Rejoin(cluster, plan(old_timeline=0), print).promote_script()
    rebuild = rejoin.standby_script("20261122-020000F_20261123-020000I")
    assert "--delta --set=20261122-020000F_20261123-020000I --type=standby" in rebuild


def test_abort_in_step_6_moves_the_old_data_back_and_replaces_the_recoverys_backup() -> None:
    moved = "moved\n" + STANDBY
    cluster, lines, code = rejoining(plan(**MID_6), {"pgnode2": moved, "pgnode3": moved})
    assert code == 0, lines
    assert "      pgnode2: /var/lib/postgresql/17/main.before-pitr-20261122T130000Z -> /var/lib/postgresql/17/main" in (
        lines)
    back = next(s for s in cluster.scripts("pgnode3") if "rs_rename" in s)
    assert "rs_rm_tree /var/lib/postgresql/17/main" in back  # the rebuild Patroni began is removed first
    # Rebuilt from the newest backup made before the recovery, not the recovery's own (its timeline).
    assert any("--unit=pgbackup-recover-rebuild" in s for s in cluster.scripts("pgnode1"))
    assert "pgnode1: rebuilt as standbys from backup 20261122-020000F" in "\n".join(lines)
    assert any("--unit=pgbackup-recover-backup" in s for s in cluster.scripts("pgnode2"))


def test_abort_with_no_old_data_left_says_what_cannot_be_undone_and_keeps_the_state() -> None:
    cluster, lines, code = rejoining(plan(**MID_6), {"pgnode2": "state:\n", "pgnode3": "state:\n"})
    assert code == 1
    text = "\n".join(lines)
    assert "cannot be undone: pgnode1's data is overwritten by the restore (step 3 began) and no replica" in text
    assert "pgbackup recover -s lab --to '2026-11-22 12:00:00+00'" in text
    assert not [s for s in cluster.scripts() if s == "systemctl start patroni" or "--unit=" in s]
    kept = cluster.files[("pgnode1", cluster.recover_state)]
    assert (kept["aborted"], kept["finished"]) == (True, False)


def test_after_an_abort_that_cannot_undo_another_target_may_be_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The new recovery keeps the old timeline (the aborted one may have promoted) and the finished first steps
    (Patroni stopped, the DCS forgotten); without the abort, another target is refused."""
    ran: list[recover.Plan] = []

    def run(self: recover.Recovery) -> dict[str, Any]:
        ran.append(self.plan)
        return {}

    monkeypatch.setattr(recover.Recovery, "run", run)
    for aborted, expected in ((False, 3), (True, 0)):
        cluster = ScriptedCluster(psql_says("1795300000.000000 2026-11-21 22:13:20+00\n"))
        cluster.members = lambda prefer=None: []  # type: ignore[method-assign]  # Patroni stopped everywhere
        state = plan(done={"stop-patroni": 1.0, "forget-dcs": 1.0}, current="restore", aborted=aborted)
        cluster.files[("pgnode1", cluster.recover_state)] = state.to_json()
        assert recover_main(cluster, monkeypatch, "--to", "2026-11-21 22:13:20+00", "--yes") == expected
    new = ran[-1]
    assert (new.target, new.old_timeline, sorted(new.done or {})) == (
        "2026-11-21 22:13:20+00", 4, ["forget-dcs", "stop-patroni"])
    assert new.aside == plan().aside
    assert new.target_utc == "2026-11-21 22:13:20+00"
    # Aborted in step 6: Patroni runs on the restored leader; the new recovery starts again from step 1.
    cluster = ScriptedCluster(psql_says("1795300000.000000 2026-11-21 22:13:20+00\n"))
    cluster.files[("pgnode1", cluster.recover_state)] = plan(
        done={"stop-patroni": 1.0, "forget-dcs": 1.0, "restore": 9.0, "leader": 2.0, "backup": 5.0},
        current="replicas", aborted=True).to_json()
    assert recover_main(cluster, monkeypatch, "--to", "2026-11-21 22:13:20+00", "--yes") == 0
    assert (ran[-1].done, ran[-1].old_timeline) == (None, 4)


@pytest.mark.parametrize(("state", "why"), [(None, "no recovery is recorded"),
                                            (plan(finished=True), "has finished: there is nothing to abort")])
def test_abort_is_refused_without_an_unfinished_recovery(state: recover.Plan | None, why: str) -> None:
    with pytest.raises(recover.RecoveryRefused, match=why):
        recover.abort(ScriptedCluster(), state, print)


# -- the recoverable window narrows the reachable range (item 2: "the recoverable window where it exists")
GAP = (1795200000, 1795300000)  # no backup with continuous WAL reaches these times
WAL_END = int(WAL_TIME)


def verified(pieces: list[tuple[int, int]], damaged: tuple[str, ...] = (), count: int | None = None) -> str:
    """A pgbackup-verify.json whose repo1 window has `pieces` and `damaged` sets."""
    window = {"pieces": [{"from": a, "to": b, "fromTime": iso(a), "toTime": iso(b)} for a, b in pieces],
              "pieceCount": len(pieces) if count is None else count,
              "damaged": [{"label": label, "reason": "the verification found it damaged"} for label in damaged],
              "promisedFrom": OLDEST, "missingSeconds": GAP[1] - GAP[0], "endLagSeconds": 0}
    return json.dumps({"time": "2026-11-23T03:00:00Z", "ok": True, "node": "pgnode2",
                       "errors": {"checksum": 0, "missing_wal": 0, "other": 0}, "repos": {"1": {"window": window}}})


def windowed(state: str) -> ScriptedCluster:
    cluster = ScriptedCluster()
    cluster.files[("pgnode2", PATHS.verify_state)] = state
    return cluster


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def test_a_target_in_a_gap_of_the_recoverable_window_is_refused_with_exit_3(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The backups and the newest WAL allow it; the verification found no continuous WAL reaching it."""
    cluster = windowed(verified([(OLDEST, GAP[0]), (GAP[1], WAL_END - 60)]))
    middle = (GAP[0] + GAP[1]) // 2
    cluster.answer = psql_says(f"{middle}.000000 {iso(middle)}\n")
    assert recover_main(cluster, monkeypatch, "--to", "2026-11-21 08:13:20+00", "--yes") == 3
    err = capsys.readouterr().err
    assert "lies outside the recoverable window of repo1 (the verification at 2026-11-23T03:00:00Z on pgnode2)" in err
    assert f"{iso(OLDEST)} to {iso(GAP[0])}; {iso(GAP[1])} to {iso(WAL_END - 60)}" in err
    assert [s for s in cluster.scripts() if any(word in s for word in STOPS)] == []
    for inside in (OLDEST + 10, GAP[1] + 10, WAL_END - 30):  # in a piece, or after the window (the live check)
        cluster.reachable("pgnode1", at(inside))


def test_a_damaged_set_cannot_start_a_recovery_even_to_the_latest_state() -> None:
    newest = "20261122-020000F_20261123-020000I"
    cluster = windowed(verified([(OLDEST, WAL_END - 60)], damaged=(newest,)))
    with pytest.raises(ValueError, match=f"restore to the latest state starts from, {newest}, cannot start a recovery"):
        cluster.reachable("pgnode1", None)
    cluster.reachable("pgnode1", at(OLDEST + 10))  # the full before it starts that restore


def test_a_window_listing_only_some_pieces_narrows_only_what_it_lists() -> None:
    """pieceCount 3, the first and the newest listed: a time between them may be in the unlisted one; one
    before the first is refused."""
    cluster = windowed(verified([(OLDEST + 1000, GAP[0]), (GAP[1] + 5000, WAL_END - 60)], count=3))
    cluster.reachable("pgnode1", at(GAP[1]))
    with pytest.raises(ValueError, match=r"its pieces \(the first and the newest of 3\)"):
        cluster.reachable("pgnode1", at(OLDEST + 500))


def test_no_verification_or_an_unreadable_one_narrows_nothing() -> None:
    for state in (None, "{not json"):
        cluster = ScriptedCluster() if state is None else windowed(state)
        cluster.reachable("pgnode1", at((GAP[0] + GAP[1]) // 2))


def test_the_recoverys_and_the_aborts_backups_expire_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention would drop the backups another try needs (the lab's retention of 2 fulls lost the target's
    backup after a recovery's step-5 backup and an abort's): both backups override it for their run."""
    scripts: list[str] = []
    monkeypatch.setattr(recover.Recovery, "in_unit",
                        lambda self, node, step, script, timeout: scripts.append(script))
    recover.Recovery(ScriptedCluster(), plan(), print).step_backup()
    rejoining(plan(**MID_6), {"pgnode2": "moved\n" + STANDBY, "pgnode3": "moved\n" + STANDBY})
    backups = [s for s in scripts if " backup" in s]
    assert len(backups) == 2
    for script in backups:
        assert "--repo1-retention-full=9999999 --repo1-retention-archive=9999999" in script
