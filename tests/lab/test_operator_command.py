"""End to end: the operator's command (`pgbackup`, pgbackup_cli) against the lab: status, and the
whole-cluster recovery to the latest state, interrupted, and refused. docs/restoring.md's recovery to a time is
`test_point_in_time_recovery_of_the_whole_cluster_as_the_readme_says` in test_lab.py."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from components.report import repo_of
from lab.control import LAB_DIR, PG_BIN, PG_DATA, ROOT, Lab

pytestmark = pytest.mark.lab

STATE = "/var/lib/pgbackup/recover.json"


def status(lab: Lab) -> tuple[int, dict[str, Any]]:
    result = lab.pgbackup("status", "--json", "--info-timeout", "20", check=False, timeout=300)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def rows_in_every_node(lab: Lab, table: str) -> dict[str, str]:
    return {node: lab.sql(node, f"SELECT count(*) FROM {table}") for node in lab.nodes}  # noqa: S608 -- fixed name


def no_recovery_state(lab: Lab) -> None:
    """No recovery recorded, and no data directory left aside (`recover --cleanup` ran on every node)."""
    for node in lab.nodes:
        assert lab.ssh(node, f"test -e {STATE}", check=False).returncode != 0, node
        assert lab.ssh(node, f"ls -d {PG_DATA}.before-pitr-*", check=False).returncode != 0, node


def test_status_of_a_healthy_cluster_matches_the_nodes(lab: Lab) -> None:
    lab.wait_healthy()
    code, doc = status(lab)
    assert (code, doc["ok"], doc["problems"]) == (0, True, []), doc
    members = {m["Member"]: m for m in lab.members()}
    for node in doc["nodes"]:
        member = members[node["name"]]
        assert node["role"] == ("leader" if member["Role"] == "Leader" else "replica"), node
        assert node["timeline"] == member["TL"], node
        version = lab.ssh(node["name"], "runuser -u postgres -- pgbackrest version").stdout.split()[-1]
        assert node["pgbackrest"] == version, node
    info = lab.info()
    assert doc["cluster"]["leader"] == lab.leader()
    assert doc["cluster"]["stanza"]["code"] == info["status"]["code"] == 0
    for repo in (1, 2):
        newest = [b for b in info["backup"] if repo_of(b) == repo][-1]
        assert doc["cluster"]["newestBackup"][str(repo)]["label"] == newest["label"]
    archived = lab.sql(lab.leader(), "SELECT last_archived_wal FROM pg_stat_archiver")
    assert doc["cluster"]["walArchive"]["lastArchived"] == archived
    assert doc["cluster"]["walArchive"]["failing"] is False
    human = lab.pgbackup("status").stdout
    assert "all well" in human
    assert lab.leader() in human


@pytest.mark.parametrize(("pg_type", "unit"), [("incr", "pgbackup-backup-incr.service"),
                                                ("diff", "pgbackup-backup-ondemand-")])
def test_a_backup_on_demand_runs_on_the_leader_and_says_what_it_made(lab: Lab, pg_type: str, unit: str) -> None:
    """`pgbackup backup`: the scheduled unit when the program installs one for that type (incr), else a
    transient unit with the same command (diff); the new backup is in the repository, as the command says."""
    before = {b["label"] for b in lab.info()["backup"]}
    result = lab.pgbackup("backup", "--type", pg_type, timeout=900)
    made = [b for b in lab.info()["backup"] if b["label"] not in before]
    assert [(b["type"], repo_of(b)) for b in made] == [(pg_type, 1)], made
    assert f"{lab.leader()} (leader)" in result.stdout
    assert unit in result.stdout
    assert "pgbackup-backup: backing up from the " in result.stdout  # the unit's journal: which node it read
    assert f"backup {made[0]['label']} ({pg_type}, repo1)" in result.stdout


def test_a_drill_on_demand_prints_its_rto_and_the_node_records_it(lab: Lab) -> None:
    started = datetime.now(UTC)
    result = lab.pgbackup("drill", timeout=1800)
    line = next(line for line in result.stdout.splitlines() if line.startswith("drill on "))
    node = line.removeprefix("drill on ").split(" ", 1)[0]
    assert node in lab.replicas(), line
    assert "from repo1: ok; RTO " in line, line
    state = json.loads(lab.ssh(node, "cat /var/lib/pgbackrest/pgbackup-drill.json").stdout)
    assert state["ok"] is True
    assert state["node"] == node
    assert datetime.fromisoformat(state["time"].replace("Z", "+00:00")) >= started - timedelta(seconds=2)
    assert f"RTO {state['rtoSeconds']:.1f} s" in line
    # The outputs lastDrill and lastVerify, read by the verify step at apply time from the nodes' state files
    # (the verify step runs again here as on a fresh Pulumi state: it re-runs only when its inputs change).
    leader = lab.leader()
    lab.ssh(leader, "systemctl start pgbackup-verify.service", timeout=900)
    verified = json.loads(lab.ssh(leader, "cat /var/lib/pgbackrest/pgbackup-verify.json").stdout)
    driver_state = lab.driver_state()
    for name in [n for n in driver_state if n.endswith("-verify")]:
        driver_state[name]["inputs"] = "forget"
    (LAB_DIR / "driver-state.json").write_text(json.dumps(driver_state))
    outputs = lab.apply()["outputs"]
    assert outputs["lastDrill"] == {"time": state["time"], "ok": True, "rtoSeconds": state["rtoSeconds"],
                                    "restoredBytes": state["restoredBytes"],
                                    "replayedToArchiveEnd": state["replayedToArchiveEnd"]}
    assert outputs["lastVerify"] == {"time": verified["time"], "ok": True, "errors": verified["errors"]}


def test_status_of_a_degraded_cluster_matches_the_nodes(lab: Lab) -> None:
    stopped = lab.replicas()[0]
    lab.ssh(stopped, "systemctl stop patroni")
    try:
        code, doc = status(lab)
        assert code == 1
        assert not doc["ok"]
        node = next(n for n in doc["nodes"] if n["name"] == stopped)
        member = [m for m in lab.members() if m["Member"] == stopped]
        # Patroni's own view: the member is gone from the DCS (or listed as stopped); the command says the same.
        assert node["state"] == (member[0]["State"] if member else None), (node, member)
        assert any(p.startswith(f"{stopped}:") for p in doc["problems"]), doc["problems"]
    finally:
        lab.ssh(stopped, "systemctl start patroni")
    lab.wait_healthy()
    leader = lab.leader()
    with lab.s3_down():
        segment = lab.failing_segment(leader, "status_outage", 100)
        code, doc = status(lab)
        failed = lab.sql(leader, "SELECT last_failed_wal FROM pg_stat_archiver")
        assert code == 1
        assert not doc["ok"]
        assert doc["cluster"]["walArchive"]["failing"] is True
        assert doc["cluster"]["walArchive"]["lastFailed"] == failed
        assert doc["cluster"]["stanza"]["code"] != 0, doc["cluster"]["stanza"]
        assert any("WAL archiving is failing" in p for p in doc["problems"]), doc["problems"]
    lab.wait_archived(segment, timeout=240)
    lab.wait_archiver_recovered(leader)
    lab.wait_healthy()
    assert status(lab)[0] == 0


def test_recover_refuses_a_target_outside_the_repository_and_touches_nothing(lab: Lab) -> None:
    before = lab.wait_healthy()
    oldest = min(b["timestamp"]["stop"] for b in lab.info()["backup"] if repo_of(b) == 1)
    too_old = datetime.fromtimestamp(oldest - 3600, tz=UTC).strftime("%Y-%m-%d %H:%M:%S+00")
    too_new = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S+00")
    for target, why in ((too_old, "older than the oldest backup"), (too_new, "newer than the newest archived WAL")):
        result = lab.pgbackup("recover", "--to", target, "--yes", check=False)
        assert result.returncode == 3, result.stdout + result.stderr
        assert why in result.stderr, result.stderr
        assert "the repository (repo1) holds" in result.stderr, result.stderr
        assert "Patroni stopped" not in result.stdout
    # Nothing touched: Patroni runs everywhere, the same leader and timeline, no recovery recorded.
    after = lab.wait_healthy(timeout=10)
    assert [(m["Member"], m["Role"], m["TL"]) for m in after] == [(m["Member"], m["Role"], m["TL"]) for m in before]
    for node in lab.nodes:
        assert lab.ssh(node, "systemctl is-active patroni").stdout.strip() == "active"
    no_recovery_state(lab)


def test_recover_to_latest_after_the_leaders_data_directory_is_destroyed(lab: Lab) -> None:
    leader, replicas = lab.leader(), lab.replicas()
    lab.sql(leader, "DROP TABLE IF EXISTS lost_leader")
    lab.sql(leader, "CREATE TABLE lost_leader (n int)")
    lab.sql(leader, "INSERT INTO lost_leader SELECT generate_series(1, 5000)")
    lab.wait_archived(lab.switch_wal(leader))
    # The loss: the cluster is down (replicas first, so nothing fails over) and the leader's data is gone.
    for node in [*replicas, leader]:
        lab.ssh(node, "systemctl stop patroni")
    lab.ssh(leader, f"rm -rf {PG_DATA}")
    refused = lab.pgbackup("recover", "--to", "latest", "--yes", check=False)
    assert refused.returncode == 3, refused.stderr
    assert "give --leader NODE" in refused.stderr, refused.stderr
    # Issue 20.1, for real: postgres (who owns pgData's parent) puts a link to a root-owned directory where
    # pgData was. The restore step refuses it before restoring anything (root once gave the link's target to
    # postgres); the recovery, run again once the link is gone, carries on from that step.
    sentinel = "/var/lib/pgbackup-adversary-sentinel"
    lab.ssh(leader, f"rm -rf {sentinel} && install -d -o root -g root -m 0755 {sentinel}")
    lab.ssh(leader, f"runuser -u postgres -- ln -s {sentinel} {PG_DATA}")
    before = {node: lab.ssh(node, "stat -c '%U:%G %a' /etc").stdout for node in lab.nodes}
    attacked = lab.pgbackup("recover", "--to", "latest", "--leader", leader, "--yes", check=False, timeout=900)
    assert attacked.returncode != 0, attacked.stdout
    assert f"{PG_DATA} is a symbolic link, not a directory: refused" in attacked.stderr, attacked.stderr
    assert lab.ssh(leader, f"stat -c '%U:%G %a' {sentinel}").stdout.strip() == "root:root 755"
    lab.ssh(leader, f"runuser -u postgres -- rm {PG_DATA} && rmdir {sentinel}")
    started = time.monotonic()
    done = lab.pgbackup("recover", "--to", "latest", "--leader", leader, "--yes")
    print(f"\nrecover --to latest: {time.monotonic() - started:.1f} s\n{done.stdout[-600:]}")
    assert "carrying on with the recovery" in done.stdout
    lab.wait_healthy()
    assert lab.leader() == leader
    assert rows_in_every_node(lab, "lost_leader") == dict.fromkeys(lab.nodes, "5000")
    # pgData on every node (created by postgres on the leader, rebuilt after the move aside on the replicas)
    # and what was moved aside are postgres's; /etc is as it was.
    for node in lab.nodes:
        assert lab.ssh(node, f"stat -c '%U:%G %a %F' {PG_DATA}").stdout.strip() == "postgres:postgres 700 directory"
        assert lab.ssh(node, "stat -c '%U:%G %a' /etc").stdout == before[node]
    for node in replicas:
        assert lab.ssh(node, f"stat -c '%U:%G' {PG_DATA}.before-pitr-*").stdout.strip() == "postgres:postgres"
    lab.pgbackup("recover", "--cleanup", "--yes-delete-old-data")
    no_recovery_state(lab)


def rows_by_batch(lab: Lab, table: str) -> dict[str, tuple[str, ...]]:
    query = f"SELECT batch || '=' || count(*) FROM {table} GROUP BY batch"  # noqa: S608 -- fixed name
    return {node: tuple(sorted(lab.sql(node, query).split())) for node in lab.nodes}


def test_recover_on_a_bad_day_interrupted_at_every_boundary_aborted_in_steps_3_and_6_and_finished(lab: Lab) -> None:
    """Issue 22 in three recoveries to one target. Refused first: a target PostgreSQL does not read and one after
    the archive's end (exit 3, Patroni untouched). A: Ctrl-C at the boundaries after steps 1 and 2 (each run
    again carries on), then 1.5 s into the restores (the leader's and the replicas', their units stopped,
    nothing left running); `--abort` there gives a running cluster on the old data (a replica's leads, its
    data moved back, the restored leader rebuilt). B, from that leader: Ctrl-C 1.5 s into the restores, after
    steps 3, 4 and 5, 0.5 s into the wait for the replicas to catch up; `--abort` there (the restored leader
    leads, the replicas follow it) stops Patroni everywhere, moves the replicas' data back and lets it lead.
    C: Ctrl-C 0.5 s into the catch-up, after step 6, 1 s into the backup; run again, it finishes: the rows of the
    target on every node, every member streaming. Each interruption is the next run's starting point."""
    before = lab.wait_healthy()
    leader = lab.leader()
    target = lab.rows_around_a_target(leader, "bad_day_pitr")
    after_the_archive = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S+00")
    for bad, why in (("2026-W47-5T14:15:00+00:00", "PostgreSQL does not read it as a time"),
                     (after_the_archive, "newer than the newest archived WAL: the reachable range is")):
        refused = lab.pgbackup("recover", "--to", bad, "--yes", check=False)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert why in refused.stderr, refused.stderr
    after = lab.wait_healthy(timeout=10)
    assert [(m["Member"], m["Role"], m["TL"]) for m in after] == [(m["Member"], m["Role"], m["TL"]) for m in before]
    for node in lab.nodes:
        assert lab.ssh(node, "systemctl is-active patroni").stdout.strip() == "active", node
        assert lab.ssh(node, f"test -e {STATE}", check=False).returncode != 0, node
    old_rows = dict.fromkeys(lab.nodes, ("after=50", "before=100"))
    started = time.monotonic()

    def interrupted(at: str, delay: float = 0.0) -> str:
        """A run interrupted (SIGINT, the operator's Ctrl-C) `delay` s after a line starting with `at`."""
        process = subprocess.Popen(lab.pgbackup_argv("recover", "--to", target, "--yes"), cwd=str(ROOT),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if line.startswith(at):
                time.sleep(delay)
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=600)
        text = "".join(seen) + out + err
        assert process.returncode == 130, text
        print(f"  {time.monotonic() - started:6.1f} s: Ctrl-C {delay} s after {at!r}")
        return text

    def aborted_to_old_data(recovering: str, timeline: int) -> str:
        """`--abort` after the restore began: exit 0, a running cluster on the old data (another leader, a
        timeline after `timeline`, the one before the recovery, every member streaming from it), no recovery
        recorded, nothing left aside, nothing running."""
        result = lab.pgbackup("recover", "--abort", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{recovering}'s {PG_DATA} was overwritten by the restore" in result.stdout, result.stdout
        members = lab.wait_healthy(timeout=60)
        new = lab.leader()
        assert new != recovering
        assert f"the cluster runs on {new}'s old data" in result.stdout, result.stdout
        assert int(members[0]["TL"]) > timeline, members
        assert lab.streaming_replicas(new) == set(lab.nodes) - {new}
        assert rows_by_batch(lab, "bad_day_pitr") == old_rows
        no_recovery_state(lab)
        for node in lab.nodes:
            assert lab.ssh(node, "systemctl list-units --no-legend 'pgbackup-recover-*'").stdout.strip() == "", node
        print(f"  {time.monotonic() - started:6.1f} s: aborted, {new} leads on the old data")
        return new

    # A
    timeline = int(before[0]["TL"])
    interrupted("[1/7] done")
    second = interrupted("[2/7] done")
    assert "carrying on with the recovery" in second, second
    assert "[1/7] stop Patroni on the replicas, then on the leader: done before" in second, second
    third = interrupted("[3/7] restore the leader", 1.5)
    for node in lab.nodes:  # the leader's restore and each replica's
        assert f"stopped pgbackup-recover-restore.service on {node}" in third, third
    assert lab.ssh(leader, "systemctl is-active pgbackup-recover-restore.service", check=False).stdout.strip() != (
        "active")
    assert lab.ssh(leader, f"runuser -u postgres -- env --chdir=/ {PG_BIN}/pg_ctl -D {PG_DATA} status", check=False
                   ).returncode != 0, "the restore's server still runs after Ctrl-C"
    leader = aborted_to_old_data(leader, timeline)
    timeline = int(lab.members()[0]["TL"])
    # B
    interrupted("[3/7] restore the leader", 1.5)
    fourth = interrupted("[3/7] done")
    assert "[3/7] restore the leader, replay, promote it by hand, stop it; the replicas as standbys at once ..." in (
        fourth), fourth  # run again
    interrupted("[4/7] done")
    interrupted("[5/7] done")
    interrupted("[6/7] wait for every member streaming", 0.5)
    leader = aborted_to_old_data(leader, timeline)
    timeline = int(lab.members()[0]["TL"])
    # C
    interrupted("[6/7] wait for every member streaming", 0.5)
    interrupted("[6/7] done")
    backup = interrupted("[7/7] a full backup", 1.0)
    assert f"stopped pgbackup-recover-backup.service on {leader}" in backup, backup
    done = lab.pgbackup("recover", "--to", target, "--yes")
    assert "[6/7] wait for every member streaming on the new timeline; pgbackrest check: done before" in (
        done.stdout), done.stdout
    print(f"\nrecover interrupted 10 times, aborted twice, finished: {time.monotonic() - started:.1f} s")
    members = lab.wait_healthy()
    assert lab.leader() == leader
    assert len({m["TL"] for m in members}) == 1
    assert lab.streaming_replicas(leader) == set(lab.nodes) - {leader}
    assert rows_by_batch(lab, "bad_day_pitr") == dict.fromkeys(lab.nodes, ("before=100",))
    lab.pgbackup("recover", "--cleanup", "--yes-delete-old-data")
    no_recovery_state(lab)
