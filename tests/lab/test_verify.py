"""End to end: the scheduled verification (pgbackup-verify.service) on the real cluster, on a healthy
repository and on one damaged as a failing disk or an attacker would: 16 bytes flipped in the newest full
backup, one WAL segment deleted from the middle of the archive. The alert rules are run by promtool on the
metrics file the node wrote. Every test puts back what it damaged and leaves the repository verified ok.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from components.report import repo_of
from lab.control import LAB_DIR, STANZA, Lab
from pgbackup_testkit import promql

pytestmark = pytest.mark.lab

UNIT = "pgbackup-verify.service"
STATE = "/var/lib/pgbackrest/pgbackup-verify.json"
METRICS = "/var/lib/prometheus/node-exporter/pgbackup-verify.prom"
BUCKET, REPO1 = "pgbackup-lab", "lab"  # Pulumi.lab.yaml: repo1 at /lab, repo2 at /lab/monthly


def s3(lab: Lab) -> Any:
    return boto3.client("s3", endpoint_url=lab.env["LAB_S3_ENDPOINT"], verify=lab.env["LAB_CA_FILE"],
                        region_name="us-east-1", aws_access_key_id="labadmin", aws_secret_access_key="x")


def keys_under(lab: Lab, prefix: str) -> dict[str, int]:
    client = s3(lab)
    return {o["Key"]: o["Size"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])}


@contextmanager
def damaged(lab: Lab, key: str, flip: bool) -> Iterator[None]:
    """The object `key` with 16 bytes flipped in its middle (flip) or deleted; put back as it was afterwards."""
    client = s3(lab)
    original = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    if flip:
        middle = len(original) // 2
        client.put_object(Bucket=BUCKET, Key=key, Body=original[:middle] + bytes(b ^ 0xFF for b in original[
            middle:middle + 16]) + original[middle + 16:])
    else:
        client.delete_object(Bucket=BUCKET, Key=key)
    try:
        yield
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=original)


def run_verification(lab: Lab, node: str) -> tuple[str, dict[str, Any], str, float]:
    """Starts the service as the timer would: its result, the state file, the metrics file, and seconds."""
    started = time.monotonic()
    lab.ssh(node, f"systemctl start {UNIT}", check=False)
    seconds = time.monotonic() - started
    result = lab.ssh(node, f"systemctl show -p Result --value {UNIT}").stdout.strip()
    state = json.loads(lab.ssh(node, f"cat {STATE}").stdout)
    return result, state, lab.ssh(node, f"cat {METRICS}").stdout, seconds


def alerts_on(lab: Lab, metrics: str, node: str, tmp_path: Path, expected: list[dict[str, Any]],
              alertname: str = "PgBackupVerifyFoundErrors") -> None:
    """promtool runs the stack's alert rules on `metrics` (a node's .prom file, as Prometheus would scrape it
    for 30 minutes with instance=node) and expects `alertname` to fire as `expected` says."""
    (tmp_path / "rules.yml").write_text(lab.first_apply["outputs"]["alertRules"])
    series = []
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series.append({"series": name.replace("}", f',instance="{node}"}}'), "values": f"{value}x30"})
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [
                 {"eval_time": "10m", "alertname": alertname, "exp_alerts": expected}]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(["promtool", "test", "rules", "tests.yml"], capture_output=True, text=True, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def verify_alert(repo: str, kind: str, count: int) -> dict[str, Any]:
    return {"exp_labels": {"severity": "critical", "stanza": STANZA, "repo": repo, "kind": kind},
            "exp_annotations": {"summary": f"The last verification of repo{repo} of stanza {STANZA} found {count} "
                                           f"{kind} error(s): a restore may fail"}}


def assert_healthy(lab: Lab, leader: str, tmp_path: Path) -> float:
    result, state, metrics, seconds = run_verification(lab, leader)
    assert result == "success", state
    assert state["ok"] is True, state
    assert state["errors"] == {"checksum": 0, "missing_wal": 0, "other": 0}
    assert sorted(state["repos"]) == ["1", "2"]
    for repo in ("1", "2"):
        assert f'pgbackup_verify_errors{{stanza="{STANZA}",repo="{repo}",kind="checksum"}} 0' in metrics
        assert state["repos"][repo]["continuity"]["missing"] == 0
        assert state["repos"][repo]["checked"]["wal"] > 0
    alerts_on(lab, metrics, leader, tmp_path, [])
    for repo in ("1", "2"):  # the recoverable window: one piece, all that retention keeps, nothing damaged
        window = state["repos"][repo]["window"]
        assert window["missingSeconds"] == 0, (repo, window)
        assert window["damaged"] == [], (repo, window)
        assert window["pieces"][-1]["to"] >= window["pieces"][0]["from"], window
    assert state["repos"]["1"]["window"]["pieceCount"] == 1, state["repos"]["1"]["window"]
    for name in ("PgBackupRecoveryWindowShort", "PgBackupBackupSetDamaged", "PgBackupRecoveryWindowEndLags"):
        alerts_on(lab, metrics, leader, tmp_path, [], name)
    return seconds


def window_alert(name: str, summary: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": {"severity": "critical", "stanza": STANZA, "repo": "1", **labels},
            "exp_annotations": {"summary": summary}}


def output_after_the_next_apply(lab: Lab) -> dict[str, Any]:
    """The stack output recoveryWindow after an apply that runs the verify steps again (only them: the
    driver forgets their inputs, as test_apply_again_changes_nothing does for every step)."""
    state = lab.driver_state()
    for name in [n for n in state if n.startswith("cluster-") and n.endswith("-verify")]:
        state[name]["inputs"] = "forget"
    (LAB_DIR / "driver-state.json").write_text(json.dumps(state))
    window: dict[str, Any] = lab.apply()["outputs"]["recoveryWindow"]
    return window


def test_verification_of_a_healthy_cluster_reports_ok(lab: Lab, tmp_path: Path) -> None:
    leader = lab.leader()
    for replica in lab.replicas():
        lab.ssh(replica, f"systemctl start {UNIT}")
        assert lab.ssh(replica, f"systemctl show -p Result --value {UNIT}").stdout.strip() == "exec-condition"
        assert lab.ssh(replica, f"test -e {STATE}", check=False).returncode == 1
    seconds = assert_healthy(lab, leader, tmp_path)
    # Written by postgres, never root; published by root for node_exporter.
    assert lab.ssh(leader, f"stat -c %U:%a {STATE}").stdout.strip() == "postgres:640"
    assert lab.ssh(leader, f"stat -c %U:%a {METRICS}").stdout.strip() == "root:644"
    for node in lab.nodes:
        assert "pgbackup-verify.timer" in lab.ssh(node, "systemctl list-timers --all --no-pager --no-legend").stdout
    # RPO without false alarms: on an idle cluster no WAL waits (or only for moments).
    lab.ssh(leader, "systemctl start pgbackup-metrics.service")
    text = lab.ssh(leader, "cat /var/lib/prometheus/node-exporter/pgbackrest.prom").stdout
    values = dict(re.findall(rf'^(pgbackrest_wal_ready_\w+){{stanza="{STANZA}"}} (\d+)$', text, re.M))
    assert int(values["pgbackrest_wal_ready_count"]) <= 1, text
    assert int(values["pgbackrest_wal_ready_oldest_age_seconds"]) < 60, text
    print(f"\nverification of both repositories on a healthy cluster: {seconds:.1f} s")


def test_the_dashboards_verification_series_exist_on_the_nodes(lab: Lab) -> None:
    """The stack output grafanaDashboard's verification panels against the nodes' real metrics files after the
    healthy verification (the rest of its series: tests/lab/test_drill.py)."""
    board = json.loads(lab.first_apply["outputs"]["grafanaDashboard"])
    files = {node: lab.ssh(node, "cat /var/lib/prometheus/node-exporter/*.prom").stdout for node in lab.nodes}
    assert promql.unmet_in_files(board, STANZA, files, prefix="pgbackup_verify_") == {}


def test_verification_flags_bytes_flipped_in_the_newest_full_backup(lab: Lab, tmp_path: Path) -> None:
    leader = lab.leader()
    full = [b for b in lab.info()["backup"] if repo_of(b) == 1 and b["type"] == "full"][-1]["label"]
    objects = {k: size for k, size in keys_under(lab, f"{REPO1}/backup/{STANZA}/{full}/").items()
               if "backup.manifest" not in k}
    target = max(objects, key=lambda k: objects[k])  # the largest: a bundle (2.55) or a relation file (2.45)
    with damaged(lab, target, flip=True):
        result, state, metrics, seconds = run_verification(lab, leader)
        # The restore drill of that backup fails too (`pgbackup drill`: the drill service on the node it picks).
        drill = lab.pgbackup("drill", check=False, timeout=1800)
    assert drill.returncode == 1, drill.stdout + drill.stderr
    line = next(x for x in drill.stdout.splitlines() if x.startswith("drill on "))
    assert "from repo1: FAILED" in line, line
    drilled = line.removeprefix("drill on ").split(" ", 1)[0]
    assert json.loads(lab.ssh(drilled, "cat /var/lib/pgbackrest/pgbackup-drill.json").stdout)["ok"] is False
    assert result == "exit-code", state  # the service fails: `systemctl --failed` shows it
    assert state["ok"] is False
    repo1 = state["repos"]["1"]
    assert repo1["errors"]["checksum"] >= 1, repo1
    assert state["repos"]["2"]["errors"] == {"checksum": 0, "missing_wal": 0, "other": 0}
    checksum = repo1["errors"]["checksum"]
    assert f'pgbackup_verify_errors{{stanza="{STANZA}",repo="1",kind="checksum"}} {checksum}' in metrics
    alerts_on(lab, metrics, leader, tmp_path, [verify_alert("1", "checksum", checksum)])
    print(f"\nflipped 16 bytes of {target} ({objects[target]} bytes): {repo1['errors']}, {seconds:.1f} s")
    # The damaged set leaves the recoverable window (with every backup that depends on it), and the alert, the
    # metric and `pgbackup status` name it with its remedy; it stays so until the set is expired.
    started = time.monotonic()
    window = repo1["window"]
    assert window["damaged"][0] == {"label": full, "reason": "the verification found it damaged"}, window
    stop = next(b for b in lab.info()["backup"] if b["label"] == full)["timestamp"]["stop"]
    assert all(p["from"] != stop for p in window["pieces"]), window  # it starts no piece
    assert f'pgbackup_recovery_window_damaged_set{{stanza="{STANZA}",repo="1",set="{full}"}} 1' in metrics
    alerts_on(lab, metrics, leader, tmp_path, [window_alert(
        "PgBackupBackupSetDamaged", f"Backup set {full} in repo1 of stanza {STANZA} is damaged and cannot start a "
        f"recovery: after a new full backup (`pgbackup backup --type full`), remove it with `pgbackrest "
        f"--stanza={STANZA} --repo=1 expire --set={full}` as postgres", set=full)], "PgBackupBackupSetDamaged")
    shown = lab.pgbackup("status", check=False, timeout=300)
    assert shown.returncode == 1, shown.stdout
    assert f"backup set {full} in repo1 is damaged" in shown.stdout, shown.stdout
    assert f"expire --set={full}`" in shown.stdout, shown.stdout
    # A recovery that would start from it (or from a set depending on it) is refused before anything stops.
    refused = lab.pgbackup("recover", "--to", "latest", "--yes", check=False)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "cannot start a recovery" in refused.stderr, refused.stderr
    assert full in refused.stderr, refused.stderr
    assert {lab.ssh(node, "systemctl is-active patroni").stdout.strip() for node in lab.nodes} == {"active"}
    # The remedy, as the status says: a new full backup, then the damaged set expired; the next verification
    # finds the window whole. (The flipped object is put back afterwards into the expired set's directory:
    # a leftover backup.info does not list, which the verification notes and does not count.)
    lab.pgbackup("backup", "--type", "full", timeout=900)
    lab.pgbackrest(leader, f"--repo=1 expire --set={full}")
    result, state, metrics, _ = run_verification(lab, leader)
    assert state["repos"]["1"]["window"]["damaged"] == [], state["repos"]["1"]
    assert [line for line in metrics.splitlines() if line.startswith("pgbackup_recovery_window_damaged_set")] == []
    print(f"damaged set out of the window, then expired: {time.monotonic() - started:.1f} s")
    assert_healthy(lab, leader, tmp_path)


def test_verification_flags_a_wal_segment_deleted_from_the_middle_of_the_archive(lab: Lab, tmp_path: Path) -> None:
    leader = lab.leader()
    lab.sql(leader, "CREATE TABLE IF NOT EXISTS verify_gap (n int)")
    for n in range(4):
        lab.sql(leader, f"INSERT INTO verify_gap VALUES ({n})")  # noqa: S608 -- a number
        last = lab.switch_wal(leader)
    lab.wait_archived(last)
    archived = sorted(k for k in keys_under(lab, f"{REPO1}/archive/{STANZA}/")
                      if re.search(r"/[0-9A-F]{24}-[0-9a-f]{40}(\.\w+)?$", k))
    target = archived[-3]  # neither the newest segment nor one the newest backup needs to be consistent
    segment = target.rsplit("/", 1)[1][:24]
    with damaged(lab, target, flip=False):
        # A backup after the gap starts a recovery again: the window is split in two pieces around the gap.
        started = time.monotonic()
        lab.pgbackup("backup", "--type", "incr", timeout=600)
        result, state, metrics, _ = run_verification(lab, leader)
    # The state file keeps what the verification found until its next run.
    shown = lab.pgbackup("status", check=False, timeout=300)
    output = output_after_the_next_apply(lab)
    repo1 = state["repos"]["1"]
    window = repo1["window"]
    assert window["pieceCount"] >= 2, window
    assert window["missingSeconds"] > 0, window
    before, after = window["pieces"][-2:]
    assert before["to"] < after["from"], window
    assert f'pgbackup_recovery_window_pieces{{stanza="{STANZA}",repo="1"}} {window["pieceCount"]}' in metrics
    assert f'pgbackup_recovery_window_missing_seconds{{stanza="{STANZA}",repo="1"}} {window["missingSeconds"]}' in \
        metrics
    alerts_on(lab, metrics, leader, tmp_path, [window_alert(
        "PgBackupRecoveryWindowShort", f"repo1 of stanza {STANZA} cannot recover to {window['missingSeconds']} s of "
        "the time its retention keeps (a WAL gap, a damaged backup set or an expired chain): `pgbackup status` "
        "lists the window's pieces")], "PgBackupRecoveryWindowShort")
    assert shown.returncode == 1, shown.stdout
    assert f"piece {before['fromTime']} to {before['toTime']}" in shown.stdout, shown.stdout
    assert f"piece {after['fromTime']} to {after['toTime']}" in shown.stdout, shown.stdout
    assert output["ok"] is False, output
    assert output["repos"]["1"]["pieces"][-2:] == [before, after], output
    assert output["repos"]["2"]["pieceCount"] >= 1  # repo2 has the segment: its window is not split by it
    print(f"\nwindow split by the gap (incr backup, verification, status, apply): {time.monotonic() - started:.1f} s")
    assert result == "exit-code", state
    assert repo1["errors"]["missing_wal"] >= 1, repo1
    assert segment in repo1["continuity"]["firstMissing"], repo1
    assert state["repos"]["2"]["errors"]["missing_wal"] == 0  # archive-push wrote the segment to repo2 as well
    alerts_on(lab, metrics, leader, tmp_path, [verify_alert("1", "missing_wal", repo1["errors"]["missing_wal"])])
    # What pgBackRest's verify said by itself (the continuity check is what counts the gap).
    print(f"\ndeleted {segment}: verify {repo1['status']} {repo1['notes']}, continuity {repo1['continuity']}")
    assert_healthy(lab, leader, tmp_path)
