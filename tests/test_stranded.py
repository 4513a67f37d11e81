"""A standby left behind by a failover (issue 21, 1): the backups never pick it, and it is reported by name.

Patroni's GET /cluster documents as Patroni 3 and 4 answer them (patroni/utils.py cluster_as_json): one
object per member with name, role (leader, replica, sync_standby; 4.x: quorum_standby), state (running; a
3.0.4+ replica: streaming or "in archive recovery"), timeline and lag (bytes, or "unknown"). The programs are
rendered as the files step installs them, run by python with the local Patroni replaced by a file:// URL
and pgBackRest by a stand-in that prints its arguments.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import pytest

from components.context import BackupProgramContext, NodeContext, extend
from components.context import node_context as template_context
from components.layout import PATHS
from components.monitoring import alert_rules, check_script
from components.plan import plan_cluster
from components.render import render
from pgbackup_cli import status
from tests.harness import HEALTHY_INFO
from tests.test_hostile import valid_settings

OK, WARNING, UNKNOWN = 0, 1, 3
MIB = 1024 * 1024


def member(name: str, role: str = "replica", state: str = "streaming", timeline: int = 4,
           lag: int | str = 0) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "role": role, "state": state, "host": f"{name}.example.net",
                             "port": 5432, "api_url": f"http://{name}.example.net:8008/patroni", "timeline": timeline}
    if role != "leader":
        found["lag"] = lag
    return found


def cluster(*replicas: dict[str, Any]) -> dict[str, Any]:
    """GET /cluster of a cluster led by pg1 on timeline 4 (the settings' first node: this one)."""
    return {"members": [member("pg1", "leader", "running"), *replicas], "scope": "main"}


HEALTHY = cluster(member("pg2"), member("pg3", "sync_standby"))
PG2_STRANDED = cluster(member("pg2", state="running", timeline=3, lag="unknown"), member("pg3"))
PG2_LAGGING = cluster(member("pg2", lag=500 * MIB), member("pg3", lag=MIB))
ALL_STRANDED = cluster(member("pg2", state="running", timeline=3), member("pg3", state="in archive recovery"))


def node_ctx(tmp_path: Path) -> NodeContext:
    """The first node's context, its Patroni's REST API a directory of files and root's state in tmp_path."""
    settings = valid_settings()
    return dataclasses.replace(template_context(settings, settings.cluster.nodes[0]),
                               primary_url=(tmp_path / "primary").as_uri(),
                               paths=dataclasses.replace(PATHS, stranded_state=str(tmp_path / "stranded.json")))


def load(text: str, tmp_path: Path, name: str) -> types.ModuleType:
    """A rendered program as a module (its main() is not run)."""
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    module = types.ModuleType(name)
    exec(compile(text, str(path), "exec"), module.__dict__)  # noqa: S102 -- the program under test
    return module


# -- the backup program ---------------------------------------------------------------------------------------


def backup_program(tmp_path: Path) -> str:
    ctx = node_ctx(tmp_path)
    return render("monitoring/pgbackup-backup.py.j2", extend(
        BackupProgramContext, ctx, peers_hosts={peer.name: peer.host for peer in ctx.peers}))


def run_backup(tmp_path: Path, document: dict[str, Any] | None) -> tuple[int, str, list[str]]:
    """Runs pgbackup-backup --repo=1 --type=full with GET /cluster answering `document` (None: refused);
    (its exit status, what it said, the arguments pgBackRest got)."""
    if document is not None:
        (tmp_path / "cluster").write_text(json.dumps(document))
    fake = tmp_path / "pgbackrest"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    program = tmp_path / "pgbackup-backup"
    program.write_text(backup_program(tmp_path).replace('PGBACKREST = "/usr/bin/pgbackrest"',
                                                        f"PGBACKREST = {str(fake)!r}"))
    result = subprocess.run([sys.executable, str(program), "--repo=1", "--type=full"], capture_output=True,
                            text=True, timeout=30, check=False)
    said, _, argv = result.stdout.rstrip("\n").rpartition("\n")
    return result.returncode, said, json.loads(argv)


BACKUP = ["--stanza=main", "--repo=1", "--type=full"]


@pytest.mark.parametrize(("document", "options", "says"), [
    (HEALTHY, ["--pg2-host=pg2.example.net"], "backing up from the standby pg2"),
    (PG2_STRANDED, ["--pg2-host=pg3.example.net"],
     "backing up from the standby pg3; skipped: pg2 stranded (on timeline 3, the leader on 4)"),
    (PG2_LAGGING, ["--pg2-host=pg3.example.net"],
     "backing up from the standby pg3; skipped: pg2 not streaming within 67108864 bytes of the leader"),
    (cluster(member("pg2", lag="unknown"), member("pg3")), ["--pg2-host=pg3.example.net"], "from the standby pg3"),
    (ALL_STRANDED, ["--no-backup-standby"],
     "no standby follows the leader's timeline and streams from it; skipped: pg2 stranded (on timeline 3, the "
     "leader on 4), pg3 stranded (in archive recovery on timeline 4: not streaming from the leader): backing up "
     "from the leader pg1"),
    (None, ["--no-backup-standby"], "cannot be read"),
    ({"members": "no"}, ["--no-backup-standby"], "names no running leader"),
], ids=["healthy", "one-stranded", "one-lagging", "lag-unknown", "all-stranded", "patroni-down", "garbage"])
def test_the_backup_uses_a_standby_that_follows_the_leader_or_the_leader(
        tmp_path: Path, document: dict[str, Any] | None, options: list[str], says: str) -> None:
    """pgBackRest takes the first standby among pg2..pgN that answers: the command line's pg2-host (which
    takes precedence over pgbackrest.conf) is one that follows; with none, --no-backup-standby (the leader)."""
    code, said, argv = run_backup(tmp_path, document)
    assert code == 0
    assert argv == [*BACKUP, *options, "backup"]
    assert said.startswith("pgbackup-backup: "), said
    assert says in said, said


def test_the_backup_program_refuses_other_arguments(tmp_path: Path) -> None:
    program = tmp_path / "pgbackup-backup"
    program.write_text(backup_program(tmp_path))
    for argv in (["--repo=1"], ["--repo=1", "--type=full;rm"], ["--repo=1", "--type=full", "--pg2-host=x"]):
        result = subprocess.run([sys.executable, str(program), *argv], capture_output=True, text=True, timeout=30,
                                check=False)
        assert result.returncode == 2, argv
        assert "usage:" in result.stderr


def test_the_backup_units_run_pgbackrest_through_the_program() -> None:
    plan = plan_cluster(valid_settings())["pg1"]
    files = {f.path: f for f in plan.files}
    assert (files[PATHS.backup_script].mode, files[PATHS.backup_script].owner) == ("0755", "root")
    units = [f for f in plan.files if f.path.startswith(f"{PATHS.unit_dir}/pgbackup-backup-")
             and f.path.endswith(".service")]
    assert units
    for unit in units:
        assert isinstance(unit.content, str)
        start = next(line for line in unit.content.splitlines() if line.startswith("ExecStart="))
        assert f"{PATHS.backup_lock} {PATHS.backup_script} --repo=" in start, start
        assert "/usr/bin/pgbackrest" not in start


# -- the collector ----------------------------------------------------------------------------------------------


def collect(module: types.ModuleType, tmp_path: Path, document: dict[str, Any] | None, now: int) -> list[str]:
    if document is None:
        (tmp_path / "cluster").unlink(missing_ok=True)
    else:
        (tmp_path / "cluster").write_text(json.dumps(document))
    lines: list[str] = []

    def metric(name: str, value: Any, kind: str = "gauge", extra: str = "", help_text: str = "") -> None:
        if help_text:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        lines.append(name + '{stanza="main"' + extra + "} " + str(value))

    module.standby_metrics(metric, now)
    return lines


def test_the_collector_names_each_stranded_member_since_it_first_found_it(tmp_path: Path) -> None:
    module = load(render("monitoring/pgbackup-metrics.py.j2", node_ctx(tmp_path)), tmp_path, "collector")
    since = 'pgbackup_stranded_member_since_timestamp_seconds{stanza="main",member="pg2",scope="main",'
    first = collect(module, tmp_path, PG2_STRANDED, 1000)
    assert since + 'reason="on timeline 3, the leader on 4"} 1000' in first
    assert 'pgbackup_backup_standby_usable{stanza="main"} 1' in first
    check = subprocess.run(["promtool", "check", "metrics"], input="\n".join(first) + "\n", capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    # Five minutes on, still stranded: since stays; all stranded: none usable.
    later = collect(module, tmp_path, ALL_STRANDED, 1300)
    assert since + 'reason="on timeline 3, the leader on 4"} 1000' in later
    assert any(line.startswith(since.replace("pg2", "pg3")) and line.endswith("} 1300") for line in later)
    assert 'pgbackup_backup_standby_usable{stanza="main"} 0' in later
    # Rebuilt: gone, and forgotten (stranded again later: a new since).
    assert not [line for line in collect(module, tmp_path, HEALTHY, 1600) if "stranded" in line]
    assert since + 'reason="on timeline 3, the leader on 4"} 1900' in collect(module, tmp_path, PG2_STRANDED, 1900)
    # Patroni does not answer: said, and nothing else claimed.
    assert collect(module, tmp_path, None, 2200) == [
        "# HELP pgbackup_patroni_cluster_readable 1 when the leader's Patroni answered GET /cluster at this collection",
        "# TYPE pgbackup_patroni_cluster_readable gauge", 'pgbackup_patroni_cluster_readable{stanza="main"} 0']


def test_the_collector_on_the_leader_writes_them(tmp_path: Path) -> None:
    """main() as the timer runs it, on the leader (pgBackRest and psql failing: beside the point here)."""
    module = load(render("monitoring/pgbackup-metrics.py.j2", node_ctx(tmp_path)), tmp_path, "collector")
    module.__dict__.update(is_leader=lambda: True, OUTPUT=str(tmp_path / "pgbackrest.prom"),
                           as_postgres=lambda *command, timeout=0: subprocess.CompletedProcess(command, 1, "", ""))
    (tmp_path / "cluster").write_text(json.dumps(PG2_STRANDED))
    module.main()
    written = (tmp_path / "pgbackrest.prom").read_text()
    assert 'pgbackup_stranded_member_since_timestamp_seconds{stanza="main",member="pg2",scope="main",' in written


def test_a_member_name_from_the_dcs_stays_one_label_value(tmp_path: Path) -> None:
    module = load(render("monitoring/pgbackup-metrics.py.j2", node_ctx(tmp_path)), tmp_path, "collector")
    lines = collect(module, tmp_path, cluster(member('pg9"} 1\nevil{a="', timeline=3)), 1000)
    check = subprocess.run(["promtool", "check", "metrics"], input="\n".join(lines) + "\n", capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not any(line.startswith("evil") for line in lines)


# -- the alert rule ------------------------------------------------------------------------------------------------


def test_the_stranded_alert_passes_promtool(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(alert_rules(valid_settings()))
    tests = tmp_path / "alert-tests-stranded.yml"
    tests.write_text((Path(__file__).parent / "data" / "alert-tests-stranded.yml").read_text())
    result = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the check command -------------------------------------------------------------------------------------------


def ago(line: str, now: int) -> str:
    """A sample whose value is AGO<n>: n seconds before now."""
    name, _, value = line.rpartition(" ")
    return f"{name} {now - int(value[3:])}" if value.startswith("AGO") else line


def run_check(tmp_path: Path, *lines: str, leader: bool = True) -> tuple[int, str]:
    settings = valid_settings()
    script = tmp_path / "pgbackup-check"
    script.write_text(check_script(settings, template_context(settings, settings.cluster.nodes[0])))
    now = int(time.time())
    metrics = tmp_path / "pgbackrest.prom"
    metrics.write_text("\n".join([f'pgbackrest_is_leader{{stanza="main"}} {int(leader)}',
                                  f'pgbackrest_metrics_collected_timestamp_seconds{{stanza="main"}} {now - 60}',
                                  *(ago(line, now) for line in lines)]) + "\n")
    result = subprocess.run([sys.executable, str(script), "standby"], capture_output=True, text=True, timeout=30,
                            check=False, env={**os.environ, "PGBACKUP_METRICS": str(metrics)})
    return result.returncode, result.stdout.strip()


STRANDED = ('pgbackup_stranded_member_since_timestamp_seconds{stanza="main",member="pg3",scope="main",'
            'reason="on timeline 3, the leader on 4"}')
READABLE = 'pgbackup_patroni_cluster_readable{stanza="main"} 1'


@pytest.mark.parametrize(("lines", "code", "says"), [
    ([READABLE, 'pgbackup_backup_standby_usable{stanza="main"} 1', f"{STRANDED} AGO3600"], WARNING,
     "PGBACKREST STANDBY WARNING: member pg3 does not follow the leader (on timeline 3, the leader on 4) for 59 min: "
     "backups skip it; rebuild it: patronictl -c /etc/patroni/patroni.yml reinit main pg3; "
     "1 standby(s) follow the leader for backups"),
    ([READABLE, 'pgbackup_backup_standby_usable{stanza="main"} 1', f"{STRANDED} AGO120"], OK,
     "PGBACKREST STANDBY OK: member pg3 does not follow the leader (on timeline 3, the leader on 4) for 60 s (a "
     "warning after 7 min"),
    ([READABLE, 'pgbackup_backup_standby_usable{stanza="main"} 0'], WARNING,
     "PGBACKREST STANDBY WARNING: no standby follows the leader: backups run from the leader"),
    ([READABLE, 'pgbackup_backup_standby_usable{stanza="main"} 2'], OK,
     "PGBACKREST STANDBY OK: 2 standby(s) follow the leader for backups"),
    (['pgbackup_patroni_cluster_readable{stanza="main"} 0'], UNKNOWN, "did not answer"),
    ([], UNKNOWN, "wrote no member metrics"),
], ids=["stranded", "just-now", "none-usable", "healthy", "patroni-down", "old-collector"])
def test_the_standby_check(tmp_path: Path, lines: list[str], code: int, says: str) -> None:
    found, said = run_check(tmp_path, *lines)
    assert found == code, said
    assert says in said, said


def test_the_standby_check_is_ok_on_a_replica(tmp_path: Path) -> None:
    assert run_check(tmp_path, leader=False) == (OK, "PGBACKREST STANDBY OK: not the leader (the leader judges "
                                                     "the members)")


# -- pgbackup status ---------------------------------------------------------------------------------------------


def listed(name: str, role: str, state: str, timeline: Any) -> dict[str, Any]:
    """A member as `patronictl list -f json` prints it."""
    return {"Cluster": "main", "Member": name, "Host": f"{name}.example.net", "Role": role, "State": state,
            "TL": timeline}


def test_status_names_a_stranded_member_and_its_remedy() -> None:
    members = [listed("pg1", "Leader", "running", 4), listed("pg2", "Replica", "running", 3),
               listed("pg3", "Sync Standby", "streaming", 4), listed("pg4", "Replica", "in archive recovery", 4),
               listed("pg5", "Replica", "stopped", 2)]
    assert status.stranded(members) == [
        "pg2: stranded (on timeline 3, the leader pg1 on 4); backups skip it; rebuild it: patronictl reinit main pg2",
        "pg4: stranded (in archive recovery: not streaming from the leader (if it was just rebuilt, let it catch "
        "up)); backups skip it; rebuild it: patronictl reinit main pg4"]
    assert status.stranded([listed("pg1", "Replica", "running", 4), listed("pg2", "Replica", "running", 3)]) == []


def test_status_exits_1_with_a_stranded_member(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from pgbackup_cli import cli
    from tests import test_operator_reads as reads

    base = Path(tempfile.mkdtemp(prefix="pgbackup-stranded-", dir="/tmp"))
    base.chmod(0o755)
    made = []
    for name in ("pgnode1", "pgnode2", "pgnode3"):
        (base / name).mkdir()
        made.append(reads.FakeNode(name, base / name))
    fake = reads.FakeCluster(made)
    healthy = fake.members()
    info = copy.deepcopy(HEALTHY_INFO[0])
    for backup in info["backup"]:  # recent: the only problem is the stranded member
        backup["timestamp"]["stop"] = int(time.time()) - 3600
    monkeypatch.setattr(fake, "info", lambda node, timeout=120: copy.deepcopy(info))
    for ok in (True, False):
        answer = [dict(m) for m in healthy]
        if not ok:
            answer[2]["TL"] = 2
        monkeypatch.setattr(fake, "members", lambda prefer=None, answer=answer: answer)
        monkeypatch.setattr(cli, "Cluster", lambda stack, key: fake)
        monkeypatch.setattr(cli, "load_stack", lambda name, cwd: reads.lab_stack())
        code = cli.main(reads.pgbackup("status"))
        out = capsys.readouterr().out
        line = "pgnode3: stranded (on timeline 2, the leader pgnode1 on 3)"
        assert (code, line in out) == ((0, False) if ok else (1, True)), out
    shutil.rmtree(base)


# -- pgbackup backup's transient unit --------------------------------------------------------------------------


@pytest.mark.parametrize("installed", [True, False])
def test_pgbackup_backup_without_a_unit_runs_the_program_where_the_node_has_it(installed: bool) -> None:
    """A type no unit runs (diff): the transient unit runs pgbackup-backup after the lock, like the units; a
    node of an older pgbackup (no program) still gets pgBackRest itself."""
    from pgbackup_cli import operations
    from pgbackup_cli.remote import Result
    from tests import test_operator_reads as reads

    scripts: list[str] = []

    class Node:
        name = "pgnode1"

        def run(self, script: str, stdin: str = "", timeout: float = 600, on_output: Any = None) -> Result:
            scripts.append(script)
            if script.startswith("test -x "):
                return Result(0 if installed else 1, "", "")
            return Result(0, "", "")

    fake = reads.FakeCluster([])
    infos: list[dict[str, Any]] = [{"backup": []},
                                   {"backup": [{"label": "20261206-020000F_20261206-030000D", "type": "diff"}]}]
    answers = iter(infos)
    fake.nodes = {"pgnode1": Node()}  # type: ignore[dict-item]
    fake.members = lambda prefer=None: [{"Member": "pgnode1", "Role": "Leader", "State": "running"}]  # type: ignore[method-assign]
    fake.info = lambda node, timeout=120: next(answers)  # type: ignore[method-assign]
    fake.node = lambda name: fake.nodes[name]  # type: ignore[method-assign]
    said: list[str] = []
    assert operations.backup(fake, "diff", 1, said.append) == 0
    started = next(s for s in scripts if "systemd-run" in s)
    if installed:
        assert f"/var/lib/pgbackrest/pgbackup-backup.lock {PATHS.backup_script} --repo=1 --type=diff" in started
        assert "pgbackrest --stanza" not in started
    else:
        assert "pgbackrest --stanza=" in started
        assert PATHS.backup_script not in started
