"""The cluster-wide steps (stanza, archiving, verify) run under bash as rendered, against a fake `patronictl`
first on PATH: they act on the leader only, do nothing on a replica, and fail, naming why, when the cluster
has no leader, the DCS cannot be read, or the node is not a member. `runuser` and `sleep` are fakes too
(every call is recorded), so nothing touches this machine and the leader wait costs no time.

The member lists follow `patronictl list -f json` as Patroni 3.0 and 4.0 print it (patroni/ctl.py,
output_members and print_output): one object per member with the keys Cluster, Member, Host, Role, State,
TL, "Lag in MB" (4.1: Receive/Replay LSN and Lag instead) and "Pending restart" when any member has one;
keys whose value is empty are left out. Roles are the DCS role title-cased: Leader, Standby Leader, Replica,
Sync Standby, and from 4.0 Quorum Standby. Patroni 4 renamed master to primary in its REST API and DCS,
but `patronictl list` still says "Leader"; a 4.x replica's State is its replication state ("streaming").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.layout import NAMES, PATHS
from components.render import TEMPLATES
from tests.harness import Run, run_program, script_of, stack_config

FAKES = {
    "patronictl": r"""#!/bin/bash
# Records its arguments; `list` answers with the next canned response (the last one repeats).
printf 'patronictl %s\n' "$*" >>"$FAKE/calls"
case " $* " in
  *" list "*)
    echo $(($(cat "$FAKE/clock") + $(cat "$FAKE/list-cost"))) >"$FAKE/clock"
    n=$(($(cat "$FAKE/list-count" 2>/dev/null || echo 0) + 1))
    echo "$n" >"$FAKE/list-count"
    last=$(cat "$FAKE/list/last")
    [[ "$n" -le "$last" ]] || n=$last
    if [[ -e "$FAKE/list/$n.fail" ]]; then
      cat "$FAKE/list/$n.fail" >&2
      exit 1
    fi
    cat "$FAKE/list/$n.json"
    ;;
  *" edit-config "*) cat >"$FAKE/edit-config.yaml" ;;
esac
""",
    "runuser": r"""#!/bin/bash
# Records its arguments; answers psql (archive_mode) and `pgbackrest info` like a healthy leader; runs python3
# (the verify step's reading of the state files) as the current user.
printf 'runuser %s\n' "$*" >>"$FAKE/calls"
case " $* " in
  *" python3 "*) shift 3 && exec "$@" ;;
  *" psql "*) echo on ;;
  *" --output=json info "*)
    if [[ -e "$FAKE/info.fail" ]]; then
      cat "$FAKE/info.fail" >&2
      exit 1
    fi
    cat "$FAKE/info.json"
    ;;
  *" stanza-create ") # the n-th stanza-create exits with create/<n> (its exit status, then its output), else 0
    n=$(($(cat "$FAKE/create-count" 2>/dev/null || echo 0) + 1))
    echo "$n" >"$FAKE/create-count"
    if [[ -e "$FAKE/create/$n" ]]; then
      tail -n +2 "$FAKE/create/$n" >&2
      exit "$(head -n 1 "$FAKE/create/$n")"
    fi
    ;;
  *" repo-ls archive "*) cat "$FAKE/repo-ls-archive.json" ;;
  *" repo-ls backup "*) cat "$FAKE/repo-ls-backup.json" ;;
  *" backup ") # the n-th backup answers with backup/<n> (its exit status, then its output), else succeeds
    n=$(($(cat "$FAKE/backup-count" 2>/dev/null || echo 0) + 1))
    echo "$n" >"$FAKE/backup-count"
    if [[ -e "$FAKE/backup/$n" ]]; then
      tail -n +2 "$FAKE/backup/$n" >&2
      exit "$(head -n 1 "$FAKE/backup/$n")"
    fi
    ;;
esac
""",
    "sleep": """#!/bin/bash
# Records its arguments and advances the fake clock instead of sleeping.
printf 'sleep %s\\n' "$*" >>"$FAKE/calls"
echo $(($(cat "$FAKE/clock") + ${1%s})) >"$FAKE/clock"
""",
    # The clock the steps read (`date +%s`): seconds in $FAKE/clock, advanced by sleep and by each patronictl
    # call ($FAKE/list-cost seconds: a slow DCS).
    "date": """#!/bin/bash
[[ "$*" == "+%s" ]] || exec /usr/bin/date "$@"
cat "$FAKE/clock"
""",
}
NO_PROOFS = {"verify": None, "drill": None}  # no state file on this machine
INFO = [{"name": "main", "status": {"code": 0, "message": "ok"},
         "backup": [{"label": "20261122-020000F", "type": "full", "database": {"id": 1, "repo-key": 1}}]}]
# `pgbackrest repo-ls --recurse --output=json <path>` of repo1's archive and backup (as 2.45 prints them): the files
# count, paths and links do not.
REPO_LS = {  # by the path listed
    "archive": {".": {"type": "path"}, "main": {"type": "path"},
                "main/17-1/0000000100000000/000000010000000000000001-ab.zst": {"type": "file", "size": 1000,
                                                                               "time": 1795678139}},
    "backup": {".": {"type": "path"}, "main/backup.info": {"type": "file", "size": 20, "time": 1795678139},
               "main/20261122-020000F": {"type": "link", "destination": "x"}},
}


def member_list(version: str, roles: dict[str, str], pending: tuple[str, ...] = ()) -> str:
    """`patronictl list -f json` of a cluster whose members have `roles`, as Patroni `version` prints it."""
    rows = []
    for i, (name, role) in enumerate(roles.items(), start=1):
        leads = role in ("Leader", "Standby Leader")
        state = "running" if leads or version == "3" else "streaming"
        row: dict[str, Any] = {"Cluster": "main", "Member": name, "Host": f"10.0.0.{i}", "Role": role,
                               "State": state, "TL": 3}
        if version == "4.1":
            row.update({"Receive LSN": "0/5000060", "Replay LSN": "0/5000060"})
            if not leads:
                row.update({"Receive Lag": 0, "Replay Lag": 0})
        elif not leads:
            row["Lag in MB"] = 0
        if name in pending:
            row["Pending restart"] = "*"
        rows.append(row)
    return json.dumps(rows)


VERSIONS = {
    # Patroni version -> the roles of a healthy cluster led by pg1.
    "3": {"pg1": "Leader", "pg2": "Replica", "pg3": "Sync Standby"},
    "4.0": {"pg1": "Leader", "pg2": "Quorum Standby", "pg3": "Replica"},
    "4.1": {"pg1": "Leader", "pg2": "Sync Standby", "pg3": "Replica"},
}
LEADERLESS = {"pg1": "Replica", "pg2": "Replica", "pg3": "Replica"}
DCS_DOWN = "patroni.dcs.etcd3.Etcd3Error: etcd3 connection to 127.0.0.1:2379 refused"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]

    def called(self, prefix: str) -> list[str]:
        return [c for c in self.calls if c.startswith(prefix)]


@pytest.fixture(scope="module")
def patroni_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("patroni") / "patroni.yml"
    path.write_text("scope: main\nname: pg1\n")
    return path


@pytest.fixture(scope="module")
def run(patroni_config: Path) -> Run:
    config = stack_config()  # nodes pg1, pg2, pg3; stanza main
    config["cluster"]["patroniConfig"] = str(patroni_config)
    return run_program(config)


def run_step(run: Run, tmp_path: Path, node: str, step: str, responses: Sequence[str | Exception],
             wait: int | None = 4, info: list[dict[str, Any]] = INFO,
             backups: Sequence[tuple[int, str]] = (), list_cost: int = 0) -> Result:
    """Runs the rendered `step` of `node` as pgbackup does (`bash -c <script> pgbackup-<step>`); patronictl's
    n-th `list` prints responses[n] (an Exception: fails with its text on stderr), the last one repeating;
    `pgbackrest info` prints `info`; the n-th `pgbackrest backup` exits and prints as backups[n] says (beyond
    them: succeeds); each `patronictl list` takes `list_cost` seconds of the fake clock."""
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    (fake / "list").mkdir()
    for name, text in FAKES.items():
        (fake / "bin" / name).write_text(text)
        (fake / "bin" / name).chmod(0o755)
    for i, response in enumerate(responses, start=1):
        if isinstance(response, Exception):
            (fake / "list" / f"{i}.fail").write_text(f"{response}\n")
        else:
            (fake / "list" / f"{i}.json").write_text(response + "\n")
    (fake / "list" / "last").write_text(str(len(responses)))
    (fake / "info.json").write_text(json.dumps(info))
    (fake / "backup").mkdir()
    for i, (status, output) in enumerate(backups, start=1):
        (fake / "backup" / str(i)).write_text(f"{status}\n{output}\n")
    for path, listing in REPO_LS.items():
        (fake / f"repo-ls-{path}.json").write_text(json.dumps(listing))
    (fake / "calls").touch()
    (fake / "clock").write_text("1000000\n")
    (fake / "list-cost").write_text(f"{list_cost}\n")
    env = {"PATH": os.pathsep.join([str(fake / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]]),
           "FAKE": str(fake), "LANG": "C.UTF-8", "TMPDIR": str(tmp_path)}
    if wait is not None:
        env["PGBACKUP_LEADER_WAIT"] = str(wait)
    script = script_of(run.named(f"cluster-{node}-{step}"))
    result = subprocess.run(["bash", "-c", script, f"pgbackup-{step}"], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    return Result(result.returncode, result.stdout, result.stderr, (fake / "calls").read_text().splitlines())


def pgbackrest_calls(result: Result) -> list[str]:
    return [c for c in result.called("runuser") if "pgbackrest" in c]


# -- a healthy cluster -------------------------------------------------------------------------------------


INFO_CALL = "runuser -u postgres -- env --chdir=/ pgbackrest --stanza=main --output=json info"
CREATE_CALL = "runuser -u postgres -- env --chdir=/ pgbackrest --stanza=main --log-level-console=warn stanza-create"
STATUS = {0: "ok", 1: "missing stanza path", 2: "no valid backups", 3: "missing stanza data",
          4: "different across repos"}


def stanza_in_repos(*codes: int) -> list[dict[str, Any]]:
    """`pgbackrest info --output=json` of stanza main whose repositories 1..n have these status codes (2.45's
    shape: a status per repository, and the stanza's own, 4 when they differ)."""
    own = codes[0] if len(set(codes)) == 1 else 4
    return [{"name": "main", "archive": [], "backup": [], "db": [], "cipher": "aes-256-cbc",
             "repo": [{"key": i, "cipher": "aes-256-cbc", "status": {"code": c, "message": STATUS[c]}}
                      for i, c in enumerate(codes, start=1)],
             "status": {"code": own, "message": STATUS[own], "lock": {"backup": {"held": False}}}}]


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_the_leader_creates_the_stanza(run: Run, tmp_path: Path, version: str) -> None:
    result = run_step(run, tmp_path, "pg1", "stanza", [member_list(version, VERSIONS[version])],
                      info=stanza_in_repos(1, 1))
    assert result.returncode == 0, result.stderr
    assert pgbackrest_calls(result) == [INFO_CALL, CREATE_CALL]
    assert "role=leader: stanza main ready" in result.stdout
    assert result.called("sleep") == []


@pytest.mark.parametrize("codes", [(0, 0), (0, 2), (2, 2), (2,)])
def test_a_stanza_every_repository_holds_is_not_created_again(run: Run, tmp_path: Path,
                                                               codes: tuple[int, ...]) -> None:
    """stanza-create would take the archive lock that an asynchronous archive-push worker forked at that moment
    needs (its archive_command then waits archive-timeout and fails): a stanza already there is left alone."""
    result = run_step(run, tmp_path, "pg1", "stanza", [member_list("3", VERSIONS["3"])],
                      info=stanza_in_repos(*codes))
    assert result.returncode == 0, result.stderr
    assert pgbackrest_calls(result) == [INFO_CALL]
    assert "role=leader: stanza main ready (present in every repository)" in result.stdout


@pytest.mark.parametrize("codes", [(0, 1), (1, 0), (0, 3), (2, 1)])
def test_a_repository_without_the_stanza_gets_it(run: Run, tmp_path: Path, codes: tuple[int, ...]) -> None:
    result = run_step(run, tmp_path, "pg1", "stanza", [member_list("3", VERSIONS["3"])],
                      info=stanza_in_repos(*codes))
    assert result.returncode == 0, result.stderr
    assert pgbackrest_calls(result) == [INFO_CALL, CREATE_CALL]
    assert "role=leader: stanza main ready" in result.stdout
    assert "present in every repository" not in result.stdout


def test_when_info_fails_stanza_create_runs_and_says_why(run: Run, tmp_path: Path) -> None:
    """A repository info cannot read: stanza-create runs, and its own error is the one reported."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "info.fail").write_text("ERROR: [039]: HTTP request failed with 403 (Forbidden)\n")
    result = run_step(run, tmp_path, "pg1", "stanza", [member_list("3", VERSIONS["3"])])
    assert result.returncode == 0, result.stderr
    assert pgbackrest_calls(result) == [INFO_CALL, CREATE_CALL]


def stanza_create_answers(tmp_path: Path, *answers: tuple[int, str]) -> None:
    """The n-th `pgbackrest stanza-create` of the fake exits with answers[n] (status, message); beyond: 0."""
    (tmp_path / "fake" / "create").mkdir(parents=True)
    for i, (status, message) in enumerate(answers, start=1):
        (tmp_path / "fake" / "create" / str(i)).write_text(f"{status}\n{message}\n")


def test_a_failing_stanza_create_fails_the_step(run: Run, tmp_path: Path) -> None:
    stanza_create_answers(tmp_path, (39, "ERROR: [039]: HTTP request failed with 403 (Forbidden)"))
    result = run_step(run, tmp_path, "pg1", "stanza", [member_list("3", VERSIONS["3"])], info=stanza_in_repos(1))
    assert result.returncode != 0
    assert "stanza-create failed (pgBackRest error 39)" in result.stderr
    assert "ready" not in result.stdout
    assert pgbackrest_calls(result) == [INFO_CALL, CREATE_CALL]  # no retry of another error than 50


def test_a_busy_stanza_create_is_retried_until_it_succeeds(run: Run, tmp_path: Path) -> None:
    stanza_create_answers(tmp_path, (50, "ERROR: [050]: unable to acquire lock"), (50, "ERROR: [050]: again"))
    result = run_step(run, tmp_path, "pg1", "stanza", [member_list("3", VERSIONS["3"])], info=stanza_in_repos(1))
    assert result.returncode == 0, result.stderr
    assert pgbackrest_calls(result) == [INFO_CALL, CREATE_CALL, CREATE_CALL, CREATE_CALL]
    assert "role=leader: stanza main ready" in result.stdout


@pytest.mark.parametrize("version", sorted(VERSIONS))  # pg2 is a Replica, Quorum Standby, Sync Standby
@pytest.mark.parametrize("step", ["stanza", "archiving", "verify"])
def test_a_replica_does_nothing_and_succeeds(run: Run, tmp_path: Path, version: str, step: str) -> None:
    result = run_step(run, tmp_path, "pg2", step, [member_list(version, VERSIONS[version])])
    assert result.returncode == 0, result.stderr
    # Nothing but reading its own state files (verify): no pgBackRest, no psql.
    assert [c for c in result.called("runuser") if " python3 " not in c] == []
    assert [c for c in result.called("patronictl") if " list " not in f"{c} "] == []  # no edit-config, restart
    assert "role=replica: the leader (pg1)" in result.stdout + result.stderr
    if step == "verify":
        assert json.loads(result.stdout) == {"node": "pg2", "role": "replica", "info": None, "repo_bytes": None,
                                             "proofs": NO_PROOFS}


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_the_leader_sets_archiving_and_restarts_pending_members(
        run: Run, tmp_path: Path, version: str, patroni_config: Path) -> None:
    roles = VERSIONS[version]
    responses = [member_list(version, roles),                             # the role
                 member_list(version, roles, pending=("pg1", "pg3")),     # the replica restarts first
                 member_list(version, roles, pending=("pg1",)),           # pg3 healthy again
                 member_list(version, roles, pending=("pg1",)),           # the leader's turn
                 member_list(version, roles)]                             # pg1 healthy, nothing pending
    result = run_step(run, tmp_path, "pg1", "archiving", responses)
    assert result.returncode == 0, result.stderr
    prefix = f"patronictl -c {patroni_config} "
    assert [c.removeprefix(prefix) for c in result.called("patronictl")] == [
        "list -f json", "edit-config --force --quiet --apply -",
        "list -f json", "restart --pending --force -- main pg3", "list -f json",
        "list -f json", "restart --pending --force -- main pg1", "list -f json",
        "list -f json"]
    applied = yaml.safe_load((tmp_path / "fake" / "edit-config.yaml").read_text())  # from stdin
    assert applied["postgresql"]["parameters"]["archive_mode"] == "on"
    assert "role=leader: archiving configured" in result.stdout


def test_a_member_name_from_the_dcs_is_never_read_as_an_option(run: Run, tmp_path: Path) -> None:
    """Issue 20 (Low): a DCS member named `--help` (or any name outside Patroni's usual characters) is refused
    before any restart; a valid one is passed after `--` (see the restart calls above)."""
    roles = {"pg1": "Leader", "pg2": "Replica", "--help": "Replica"}
    responses = [member_list("3", roles), member_list("3", roles, pending=("--help",))]
    result = run_step(run, tmp_path, "pg1", "archiving", responses)
    assert result.returncode != 0
    assert "the DCS lists a member named '--help': not a name pgbackup restarts" in result.stderr
    assert not [c for c in result.called("patronictl") if " restart " in c]


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_the_leader_verifies(run: Run, tmp_path: Path, version: str) -> None:
    result = run_step(run, tmp_path, "pg1", "verify", [member_list(version, VERSIONS[version])])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"node": "pg1", "role": "leader", "info": INFO, "repo_bytes": {"1": 1020},
                                         "proofs": NO_PROOFS}
    assert [c.split(" pgbackrest ")[1] for c in pgbackrest_calls(result)] == [
        "--stanza=main --log-level-console=warn check", "--stanza=main --output=json info",
        "--stanza=main --repo=1 --output=json --recurse repo-ls archive",
        "--stanza=main --repo=1 --output=json --recurse repo-ls backup"]


NO_BACKUP = [{**INFO[0], "backup": []}]
FIRST_FULL = "--stanza=main --log-level-console=warn --repo=1 --type=full backup"
# pgBackRest 2.45's words (src/db/db.c, dbReplayWait) when the standby's restartpoint missed the backup's start.
STANDBY_TIMEOUT = ("P00  ERROR: [082]: timeout before standby checkpoint lsn reached 0/5000028 - only reached "
                   "0/4000110")


def test_a_stanza_without_backups_gets_its_first_full_backup(run: Run, tmp_path: Path) -> None:
    result = run_step(run, tmp_path, "pg1", "verify", [member_list("3", VERSIONS["3"])], info=NO_BACKUP)
    assert result.returncode == 0, result.stderr
    backups = [c for c in pgbackrest_calls(result) if c.endswith(" backup") and " repo-ls " not in c]
    assert backups == [f"runuser -u postgres -- env --chdir=/ flock --wait {NAMES.backup_lock_wait} "
                       f"{PATHS.backup_lock} pgbackrest {FIRST_FULL}"]
    assert "repo1 has no backup yet: taking its first full backup" in result.stderr


def test_a_standby_timeout_in_the_first_backup_is_retried_once(run: Run, tmp_path: Path) -> None:
    result = run_step(run, tmp_path, "pg1", "verify", [member_list("3", VERSIONS["3"])], info=NO_BACKUP,
                      backups=[(82, STANDBY_TIMEOUT)])
    assert result.returncode == 0, result.stderr
    assert len([c for c in pgbackrest_calls(result) if c.endswith(FIRST_FULL)]) == 2
    assert STANDBY_TIMEOUT in result.stderr  # pgBackRest's own words stay visible
    assert "repo1: pgBackRest timed out waiting for the standby (error 82): taking the first full backup again" \
        in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["role"] == "leader"


@pytest.mark.parametrize(("backups", "status"), [
    pytest.param([(82, STANDBY_TIMEOUT), (82, STANDBY_TIMEOUT)], 82, id="twice"),
    pytest.param([(82, "P00  ERROR: [082]: WAL segment 000000010000000000000005 was not archived before the "
                       "60000ms timeout")], 82, id="other-timeout"),
    pytest.param([(39, "P00  ERROR: [039]: HTTP request failed with 403 (Forbidden)")], 39, id="other-error"),
])
def test_other_first_backup_failures_end_the_step(run: Run, tmp_path: Path, backups: list[tuple[int, str]],
                                                  status: int) -> None:
    result = run_step(run, tmp_path, "pg1", "verify", [member_list("3", VERSIONS["3"])], info=NO_BACKUP,
                      backups=backups)
    assert result.returncode == status  # pgBackRest's own exit status
    assert len([c for c in pgbackrest_calls(result) if c.endswith(FIRST_FULL)]) == len(backups)
    assert backups[-1][1] in result.stderr
    assert f"pgbackup: step verify on node pg1: the first full backup into repo1 failed (pgBackRest exited " \
           f"{status})" in result.stderr
    assert result.stdout == ""  # no report: the program never reads a verification that failed


def test_a_leader_that_appears_during_the_wait_is_found(run: Run, tmp_path: Path) -> None:
    responses: list[str | Exception] = [member_list("4.0", LEADERLESS), Exception(DCS_DOWN),
                                        member_list("4.0", VERSIONS["4.0"])]
    result = run_step(run, tmp_path, "pg1", "stanza", responses, wait=10)
    assert result.returncode == 0, result.stderr
    assert len(result.called("patronictl")) == 3
    assert result.called("sleep") == ["sleep 2"] * 2
    assert pgbackrest_calls(result) == [INFO_CALL, CREATE_CALL]


# -- what must fail ------------------------------------------------------------------------------------------


def assert_failed_without_acting(result: Result, node: str, step: str, message: str) -> None:
    assert result.returncode != 0, result.stdout
    assert f"pgbackup: step {step} on node {node}: {message}" in result.stderr
    assert result.called("runuser") == []
    assert [c for c in result.called("patronictl") if " list " not in f"{c} "] == []
    assert not re.search(r"role=", result.stdout)


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("node", ["pg1", "pg2"])
@pytest.mark.parametrize("step", ["stanza", "archiving", "verify"])
def test_no_leader_fails_after_the_wait(run: Run, tmp_path: Path, version: str, node: str, step: str) -> None:
    result = run_step(run, tmp_path, node, step, [member_list(version, LEADERLESS)], wait=4)
    members = "pg1 Replica {0}, pg2 Replica {0}, pg3 Replica {0}".format("running" if version == "3" else "streaming")
    assert_failed_without_acting(result, node, step, f"the Patroni cluster has no leader (members: {members}); "
                                                     "still so after waiting 4 s")
    assert len(result.called("patronictl")) == 3
    assert result.called("sleep") == ["sleep 2"] * 2


def test_the_default_wait_is_two_minutes_then_fails(run: Run, tmp_path: Path) -> None:
    result = run_step(run, tmp_path, "pg2", "stanza", [member_list("3", LEADERLESS)], wait=None)
    assert_failed_without_acting(result, "pg2", "stanza", "the Patroni cluster has no leader")
    assert "still so after waiting 120 s" in result.stderr
    assert result.called("sleep") == ["sleep 2"] * 60
    assert len(result.called("patronictl")) == 61


def test_the_wait_counts_the_time_patronictl_takes_not_the_sleeps(run: Run, tmp_path: Path) -> None:
    """A slow DCS (each `patronictl list` takes 2 s): the step ends once 120 s have elapsed and says so,
    not after 60 sleeps (issue 21: it said "waiting 120 s" and ended after 158 s)."""
    result = run_step(run, tmp_path, "pg2", "stanza", [member_list("3", LEADERLESS)], wait=None, list_cost=2)
    assert_failed_without_acting(result, "pg2", "stanza", "the Patroni cluster has no leader")
    assert "still so after waiting 122 s" in result.stderr  # the 31st list ended at 122 s
    assert len(result.called("patronictl")) == 31
    assert result.called("sleep") == ["sleep 2"] * 30


@pytest.mark.parametrize("step", ["stanza", "archiving", "verify"])
def test_an_unreachable_dcs_fails_naming_it(run: Run, tmp_path: Path, step: str, patroni_config: Path) -> None:
    result = run_step(run, tmp_path, "pg1", step, [Exception(DCS_DOWN)], wait=2)
    assert_failed_without_acting(
        result, "pg1", step, f"cannot read the Patroni cluster: patronictl -c {patroni_config} list exited 1 "
                             f"({DCS_DOWN}); is the DCS reachable from this node?; still so after waiting 2 s")
    assert len(result.called("patronictl")) == 2


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("step", ["stanza", "archiving", "verify"])
def test_a_node_that_is_not_a_member_fails_naming_it(run: Run, tmp_path: Path, version: str, step: str) -> None:
    roles = {"pg2": "Leader", "pg3": "Replica"}
    result = run_step(run, tmp_path, "pg1", step, [member_list(version, roles)])
    assert_failed_without_acting(result, "pg1", step, "no Patroni member is named pg1 (members: pg2, pg3): "
                                                      "node names must be the Patroni member names")
    assert result.called("sleep") == []  # at once: waiting does not make a node a member


def test_a_standby_cluster_fails_naming_its_standby_leader(run: Run, tmp_path: Path) -> None:
    roles = {"pg1": "Standby Leader", "pg2": "Replica", "pg3": "Replica"}
    result = run_step(run, tmp_path, "pg2", "stanza", [member_list("4.0", roles)])
    assert_failed_without_acting(result, "pg2", "stanza", "the Patroni cluster is a standby cluster "
                                                          "(pg1 is its Standby Leader)")


def test_output_that_is_not_a_member_list_fails(run: Run, tmp_path: Path, patroni_config: Path) -> None:
    result = run_step(run, tmp_path, "pg1", "stanza", ['{"error": "no cluster"}'])
    assert_failed_without_acting(result, "pg1", "stanza", f"patronictl -c {patroni_config} list -f json printed "
                                                          'no member list: {"error": "no cluster"}')


# -- the mechanism ------------------------------------------------------------------------------------------


def test_a_failure_inside_a_command_substitution_ends_the_script(run: Run) -> None:
    """Every step's header turns set -e on inside $(...), where bash would otherwise ignore a failure."""
    header = script_of(run.named("cluster-pg1-stanza")).split("readonly PATRONI_CONFIG")[0]
    result = subprocess.run(["bash", "-c", header + 'x=$(false; echo after)\necho "x=${x}"\n'],
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "x=" not in result.stdout
    assert "step stanza failed on node pg1" in result.stderr


def test_no_template_calls_a_patroni_helper_inside_a_command_substitution() -> None:
    for path in sorted((TEMPLATES / "scripts").glob("*.j2")):
        assert not re.search(r"\$\(\s*(patroni_|as_postgres\b.*\bpatroni)", path.read_text()), path.name
