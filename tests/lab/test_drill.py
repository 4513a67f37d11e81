"""The restore drill against the real cluster: a healthy drill (the canary rows of before and after the backup
in the copy, the cluster unaware), the monthly drill from repo2, a drill refused for lack of space, a drill
while a backup runs, and a drill over an archive with a segment missing.

The tests run in file order and share one lab; each leaves the cluster healthy for the next.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from components.report import repo_of
from lab.control import STANZA, Lab
from pgbackup_testkit import promql

pytestmark = pytest.mark.lab

SCRATCH = "/var/lib/postgresql/pgbackup-drill"
STATE = "/var/lib/pgbackrest/pgbackup-drill.json"
METRICS = "/var/lib/prometheus/node-exporter/pgbackup-drill.prom"
DRILL = "pgbackup-drill.service"
HOLD = "/var/tmp/pgbackup-drill-hold"
DROP_IN = "/run/systemd/system/pgbackup-drill.service.d/hold.conf"


def drill_node(lab: Lab) -> str:
    """The node the drill should choose: the first running replica by name."""
    return sorted(str(m["Member"]) for m in lab.members()
                  if m.get("Role") != "Leader" and m.get("State") in ("running", "streaming"))[0]


def state(lab: Lab, node: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(lab.ssh(node, f"cat {STATE}").stdout)
    return result


def samples(lab: Lab, node: str) -> dict[str, float]:
    text = lab.ssh(node, f"cat {METRICS}").stdout
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))}


def metric(name: str, repo: int = 1, **labels: str) -> str:
    extra = "".join(f',{key}="{value}"' for key, value in labels.items())
    return f'{name}{{stanza="{STANZA}",repo="{repo}"{extra}}}'


def start(lab: Lab, node: str, unit: str = DRILL) -> str:
    """Starts the unit without waiting; returns its (new) invocation id."""
    before = lab.ssh(node, f"systemctl show -p InvocationID --value {unit}").stdout.strip()
    lab.ssh(node, f"systemctl start --no-block {unit}")
    deadline = time.monotonic() + 30
    while True:
        invocation = lab.ssh(node, f"systemctl show -p InvocationID --value {unit}").stdout.strip()
        if invocation and invocation != before:
            return invocation
        assert time.monotonic() < deadline, f"{unit} did not start on {node}"
        time.sleep(0.5)


def wait_done(lab: Lab, node: str, unit: str = DRILL, timeout: float = 900) -> str:
    """Until the unit is no longer active; its Result (success, exit-code, ...)."""
    deadline = time.monotonic() + timeout
    while lab.ssh(node, f"systemctl is-active {unit}", check=False).stdout.strip() in ("active", "activating"):
        assert time.monotonic() < deadline, f"{unit} still running on {node} after {timeout} s"
        time.sleep(1)
    return lab.ssh(node, f"systemctl show -p Result --value {unit}").stdout.strip()


def run_drill(lab: Lab, node: str, unit: str = DRILL) -> str:
    start(lab, node, unit)
    return wait_done(lab, node, unit)


def journal(lab: Lab, node: str, invocation: str) -> str:
    return lab.ssh(node, f"journalctl -o cat _SYSTEMD_INVOCATION_ID={invocation}").stdout


def s3(lab: Lab) -> Any:
    return boto3.client("s3", endpoint_url=lab.env["LAB_S3_ENDPOINT"], verify=lab.env["LAB_CA_FILE"],
                        region_name="us-east-1", aws_access_key_id="labadmin", aws_secret_access_key="x")


def archive_keys(lab: Lab) -> set[str]:
    """Every WAL and history file in both repositories' archives."""
    return {o["Key"] for prefix in (f"lab/archive/{STANZA}/", f"lab/monthly/archive/{STANZA}/")
            for page in s3(lab).get_paginator("list_objects_v2").paginate(Bucket="pgbackup-lab", Prefix=prefix)
            for o in page.get("Contents", [])}


def patroni_history(lab: Lab, node: str) -> str:
    return lab.ssh(node, "patronictl -c /etc/patroni/patroni.yml history -f json").stdout


@contextlib.contextmanager
def holding(lab: Lab, node: str) -> Iterator[str]:
    """The drill started on `node` with --hold: yields its invocation id once the checked copy waits on its
    socket; the hold ends (and the drill finishes) after the block."""
    lab.ssh(node, f"mkdir -p {DROP_IN.rsplit('/', 1)[0]} && printf '%s\\n' '[Service]' 'ExecStart=' "
                  f"'ExecStart=/usr/local/lib/pgbackup/pgbackup-drill --repo=1 --hold={HOLD}' > {DROP_IN} && "
                  f"touch {HOLD} && systemctl daemon-reload")
    try:
        invocation = start(lab, node)
        deadline = time.monotonic() + 600
        while "holding the copy" not in journal(lab, node, invocation):
            assert lab.ssh(node, f"systemctl is-active {DRILL}", check=False).stdout.strip() == "activating", \
                journal(lab, node, invocation)
            assert time.monotonic() < deadline, "the drill never held its copy"
            time.sleep(1)
        yield invocation
    finally:
        lab.ssh(node, f"rm -f {HOLD}")
        wait_done(lab, node)
        lab.ssh(node, f"rm -f {DROP_IN} && systemctl daemon-reload")


def test_a_healthy_drill_restores_every_row_and_the_cluster_sees_nothing(lab: Lab) -> None:
    leader, chosen = lab.leader(), drill_node(lab)
    lab.sql(leader, "DROP TABLE IF EXISTS drill_canary")
    lab.sql(leader, "CREATE TABLE drill_canary (batch text)")
    lab.sql(leader, "INSERT INTO drill_canary SELECT 'before' FROM generate_series(1, 100)")
    lab.ssh(leader, "systemctl start pgbackup-backup-full.service")
    lab.sql(leader, "INSERT INTO drill_canary SELECT 'after' FROM generate_series(1, 50)")
    lab.wait_archived(lab.switch_wal(leader))
    archive, history, timelines = archive_keys(lab), patroni_history(lab, leader), {m["TL"] for m in lab.members()}

    # Every node's service runs; all but one say why they do not drill, and exit 0.
    for node in (n for n in lab.nodes if n != chosen):
        invocation = start(lab, node)
        assert wait_done(lab, node) == "success"
        assert f"not this node ({node})" in journal(lab, node, invocation)
        assert lab.ssh(node, f"test -e {STATE}", check=False).returncode != 0, f"{node} wrote a drill state"

    with holding(lab, chosen):
        def copy(query: str) -> str:
            return lab.sql(chosen, query, port=5432, socket=f"{SCRATCH}/socket")

        counts = copy("SELECT string_agg(batch || '=' || n, ',' ORDER BY batch) FROM "
                      "(SELECT batch, count(*) n FROM public.drill_canary GROUP BY batch) c")  # search_path is pg_catalog
        assert counts == "after=50,before=100"
        # Promoted onto a timeline of its own, with archiving off, no slots, no upstream.
        assert copy("SELECT pg_is_in_recovery()") == "f"
        copy_timeline = int(copy("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16)
        assert copy_timeline > max(timelines)
        assert copy("SELECT current_setting('archive_mode') || ',' || current_setting('listen_addresses') || ',' || "
                    "(SELECT count(*) FROM pg_replication_slots)") == "off,,0"
        # Cut off (CUT_OFF in the drill): no library, no logical replication, no autovacuum, no hook command.
        assert copy("SELECT string_agg(current_setting(n), '|' ORDER BY n) FROM unnest(ARRAY["
                    "'archive_cleanup_command', 'autovacuum', 'max_logical_replication_workers', "
                    "'recovery_end_command', 'shared_preload_libraries']) n") == "|off|0||"
        assert copy("SELECT count(*) FROM pg_stat_activity WHERE backend_type IN "
                    "('logical replication launcher', 'autovacuum launcher')") == "0"
        # No TCP socket for the copy's postmaster.
        pid = lab.ssh(chosen, f"head -1 {SCRATCH}/data/postmaster.pid").stdout.strip()
        assert f"pid={pid}," not in lab.ssh(chosen, "ss -ltnpH").stdout
        assert lab.ssh(chosen, f"stat -c %U /proc/{pid}").stdout.strip() == "postgres"

    result = state(lab, chosen)
    assert (result["ok"], result["node"], result["repo"], result["reason"]) == (True, chosen, 1, ""), result
    assert result["replayedToArchiveEnd"] is True
    assert result["restoredBytes"] > 10 * 1024 * 1024
    assert result["rtoSeconds"] == pytest.approx(result["phases"]["restore"] + result["phases"]["replay"], abs=0.01)
    assert set(result["phases"]) >= {"restore", "replay", "checks", "cleanup"}
    assert {"postgres", "template1"} <= set(result["databases"])
    found = samples(lab, chosen)
    assert found[metric("pgbackup_drill_success")] == 1
    assert found[metric("pgbackup_drill_duration_seconds")] == pytest.approx(result["rtoSeconds"])
    assert found[metric("pgbackup_drill_replay_shortfall_bytes")] == 0
    assert found[metric("pgbackup_drill_refused", reason="no_space")] == 0
    assert found[metric("pgbackup_drill_last_success_timestamp_seconds")] == \
        found[metric("pgbackup_drill_last_run_timestamp_seconds")] >= time.time() - 600
    # The copy is gone; the state file is postgres's.
    assert lab.ssh(chosen, f"ls -A {SCRATCH}").stdout.strip() == ""
    assert lab.ssh(chosen, f"stat -c %U {STATE} {METRICS}").stdout.split() == ["postgres", "postgres"]

    # The cluster saw nothing: no history file (the copy's timeline) and no WAL of another timeline in the
    # repository, the same timeline and Patroni history, every member healthy.
    new = archive_keys(lab) - archive
    assert not [k for k in new if k.endswith(".history")], new
    assert all(k.rsplit("/", 1)[1][:8] == f"{max(timelines):08X}" for k in new), new
    assert patroni_history(lab, leader) == history
    assert {m["TL"] for m in lab.wait_healthy()} == timelines
    print(f"\ndrill RTO {result['rtoSeconds']} s for {result['restoredBytes']} bytes, phases {result['phases']}")


def test_the_monthly_drill_restores_repo2s_newest_archive(lab: Lab) -> None:
    chosen = drill_node(lab)
    assert run_drill(lab, chosen, "pgbackup-drill-monthly.service") == "success"
    result = state(lab, chosen)
    assert (result["ok"], result["repo"]) == (True, 2), result
    found = samples(lab, chosen)
    # Both repositories' last results, each under its own label.
    assert found[metric("pgbackup_drill_success", repo=2)] == 1
    assert found[metric("pgbackup_drill_success", repo=1)] == 1


def test_every_series_the_dashboard_queries_exists_on_the_nodes(lab: Lab) -> None:
    """The stack output grafanaDashboard against the nodes' real metrics files, as Prometheus would scrape them
    (instance = the node): after both drills and a collector run on every node, each of its queries finds its
    series. The verification's panels: tests/lab/test_verify.py (no verification runs in this module)."""
    board = json.loads(lab.first_apply["outputs"]["grafanaDashboard"])
    for node in lab.nodes:
        lab.ssh(node, "systemctl start pgbackup-metrics.service")
    files = {node: lab.ssh(node, "cat /var/lib/prometheus/node-exporter/*.prom").stdout for node in lab.nodes}
    assert promql.unmet_in_files(board, STANZA, files, without="pgbackup_verify_") == {}


def test_not_enough_space_in_the_scratch_directory_refuses_and_says_why(lab: Lab) -> None:
    chosen = drill_node(lab)
    lab.ssh(chosen, f"mount -t tmpfs -o size=4m,mode=0700,uid=postgres,gid=postgres pgbackup-drill-test {SCRATCH}")
    try:
        assert run_drill(lab, chosen) == "exit-code"
    finally:
        lab.ssh(chosen, f"umount {SCRATCH}")
    result = state(lab, chosen)
    assert (result["ok"], result["refused"]) == (False, "no_space"), result
    assert "bytes free, short of the" in result["reason"]
    assert "restore" not in result["phases"]
    found = samples(lab, chosen)
    assert found[metric("pgbackup_drill_refused", reason="no_space")] == 1
    assert found[metric("pgbackup_drill_success")] == 0
    # The last success is still the earlier drill's.
    assert found[metric("pgbackup_drill_last_success_timestamp_seconds")] < \
        found[metric("pgbackup_drill_last_run_timestamp_seconds")]


def window(lab: Lab, node: str, unit: str) -> tuple[int, int]:
    """When the unit's main process started and exited (CLOCK_MONOTONIC, shared by the lab's containers)."""
    out = lab.ssh(node, f"systemctl show -p ExecMainStartTimestampMonotonic -p ExecMainExitTimestampMonotonic {unit}")
    values = dict(line.split("=", 1) for line in out.stdout.split())
    return int(values["ExecMainStartTimestampMonotonic"]), int(values["ExecMainExitTimestampMonotonic"])


def test_a_drill_while_a_backup_runs_neither_breaks_the_other(lab: Lab) -> None:
    leader, chosen = lab.leader(), drill_node(lab)
    # Enough data that both take a while.
    lab.sql(leader, "CREATE TABLE IF NOT EXISTS drill_ballast AS SELECT g, md5(g::text) AS h "
                    "FROM generate_series(1, 1500000) g")
    labels_before = {b["label"] for b in lab.info()["backup"]}
    start(lab, leader, "pgbackup-backup-full.service")
    start(lab, chosen)
    assert wait_done(lab, leader, "pgbackup-backup-full.service") == "success"
    assert wait_done(lab, chosen) == "success"
    backup, drill = window(lab, leader, "pgbackup-backup-full.service"), window(lab, chosen, DRILL)
    assert drill[0] < backup[1], f"no overlap: backup {backup}, drill {drill}"
    assert backup[0] < drill[1], f"no overlap: backup {backup}, drill {drill}"
    assert state(lab, chosen)["ok"] is True
    newest = max((b for b in lab.info()["backup"] if repo_of(b) == 1), key=lambda b: b["timestamp"]["stop"])
    assert (newest["type"], newest["label"] in labels_before) == ("full", False)
    assert lab.info()["status"]["code"] == 0
    lab.sql(leader, "DROP TABLE drill_ballast")


def test_a_segment_missing_from_the_archive_fails_the_drill(lab: Lab) -> None:
    leader, chosen = lab.leader(), drill_node(lab)
    lab.ssh(leader, "systemctl start pgbackup-backup-incr.service")
    for _ in range(3):
        lab.sql(leader, "INSERT INTO drill_canary SELECT 'later' FROM generate_series(1, 10)")
        segment = lab.switch_wal(leader)
    lab.wait_archived(segment)
    # A segment written after the newest backup, with newer ones after it, goes from repo1's archive.
    client = s3(lab)
    newest = next(a["max"] for a in lab.info()["archive"] if repo_of(a) == 1)
    middle = f"{int(newest[16:], 16) - 1:08X}"
    keys = [k for k in archive_keys(lab) if k.startswith(f"lab/archive/{STANZA}/")
            and k.rsplit("/", 1)[1][:24] == newest[:16] + middle]
    assert len(keys) == 1, keys
    body = client.get_object(Bucket="pgbackup-lab", Key=keys[0])["Body"].read()
    client.delete_object(Bucket="pgbackup-lab", Key=keys[0])
    try:
        assert run_drill(lab, chosen) == "exit-code"
    finally:
        client.put_object(Bucket="pgbackup-lab", Key=keys[0], Body=body)
    result = state(lab, chosen)
    assert (result["ok"], result["replayedToArchiveEnd"], result["refused"]) == (False, False, None), result
    assert result["shortfallBytes"] > 0
    assert "replay stopped at" in result["reason"]
    found = samples(lab, chosen)
    assert found[metric("pgbackup_drill_success")] == 0
    assert found[metric("pgbackup_drill_replay_shortfall_bytes")] == result["shortfallBytes"]
    # With the segment back, the drill succeeds again.
    assert run_drill(lab, chosen) == "success"
    assert state(lab, chosen)["replayedToArchiveEnd"] is True
