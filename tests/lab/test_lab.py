"""End to end: the program applied by the lab driver to a real three-node Patroni cluster with S3.

The tests run in file order and share one lab: each leaves the cluster healthy for the next.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import shlex
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from components.cluster import VersionMismatch
from components.report import repo_of
from lab import driver
from lab.control import (
    FACTS,
    LAB_DIR,
    PG_DATA,
    SCOPE,
    STANZA,
    AuthenticatedS3,
    Lab,
    host_pgbackrest_deb,
    sh,
)

pytestmark = pytest.mark.lab


def backups(lab: Lab, repo: int = 1) -> list[dict[str, Any]]:
    """The backups in repo1 (weekly full, incremental), or in repo2 (monthly archives)."""
    return [b for b in lab.info().get("backup", []) if repo_of(b) == repo]


def test_deploy_from_nothing(lab: Lab) -> None:
    outputs = lab.first_apply["outputs"]
    assert outputs["stanzaStatus"] == {"code": 0, "message": "ok"}
    assert outputs["lastBackup"]["type"] == "full"
    # The release's pgBackRest (lab/common.sh), the same on every node.
    # Debian's version: 2.55.1-1 on trixie, 2.45-1 (no patch number) on bookworm.
    assert re.match(rf"{re.escape(FACTS['pgbackrest'])}[.-]", outputs["pgbackrestVersion"]), outputs["pgbackrestVersion"]
    roles = {n["name"]: n["role"] for n in outputs["nodes"]}
    assert sorted(roles.values()) == ["leader", "replica", "replica"]
    assert roles[lab.leader()] == "leader"
    # archive_mode needed a restart of every member: a rolling restart through Patroni, no failover.
    assert {m["TL"] for m in lab.members()} == {1}
    assert all("Pending restart" not in m for m in lab.members())
    assert outputs["walArchive"]["min"] <= outputs["walArchive"]["max"]
    assert outputs["secretAccessKey"] == "[secret]"
    assert outputs["cipherPass"] == "[secret]"
    # The backup is in the lab's S3 under the repo path, and pgBackRest agrees.
    s3 = boto3.client("s3", endpoint_url=lab.env["LAB_S3_ENDPOINT"], verify=lab.env["LAB_CA_FILE"],
                      region_name="us-east-1", aws_access_key_id="labadmin", aws_secret_access_key="x")
    sizes = {o["Key"]: o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="pgbackup-lab",
                                                                                        Prefix="lab/")
             for o in page.get("Contents", [])}
    keys = list(sizes)
    # A first full backup in each repository: repo1, and repo2 for the monthly archives (lab/monthly), so
    # that `pgbackrest info` reports ok rather than a status mixed across repositories.
    repo1, repo2 = backups(lab), backups(lab, repo=2)
    assert [b["type"] for b in repo1] == ["full"]
    assert [b["type"] for b in repo2] == ["full"]
    assert outputs["lastBackup"]["label"] in {repo1[0]["label"], repo2[0]["label"]}
    for prefix in (f"lab/backup/{STANZA}/{repo1[0]['label']}/", f"lab/archive/{STANZA}/",
                   f"lab/monthly/backup/{STANZA}/{repo2[0]['label']}/", f"lab/monthly/archive/{STANZA}/"):
        assert any(k.startswith(prefix) for k in keys), prefix
    # storageCost: what the leader's repo-ls measured per repository, against the bucket as S3 lists it now.
    # The backups are as they were then; WAL archived since can only add to the archive.
    cost = outputs["storageCost"]
    for repo, base in (("1", "lab/"), ("2", "lab/monthly/")):
        backup_bytes = sum(size for key, size in sizes.items() if key.startswith(f"{base}backup/"))
        total_now = backup_bytes + sum(size for key, size in sizes.items() if key.startswith(f"{base}archive/"))
        assert backup_bytes < cost["repositories"][repo]["bytes"] <= total_now, (repo, cost, backup_bytes, total_now)
    assert cost["totalBytes"] == sum(r["bytes"] for r in cost["repositories"].values())
    print(f"\nfirst apply: {lab.first_apply_seconds:.1f} s, {len(lab.first_apply['ran'])} operations")


def unit_result(lab: Lab, node: str, unit: str) -> str:
    return lab.ssh(node, f"systemctl show -p Result --value {unit}").stdout.strip()


def test_backup_services_run_on_the_leader_and_skip_on_replicas(lab: Lab) -> None:
    leader, before, monthly_before = lab.leader(), len(backups(lab)), len(backups(lab, repo=2))
    services = ("pgbackup-backup-full.service", "pgbackup-backup-incr.service", "pgbackup-backup-monthly.service")
    for replica in lab.replicas():
        lab.ssh(replica, f"systemctl start {' '.join(services)}")
        for unit in services:
            assert unit_result(lab, replica, unit) == "exec-condition"
    assert (len(backups(lab)), len(backups(lab, repo=2))) == (before, monthly_before)
    lab.ssh(leader, "systemctl start pgbackup-backup-incr.service")
    assert unit_result(lab, leader, "pgbackup-backup-incr.service") == "success"
    lab.ssh(leader, "systemctl start pgbackup-backup-full.service")
    assert unit_result(lab, leader, "pgbackup-backup-full.service") == "success"
    assert [b["type"] for b in backups(lab)][before:] == ["incr", "full"]
    lab.ssh(leader, "systemctl start pgbackup-backup-monthly.service")
    assert unit_result(lab, leader, "pgbackup-backup-monthly.service") == "success"
    assert [b["type"] for b in backups(lab, repo=2)][monthly_before:] == ["full"]
    assert len(backups(lab)) == before + 2  # the monthly archive went to repo2 only
    for node in lab.nodes:
        timers = lab.ssh(node, "systemctl list-timers --all --no-pager --no-legend").stdout
        for timer in ("pgbackup-backup-full.timer", "pgbackup-backup-incr.timer", "pgbackup-backup-monthly.timer",
                      "pgbackup-metrics.timer"):
            assert timer in timers, f"{timer} on {node}"


def test_metrics_collector_writes_prometheus_text(lab: Lab) -> None:
    leader = lab.leader()
    lab.ssh(leader, "systemctl start pgbackup-metrics.service")
    text = lab.ssh(leader, "cat /var/lib/prometheus/node-exporter/pgbackrest.prom").stdout
    assert f'pgbackrest_stanza_status{{stanza="{STANZA}"}} 0' in text
    assert f'pgbackrest_is_leader{{stanza="{STANZA}"}} 1' in text
    for repo in (1, 2):
        assert re.search(rf'pgbackrest_last_backup_timestamp_seconds{{stanza="{STANZA}",type="full",repo="{repo}"}} '
                         r'\d+', text)
    assert f'pgbackrest_archive_check_failed{{stanza="{STANZA}"}} 0' in text


CHECK = "/usr/local/lib/pgbackup/pgbackup-check"


def run_check(lab: Lab, node: str, command: str, clock_shift: int = 0) -> tuple[int, str]:
    """A check command as a monitor runs it: an unprivileged user (nobody), one line, a Nagios exit code.
    clock_shift: seconds added to the script's clock."""
    code = (f"import runpy, sys, time; real = time.time; time.time = lambda: real() + {clock_shift}; "
            f"sys.argv = [{CHECK!r}, {command!r}]; runpy.run_path({CHECK!r}, run_name='__main__')")
    result = lab.ssh(node, f"cd /tmp && runuser -u nobody -- python3 -c {shlex.quote(code)}", check=False)
    assert result.stderr == "", result.stderr
    assert len(result.stdout.splitlines()) == 1, result.stdout
    return result.returncode, result.stdout.strip()


def collect_metrics(lab: Lab, node: str, clock_shift: int = 0, info_timeout: int = 0) -> None:
    """The collector's run (pgbackup-metrics.service), here with its clock moved on by clock_shift seconds, or
    with its limit on `pgbackrest info` (INFO_TIMEOUT, 120 s) cut to info_timeout: what the limit does is the
    same, the test does not wait out pgBackRest's retries for two minutes."""
    if not clock_shift and not info_timeout:
        lab.ssh(node, "systemctl start pgbackup-metrics.service")
        return
    program = "/usr/local/lib/pgbackup/pgbackup-metrics"
    code = (f"import time; real = time.time; time.time = lambda: real() + {clock_shift}; "
            f"source = open({program!r}).read(); limit = 'INFO_TIMEOUT = 120\\n'; assert limit in source; "
            f"source = source.replace(limit, 'INFO_TIMEOUT = {info_timeout or 120}\\n'); "
            f"exec(compile(source, {program!r}, 'exec'), {{'__name__': '__main__'}})")
    lab.ssh(node, f"cd /tmp && python3 -c {shlex.quote(code)}")


def test_health_checks_pass_on_every_node_of_a_healthy_cluster(lab: Lab) -> None:
    leader = lab.leader()
    for node in lab.nodes:
        collect_metrics(lab, node)
        results = {command: run_check(lab, node, command) for command in ("backup-age", "wal-archive", "standby")}
        assert {code for code, _ in results.values()} == {0}, results
        if node == leader:
            assert "repo1: newest backup" in results["backup-age"][1]
            assert "repo2: newest backup" in results["backup-age"][1]
            assert "last WAL archived" in results["wal-archive"][1]
        else:
            assert results["backup-age"][1] == "PGBACKREST BACKUP-AGE OK: not the leader (backups run on the leader)"
            assert results["wal-archive"][1].startswith("PGBACKREST WAL-ARCHIVE OK: not the leader")


def test_backup_age_check_critical_past_the_threshold(lab: Lab) -> None:
    """Backups older than schedule.maxBackupAgeHours (26): the collector and the check run 27 h ahead."""
    leader = lab.leader()
    ahead = 27 * 3600
    try:
        collect_metrics(lab, leader, clock_shift=ahead)
        code, message = run_check(lab, leader, "backup-age", clock_shift=ahead)
        assert code == 2, message
        assert "CRITICAL: repo1: newest backup 27.0 h old (limit 26.0 h)" in message
        # The same metrics seen from now are from the future, and 27 h later without a new collection stale.
        code, message = run_check(lab, leader, "backup-age", clock_shift=2 * ahead)
        assert (code, "UNKNOWN: metrics are 27.0 h old" in message) == (3, True), message
    finally:
        collect_metrics(lab, leader)
    assert run_check(lab, leader, "backup-age")[0] == 0


@pytest.mark.same_on_every_release
def test_wal_archive_check_critical_on_the_leader_with_s3_down(lab: Lab) -> None:
    leader = lab.leader()
    started = time.monotonic()
    with lab.s3_down():
        segment = lab.failing_segment(leader, "check_outage", 1000)
        collect_metrics(lab, leader, info_timeout=15)  # what the next run of pgbackup-metrics.timer does
        code, message = run_check(lab, leader, "wal-archive")
        took = time.monotonic() - started
        print(f"\nS3 down -> wal-archive CRITICAL on the leader in {took:.0f} s: {message}")
        assert code == 2, message
        assert "CRITICAL: the last WAL archive attempt failed" in message
        assert took < 600  # within the check's interval (10m)
        # pgbackrest info gave up (the collector's limit, here 15 s): the backup age is not known, not "fine".
        code, message = run_check(lab, leader, "backup-age")
        assert (code, "pgbackrest info failed or timed out" in message) == (3, True), message
    lab.wait_archived(segment, timeout=240)
    lab.wait_archiver_recovered(leader)
    collect_metrics(lab, leader)
    code, message = run_check(lab, leader, "wal-archive")
    assert code == 0, message


@pytest.mark.same_on_every_release
def test_consul_definition_written_reloaded_and_removed(lab: Lab) -> None:
    stack = copy.deepcopy(lab.stack())
    stack["pgbackup:monitoring"] = {"consul": True}
    # No Consul agent can be installed here: pgnode1 gets a stand-in `consul` command that records its calls.
    fake = "/usr/local/bin/consul"
    lab.ssh("pgnode1", f"""printf '%s\\n' '#!/bin/sh' 'echo "$*" >>/var/tmp/consul-calls' >{fake} """
                       f"&& chmod 0755 {fake} && rm -f /var/tmp/consul-calls")
    try:
        result = lab.apply(stack)
        assert changed_steps(result["ran"]) == {"files", "schedule"}
        state = lab.driver_state()
        for node in lab.nodes:
            definition = json.loads(lab.ssh(node, "cat /etc/consul.d/pgbackrest.json").stdout)
            assert [c["args"] for c in definition["service"]["checks"]] == [[CHECK, "backup-age"],
                                                                            [CHECK, "wal-archive"], [CHECK, "standby"]]
            out = state[f"cluster-{node}-files"]["outputs"]
            if node == "pgnode1":
                assert "consul: agent reloaded (/etc/consul.d/pgbackrest.json)" in out["stdout"]
            else:
                assert f"pgbackup: warning: node {node}: no Consul agent to reload" in out["stderr"]
        assert lab.ssh("pgnode1", "cat /var/tmp/consul-calls").stdout == "reload\n"
        result = lab.apply()  # pgbackup:monitoring.consul false again (Pulumi.lab.yaml): the definition goes
        assert changed_steps(result["ran"]) == {"files", "schedule"}
        for node in lab.nodes:
            assert lab.ssh(node, "ls /etc/consul.d/pgbackrest.json 2>/dev/null || true").stdout == ""
        assert lab.ssh("pgnode1", "cat /var/tmp/consul-calls").stdout == "reload\nreload\n"
    finally:
        lab.ssh("pgnode1", f"rm -f {fake} /var/tmp/consul-calls")


def test_point_in_time_recovery_into_a_scratch_directory(lab: Lab) -> None:
    target = lab.rows_around_a_target(lab.leader(), "pitr")
    counts = lab.restored_copy_says(lab.replicas()[0], f"--type=time '--target={target}' --target-action=promote",
                                    "SELECT batch || '=' || count(*) FROM pitr GROUP BY batch ORDER BY batch")
    assert counts.split() == ["before=100"]
    # The restored copy pushed nothing: the repository's archive still belongs to the cluster only.
    assert lab.info()["status"]["code"] == 0


def test_a_monthly_archive_restores_from_the_second_repository(lab: Lab) -> None:
    """docs/restoring.md, "Restore a monthly archive": a backup set of repo2, restored to its end."""
    leader = lab.leader()
    lab.sql(leader, "CREATE TABLE IF NOT EXISTS monthly (batch text)")
    lab.sql(leader, "INSERT INTO monthly SELECT 'in-the-archive' FROM generate_series(1, 10)")
    lab.ssh(leader, "systemctl start pgbackup-backup-monthly.service")
    assert unit_result(lab, leader, "pgbackup-backup-monthly.service") == "success"
    label = backups(lab, repo=2)[-1]["label"]
    lab.sql(leader, "INSERT INTO monthly SELECT 'later' FROM generate_series(1, 5)")
    lab.wait_archived(lab.switch_wal(leader))
    counts = lab.restored_copy_says(lab.replicas()[0],
                                    f"--repo=2 --set={label} --type=immediate --target-action=promote",
                                    "SELECT batch || '=' || count(*) FROM monthly GROUP BY batch")
    assert counts.split() == ["in-the-archive=10"]


def assert_archiving_and_backup_on(lab: Lab, leader: str) -> None:
    lab.pgbackrest(leader, "--log-level-console=warn check")
    before = {b["label"] for b in backups(lab)}
    started = lab.ssh(leader, "systemctl start pgbackup-backup-incr.service", check=False)
    assert started.returncode == 0, started.stderr + lab.ssh(
        leader, "journalctl -u pgbackup-backup-incr.service -o cat -n 15 --no-pager", check=False).stdout
    assert unit_result(lab, leader, "pgbackup-backup-incr.service") == "success"
    # One new backup (its retention may expire older ones: after a recovery, whose backups expire nothing,
    # the first scheduled backup applies it).
    assert len([b for b in backups(lab) if b["label"] not in before]) == 1
    for repo in (1, 2):
        result = lab.pgbackrest(leader, f"--log-level-console=warn --repo={repo} verify", check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_switchover_archiving_and_backups_follow_the_new_leader(lab: Lab) -> None:
    old = lab.leader()
    new = lab.replicas()[0]
    sh("patronictl", "-c", lab.env["LAB_PATRONICTL_CONFIG"], "switchover", "--leader", old, "--candidate", new,
       "--force")
    lab.wait_healthy()
    assert lab.leader() == new
    segment = lab.switch_wal(new)
    lab.wait_archived(segment)
    assert_archiving_and_backup_on(lab, new)
    lab.ssh(old, "systemctl start pgbackup-backup-incr.service")
    assert unit_result(lab, old, "pgbackup-backup-incr.service") == "exec-condition"


def assert_backup_skips_the_stranded(lab: Lab, leader: str, stranded: list[str]) -> None:
    """Before the reinit (issue 21): the scheduled backup succeeds from a standby that follows the leader, or
    from the leader, saying it skipped the stranded members; the collector names them; so does the check."""
    before, since = len(backups(lab)), lab.ssh(leader, "date +%s").stdout.strip()
    started = lab.ssh(leader, "systemctl start pgbackup-backup-incr.service", check=False)
    journal = lab.ssh(leader, f"journalctl -u pgbackup-backup-incr.service -o cat --no-pager --since @{since}",
                      check=False).stdout
    assert started.returncode == 0, started.stderr + journal
    assert unit_result(lab, leader, "pgbackup-backup-incr.service") == "success"
    assert len(backups(lab)) == before + 1
    said = [line for line in journal.splitlines() if line.startswith("pgbackup-backup: ")]
    assert said, journal
    for member in stranded:
        assert f"{member} stranded" in said[-1], said
    collect_metrics(lab, leader)
    text = lab.ssh(leader, "cat /var/lib/prometheus/node-exporter/pgbackrest.prom").stdout
    for member in stranded:
        assert f'pgbackup_stranded_member_since_timestamp_seconds{{stanza="{STANZA}",member="{member}",' in text
        assert f"member {member} does not follow the leader" in run_check(lab, leader, "standby")[1]


def test_hard_kill_of_the_leader(lab: Lab) -> None:
    victim = lab.leader()
    lab.sql(victim, "CREATE TABLE IF NOT EXISTS failover (n int)")
    lab.kill_node(victim)
    deadline = time.monotonic() + 120
    while True:
        leaders = [m["Member"] for m in lab.members() if m.get("Role") == "Leader" and m.get("State") == "running"]
        if leaders and leaders[0] != victim:
            break
        assert time.monotonic() < deadline, lab.members()
        time.sleep(2)
    new = leaders[0]
    lab.sql(new, "INSERT INTO failover SELECT generate_series(1, 10)")
    lab.wait_archived(lab.switch_wal(new))  # archiving goes on from the new leader, with a node down
    # With a member down, `pgbackrest check` fails on the unreachable pgN-host (and a backup waits about two
    # minutes for it before going on): bring the node back first, as an operator would.
    # Boot the killed node again; a stranded member is reinit (Lab.rejoin_after_power_cut); the backups skip it
    # before (pgbackup-backup), as assert_backup_skips_the_stranded proves.
    lab.rejoin_after_power_cut(victim, lambda stuck: assert_backup_skips_the_stranded(lab, new, stuck))
    assert lab.leader() == new
    assert_archiving_and_backup_on(lab, new)


def test_replica_rebuilt_by_patroni_through_pgbackrest(lab: Lab) -> None:
    replica = lab.replicas()[0]
    since = lab.ssh(replica, "date +%s").stdout.strip()
    sh("patronictl", "-c", lab.env["LAB_PATRONICTL_CONFIG"], "reinit", SCOPE, replica, "--force")
    time.sleep(5)
    lab.wait_healthy(timeout=240)
    journal = lab.ssh(replica, f"journalctl -u patroni --no-pager -o cat --since @{since}").stdout
    assert "replica has been created using pgbackrest" in journal
    assert re.search(r"restore command begin [\d.]+: --delta", journal)
    assert "restore command end: completed successfully" in journal


def changed_steps(ran: list[str]) -> set[str]:
    return {name.split("-", 2)[2] for name in ran if name.startswith("cluster-")}


def test_apply_again_changes_nothing(lab: Lab) -> None:
    result = lab.apply()
    assert result["ran"] == []
    # Even when every step runs again (as on a fresh Pulumi state), nothing on the nodes changes.
    state = lab.driver_state()
    for name in [n for n in state if n.startswith("cluster-") and "stdout" in state[n]["outputs"]]:
        state[name]["inputs"] = "forget"
    (LAB_DIR / "driver-state.json").write_text(json.dumps(state))
    before = len(backups(lab))
    digests = {node: lab.ssh(node, "sha256sum /etc/pgbackrest/pgbackrest.conf /etc/patroni/patroni.yml "
                                   "/etc/systemd/system/pgbackup-*").stdout for node in lab.nodes}
    result = lab.apply()
    assert changed_steps(result["ran"]) == {"install", "files", "patroni", "stanza", "archiving", "verify", "schedule"}
    for node in lab.nodes:
        assert lab.ssh(node, "sha256sum /etc/pgbackrest/pgbackrest.conf /etc/patroni/patroni.yml "
                             "/etc/systemd/system/pgbackup-*").stdout == digests[node]
    runs = [json.loads(line) for line in (LAB_DIR / "driver-runs.jsonl").read_text().splitlines()]
    assert all(r["status"] == 0 for r in runs[-len(result["ran"]):])
    assert len(backups(lab)) == before  # no new "first" backup
    state = lab.driver_state()
    for node in lab.nodes:
        assert "files: 0 changed" in state[f"cluster-{node}-files"]["outputs"]["stdout"]
        assert "unchanged" in state[f"cluster-{node}-patroni"]["outputs"]["stdout"]
        assert "restarting" not in state[f"cluster-{node}-archiving"]["outputs"]["stdout"]


# Everything a root-run step could be tricked into touching: content, owner and mode of every file and link.
SNAPSHOT = ("find /etc /usr/local /root /var/lib/pgbackrest /var/lib/postgresql -xdev \\( -type f -o -type l \\) "
            "-not -path '/var/lib/postgresql/*/main/*' -printf '%p %U:%G %m %l\\n' | sort; "
            "find /etc /usr/local /root -xdev -type f -print0 | sort -z | xargs -0 sha256sum")


def with_retention_full(lab: Lab, full: int) -> dict[str, Any]:
    stack = copy.deepcopy(lab.stack())
    stack["pgbackup:retention"] = {**stack["pgbackup:retention"], "full": full}
    return stack


@pytest.mark.same_on_every_release
def test_a_postgres_shell_cannot_turn_the_files_step_into_root(lab: Lab) -> None:
    """Issue 8.1. On a node an older pgbackup set up, /etc/pgbackrest belonged to postgres: postgres swaps
    pgbackrest.conf for a link to a file of its own and makes pgbackrest.conf.pgbackup-prev a link to
    /etc/passwd. The next apply that changes the configuration must refuse, naming the link, and change
    nothing; afterwards the directory is root's and postgres cannot plant anything in it."""
    node = lab.replicas()[0]
    conf = "/etc/pgbackrest/pgbackrest.conf"
    lab.ssh(node, "chown postgres:postgres /etc/pgbackrest")
    lab.ssh(node, f"cd /tmp && runuser -u postgres -- sh -c 'cp {conf} /var/lib/pgbackrest/mine.conf && "
                  f"ln -sfn /var/lib/pgbackrest/mine.conf {conf} && ln -sfn /etc/passwd {conf}.pgbackup-prev'")
    before = lab.ssh(node, SNAPSHOT).stdout
    assert re.search(rf"^{conf} \d+:\d+ 777 /var/lib/pgbackrest/mine.conf$", before, re.M), "the link is planted"
    with pytest.raises(driver.StepFailed) as failure:
        lab.apply(with_retention_full(lab, 3))
    message = str(failure.value)
    assert f"cluster-{node}-files" in message
    assert f"{conf} is a symbolic link (to /var/lib/pgbackrest/mine.conf): refused" in message
    after = lab.ssh(node, SNAPSHOT).stdout
    assert after == before, "a file changed content, owner or mode on a refused apply"
    # The operator removes the links and applies the change again: the directory becomes root's.
    lab.ssh(node, f"rm {conf} {conf}.pgbackup-prev /var/lib/pgbackrest/mine.conf")
    assert lab.apply(with_retention_full(lab, 3))["outputs"]["stanzaStatus"]["code"] == 0
    assert lab.ssh(node, "stat -c '%U:%G %a' /etc/pgbackrest " + conf).stdout.split() == [
        "root:postgres", "750", "root:postgres", "640"]
    planted = lab.ssh(node, f"cd /tmp && runuser -u postgres -- ln -s /etc/passwd {conf}.x", check=False)
    assert planted.returncode != 0
    assert "Permission denied" in planted.stderr
    lab.pgbackrest(node, "--log-level-console=warn check")
    assert lab.apply()["outputs"]["stanzaStatus"]["code"] == 0  # back to Pulumi.lab.yaml


@pytest.mark.same_on_every_release
def test_a_node_answering_with_another_host_key_is_sent_nothing(lab: Lab) -> None:
    """Issue 8.2: the host key every node pins is checked before anything (the manifest with the S3 secret
    and the passphrase) is sent: a node whose sshd presents another key fails the apply, named."""
    node = lab.replicas()[0]
    keys = LAB_DIR / "nodes" / node / "root" / "etc" / "ssh"
    real = (keys / "ssh_host_ed25519_key").read_bytes(), (keys / "ssh_host_ed25519_key.pub").read_bytes()
    # From now on the node answers with another key: sshd reloaded (Debian 13's OpenSSH 10 keeps the keys
    # it loaded: a swapped file alone changed nothing; 9.2 re-reads them at each connection), in one session.
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "impostor"))
    lab.ssh(node, "cd /etc/ssh && mv impostor ssh_host_ed25519_key && mv impostor.pub ssh_host_ed25519_key.pub && "
                  "systemctl reload ssh")
    time.sleep(1)
    since = time.strftime("%Y-%m-%d %H:%M:%S")  # the nodes share the host's clock
    log = LAB_DIR / "driver-runs.jsonl"
    already = len(log.read_text().splitlines())
    try:
        with pytest.raises(driver.StepFailed) as failure:
            lab.apply(with_retention_full(lab, 3))
        until = time.strftime("%Y-%m-%d %H:%M:%S")
        time.sleep(1)
    finally:
        (keys / "ssh_host_ed25519_key").write_bytes(real[0])
        (keys / "ssh_host_ed25519_key").chmod(0o600)
        (keys / "ssh_host_ed25519_key.pub").write_bytes(real[1])
        # The reload goes through the impostor key (not checked), to bring back the real one.
        sh("ssh", "-F", lab.env["LAB_SSH_CONFIG"], "-o", "StrictHostKeyChecking=no", "-o",
           "UserKnownHostsFile=/dev/null", node, "systemctl reload ssh")
    message = str(failure.value)
    assert f"cluster-{node}-files: {node} answered with host key ssh-ed25519 SHA256:" in message
    assert "not the pinned hostKey" in message
    runs = [json.loads(line) for line in log.read_text().splitlines()[already:]]
    assert [r["status"] for r in runs if r["resource"].startswith(f"cluster-{node}-")] == [-1]
    # No session was ever authenticated on the node: the manifest had nowhere to go.
    journal = lab.ssh(node, f"journalctl -q --no-pager -u ssh.service --since '{since}' --until '{until}'").stdout
    assert "Accepted publickey" not in journal, journal
    assert lab.apply()["outputs"]["stanzaStatus"]["code"] == 0


@pytest.mark.same_on_every_release
def test_a_retention_change_reruns_only_what_depends_on_it(lab: Lab) -> None:
    stack = lab.stack()
    stack["pgbackup:retention"] = {**stack["pgbackup:retention"], "full": 3}
    result = lab.apply(stack)
    assert changed_steps(result["ran"]) == {"files", "stanza", "verify"}
    for node in lab.nodes:
        assert "repo1-retention-full=3" in lab.ssh(node, "cat /etc/pgbackrest/pgbackrest.conf").stdout
    assert result["outputs"]["stanzaStatus"]["code"] == 0
    assert lab.apply()["outputs"]["stanzaStatus"]["code"] == 0  # back to Pulumi.lab.yaml


@pytest.mark.same_on_every_release
def test_monthly_archives_turned_off_then_on_again(lab: Lab) -> None:
    stack = copy.deepcopy(lab.stack())
    stack["pgbackup:retention"] = {**stack["pgbackup:retention"], "monthly": 0}
    kept = [b["label"] for b in backups(lab, repo=2)]
    result = lab.apply(stack)
    assert changed_steps(result["ran"]) == {"files", "stanza", "verify", "schedule"}
    for node in lab.nodes:
        assert "repo2-" not in lab.ssh(node, "cat /etc/pgbackrest/pgbackrest.conf").stdout
        assert lab.ssh(node, "ls /etc/systemd/system/pgbackup-backup-monthly.* 2>/dev/null || true").stdout == ""
        assert "pgbackup-backup-monthly" not in lab.ssh(node, "systemctl list-timers --all --no-legend").stdout
    assert result["outputs"]["stanzaStatus"]["code"] == 0
    # Nothing stored is lost: repo2's backups are still there for `--repo=2` once it is configured again.
    result = lab.apply()
    assert changed_steps(result["ran"]) == {"files", "stanza", "verify", "schedule"}
    assert [b["label"] for b in backups(lab, repo=2)][:len(kept)] == kept
    for node in lab.nodes:
        assert "pgbackup-backup-monthly.timer" in lab.ssh(node, "systemctl list-timers --all --no-legend").stdout
    assert result["outputs"]["stanzaStatus"]["code"] == 0


def secrets_of(lab: Lab) -> list[str]:
    """The secrets the lab's state holds: the repository keys' (every generation the state still has), the
    passphrase, the TLS keys, the SSH key."""
    state = lab.driver_state()
    keys = [v["outputs"]["secret"] for v in state.values() if v.get("type") == "aws:iam/accessKey:AccessKey"]
    assert keys, "no repository key in the lab's state"
    values = [*keys, state["cluster-cipher-pass"]["outputs"]["result"]]
    values += [v["outputs"]["private_key_pem"].splitlines()[1] for k, v in state.items() if k.endswith("-key")
               and "private_key_pem" in v["outputs"]]
    values.append(Path(lab.env["LAB_SSH_KEY"]).read_text().splitlines()[1])
    assert all(len(v) >= 20 for v in values)
    return values


def test_unreachable_endpoint_fails_clearly_without_secrets(lab: Lab) -> None:
    stack = copy.deepcopy(lab.stack())
    stack["pgbackup:storage"].update(endpoint="localhost:9", create=False)
    secret = "wrong-secret-for-an-unreachable-endpoint-7b1c"
    with pytest.raises(driver.StepFailed) as failure:
        lab.apply(stack, secrets={"accessKeyId": "LABKEYID", "secretAccessKey": secret})
    message = str(failure.value)
    # The files step names it on the node, in seconds (pgBackRest itself would spend 4 x io-timeout, 4 minutes,
    # per command on it), and the wrong endpoint never reaches pgbackrest.conf.
    node = re.search(r"cluster-(pgnode\d)-files", message)
    assert node, message
    assert (f"step files on node {node[1]}: repo1 (pgbackup:storage): this node cannot open a connection to the "
            f"endpoint localhost:9 (Connection refused)") in message, message
    for name in lab.nodes:
        conf = lab.ssh(name, "grep -x 'repo1-s3-endpoint=.*' /etc/pgbackrest/pgbackrest.conf").stdout.strip()
        assert conf == f"repo1-s3-endpoint={lab.stack()['pgbackup:storage']['endpoint'].partition(':')[0]}", conf
    for value in [secret, *secrets_of(lab)]:
        assert value not in message
    restored = lab.apply()  # the right configuration again
    assert restored["outputs"]["stanzaStatus"]["code"] == 0


def test_s3_down_for_a_while_then_back_loses_no_wal(lab: Lab) -> None:
    leader = lab.leader()
    with lab.s3_down():
        lab.sql(leader, "CREATE TABLE IF NOT EXISTS outage (n int)")
        segments = []
        for i in range(3):
            lab.sql(leader, f"INSERT INTO outage SELECT generate_series(1, 1000) + {i * 1000}")
            segments.append(lab.switch_wal(leader))
        lab.wait_archive_failure(leader)
    lab.wait_archived(segments[-1], timeout=240)
    for repo in (1, 2):
        result = lab.pgbackrest(leader, f"--log-level-console=warn --repo={repo} verify", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    lab.pgbackrest(leader, "--log-level-console=warn check")


def test_a_node_unreachable_at_apply_time(lab: Lab) -> None:
    stack = copy.deepcopy(lab.stack())
    stack["pgbackup:cluster"]["nodes"].append({"name": "pgnode9", "host": "127.0.1.9",
                                               "hostKey": stack["pgbackup:cluster"]["nodes"][0]["hostKey"]})
    log = LAB_DIR / "driver-runs.jsonl"
    already = len(log.read_text().splitlines())
    with pytest.raises(driver.StepFailed) as failure:
        lab.apply(stack)
    message = str(failure.value)
    assert "cluster-pgnode9-install" in message
    assert "127.0.1.9" in message
    runs = [json.loads(line) for line in log.read_text().splitlines()[already:]]
    # Nothing is left half-done. The new peer changes only the reachable nodes' files step; whether that step
    # started before the failure stopped the run depends on timing (as with Pulumi's engine, which starts
    # nothing new after a failure and lets running steps finish). Each either ran to the end, with the new
    # configuration on the node, or did not start, with the old one still there. No cluster-wide step ran.
    for node in lab.nodes:
        ran = {r["resource"].split("-", 2)[2]: r["status"] for r in runs if r["resource"].startswith(f"cluster-{node}-")}
        assert set(ran) <= {"files"}, ran
        assert all(status == 0 for status in ran.values()), ran
        conf = lab.ssh(node, "cat /etc/pgbackrest/pgbackrest.conf").stdout
        assert ("pg4-host=127.0.1.9" in conf) == ("files" in ran), (node, ran)
    print(f"\nfiles step ran on {sum(r['resource'].endswith('-files') for r in runs)} of 3 reachable nodes")
    assert not [r for r in runs if r["resource"].endswith(("-stanza", "-archiving", "-verify", "-schedule"))]
    assert lab.apply()["outputs"]["stanzaStatus"]["code"] == 0


def test_point_in_time_recovery_of_the_whole_cluster_as_the_readme_says(lab: Lab) -> None:
    """docs/restoring.md, "Point-in-time recovery of the cluster": `pgbackup recover --to <time>` runs its steps."""
    leader, replicas = lab.leader(), lab.replicas()
    timeline = max(int(m["TL"]) for m in lab.members())
    target = lab.rows_around_a_target(leader, "cluster_pitr")
    restores = f"grep -c -e '--type=standby' /var/log/pgbackrest/{STANZA}-restore.log || true"
    before = {node: int(lab.ssh(node, restores).stdout.strip() or 0) for node in replicas}
    took = lab.recover_cluster_to(target)
    print("\n" + ", ".join(f"{name}: {seconds:.1f} s" for name, seconds in took.items()))
    members = lab.wait_healthy()
    assert lab.leader() == leader
    timelines = {int(m["TL"]) for m in members}
    assert len(timelines) == 1, members  # every member follows the new leader's timeline
    assert timelines.pop() > timeline, members
    # Each replica was restored from the repository as a standby (step 3, at once with the leader).
    for node in replicas:
        assert int(lab.ssh(node, restores).stdout.strip() or 0) > before[node], node
    # The whole cluster is back at the target: the later rows are gone everywhere.
    for node in lab.nodes:
        assert lab.sql(node, "SELECT batch || '=' || count(*) FROM cluster_pitr GROUP BY batch").split() == [
            "before=100"], node
    # Archiving goes on from the new timeline, check passes, backups run, verify finds no gap.
    lab.wait_archived(lab.switch_wal(leader))
    assert_archiving_and_backup_on(lab, leader)
    # 7. Once verified, the old data goes: `recover --cleanup`.
    assert all(lab.ssh(node, f"ls -d {PG_DATA}.before-pitr-*").stdout.strip() for node in replicas)
    lab.pgbackup("recover", "--cleanup", "--yes-delete-old-data")
    for node in lab.nodes:
        assert lab.ssh(node, f"ls -d {PG_DATA}.before-pitr-*", check=False).returncode != 0, node


def test_secrets_absent_from_commands_processes_units_and_journal(lab: Lab) -> None:
    values = secrets_of(lab)
    commands = [json.loads(line)["command"] for line in (LAB_DIR / "driver-runs.jsonl").read_text().splitlines()]
    assert commands
    for command in commands:
        assert not any(v in command for v in values)
    leader = lab.leader()
    lab.ssh(leader, "systemctl start --no-block pgbackup-backup-full.service")
    seen = ""
    for _ in range(10):
        seen += lab.ssh(leader, "ps -eo args").stdout
        time.sleep(0.3)
    assert "pgbackrest" in seen
    for node in lab.nodes:
        seen += lab.ssh(node, "systemctl show 'pgbackup-*' patroni.service").stdout
        seen += lab.ssh(node, "journalctl --no-pager -o cat").stdout
        seen += lab.ssh(node, "cat /var/log/pgbackrest/*.log").stdout
    for value in values:
        assert value not in seen


def test_a_scoped_key_is_enough_and_a_wrong_secret_fails_clearly(lab: Lab) -> None:
    """Against a second S3 that checks signatures and IAM policies: pgbackup's repository policy lets
    pgBackRest do everything it does (stanza, archiving, backups); a wrong secret fails the apply with the
    node and step named and no secret shown. Last in the file: WAL archived here is not in the main repo."""
    own_secrets = secrets_of(lab)  # before: with create false, the program's own key leaves the state
    s3 = AuthenticatedS3(lab, bucket="pgbackup-auth", prefix="lab")
    stack = copy.deepcopy(lab.stack())
    stack["pgbackup:storage"].update(endpoint=s3.endpoint, bucket="pgbackup-auth", create=False)
    try:
        result = lab.apply(stack, secrets={"accessKeyId": s3.access_key_id, "secretAccessKey": s3.secret_access_key})
        assert result["outputs"]["stanzaStatus"] == {"code": 0, "message": "ok"}
        assert result["outputs"]["lastBackup"]["type"] == "full"
        leader = lab.leader()
        for unit in ("pgbackup-backup-incr.service", "pgbackup-backup-monthly.service"):  # repo1, repo2
            lab.ssh(leader, f"systemctl start {unit}")
            assert unit_result(lab, leader, unit) == "success"
        wrong = "wrong-secret-for-the-scoped-key-42c9"
        with pytest.raises(driver.StepFailed) as failure:
            lab.apply(stack, secrets={"accessKeyId": s3.access_key_id, "secretAccessKey": wrong})
        message = str(failure.value)
        assert re.search(r"cluster-pgnode\d-stanza", message), message
        assert re.search(r"step stanza on node pgnode\d|step stanza failed on node pgnode\d", message), message
        assert "403" in message or "SignatureDoesNotMatch" in message, message
        for value in [wrong, s3.secret_access_key, *own_secrets]:
            assert value not in message
    finally:
        s3.close()
    assert lab.apply()["outputs"]["stanzaStatus"]["code"] == 0


def archiver(lab: Lab, node: str) -> tuple[int, int]:
    """(archived_count, failed_count) of pg_stat_archiver on `node`."""
    archived, failed = lab.sql(node, "SELECT archived_count, failed_count FROM pg_stat_archiver").split("|")
    return int(archived), int(failed)


@pytest.mark.same_on_every_release
def test_key_rotation_loses_no_archive_and_the_old_key_is_refused(lab: Lab) -> None:
    """storage.keyGeneration against an S3 that checks signatures, with the key made by the program (an
    administrator's credentials for `pulumi up`): while a writer switches WAL segments continuously, the
    rotation creates the new key, pushes it, proves it, and deletes the old one last. Not one archive
    failure on the leader, and the old key is refused afterwards."""
    s3 = AuthenticatedS3(lab, bucket="pgbackup-rotate", prefix="lab", port=9445, moto_port=9102, admin=True)
    stack = copy.deepcopy(lab.stack())
    stack["pgbackup:storage"].update(endpoint=s3.endpoint, bucket="pgbackup-rotate")
    admin = s3.admin_env()
    try:
        first = lab.apply(stack, env=admin)
        assert first["outputs"]["stanzaStatus"] == {"code": 0, "message": "ok"}
        old_id = first["outputs"]["accessKeyId"]
        old_secret = lab.driver_state()["repository-key"]["outputs"]["secret"]
        s3.client_as(old_id, old_secret).list_objects_v2(Bucket="pgbackup-rotate", Prefix="lab/")  # it works
        leader = lab.leader()
        lab.sql(leader, "DROP TABLE IF EXISTS rotation_writes; CREATE TABLE rotation_writes (at timestamptz)")
        before = archiver(lab, leader)
        stop, written = threading.Event(), []

        def writer() -> None:
            while not stop.is_set():
                lab.sql(leader, "INSERT INTO rotation_writes VALUES (now())")
                written.append(lab.switch_wal(leader))
                stop.wait(0.2)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            rotated_stack = copy.deepcopy(stack)
            rotated_stack["pgbackup:storage"]["keyGeneration"] = 1
            rotated = lab.apply(rotated_stack, env=admin)
        finally:
            stop.set()
            thread.join(timeout=60)
        new_id = rotated["outputs"]["accessKeyId"]
        assert new_id != old_id
        assert rotated["outputs"]["stanzaStatus"] == {"code": 0, "message": "ok"}
        # Archiving goes on with the new key. (A row first: a switch with nothing written since the writer's last
        # one closes no segment, and names the next one, which archive_timeout would close only a minute later.)
        lab.sql(leader, "INSERT INTO rotation_writes VALUES (now())")
        lab.wait_archived(lab.switch_wal(leader))
        after = archiver(lab, leader)
        assert after[1] == before[1], (
            f"archive failures during the rotation: {before} -> {after}\n" + lab.archiving_diagnosis()
            + lab.archive_failure_story(leader, "-10min"))
        assert after[0] >= before[0] + len(written), (before, after, len(written))
        assert len(written) >= 2, written  # segments were switched (and archived) while the key changed
        with pytest.raises(ClientError) as refused:
            s3.client_as(old_id, old_secret).list_objects_v2(Bucket="pgbackup-rotate", Prefix="lab/")
        assert refused.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "AccessDenied"), refused.value.response
        assert "repository-key" not in lab.driver_state()
        lab.pgbackrest(leader, "--log-level-console=warn check")
    finally:
        try:
            # The default stack again, while this S3 still answers: the rotated key goes as gone from the program.
            lab.apply(env=admin)
        finally:
            s3.close()


def timed_incremental(lab: Lab, leader: str) -> float:
    before = len(backups(lab))
    started = time.monotonic()
    lab.ssh(leader, "systemctl start pgbackup-backup-incr.service")
    took = time.monotonic() - started
    assert unit_result(lab, leader, "pgbackup-backup-incr.service") == "success"
    assert len(backups(lab)) == before + 1
    return took


@pytest.mark.releases("trixie")
def test_one_standby_stopped_the_scheduled_backup_and_the_check_succeed(lab: Lab) -> None:
    """pgBackRest 2.54+ (pinned): backup-standby=prefer. With one standby's PostgreSQL stopped, the scheduled
    backup still succeeds, from the other standby, and takes no longer than with every standby up (plus a
    margin); the apply's `check` (verify step) succeeds too. With every standby stopped, the backup falls
    back to the primary (backup-standby=y fails there: "[056] unable to find standby cluster", measured)."""
    pinned = {**lab.stack(), "pgbackup:pgbackrest": {**lab.stack()["pgbackup:pgbackrest"],
                                                       "version": f"{FACTS['pgbackrest']}*"}}
    result = lab.apply(stack=pinned)
    assert result["outputs"]["stanzaStatus"]["code"] == 0
    leader = lab.leader()
    assert "backup-standby=prefer" in lab.ssh(leader, "cat /etc/pgbackrest/pgbackrest.conf").stdout
    with_all = timed_incremental(lab, leader)
    stopped = lab.replicas()[0]
    # Patroni paused (it would start PostgreSQL again), then the standby's PostgreSQL stopped: the member stays.
    sh("patronictl", "-c", lab.env["LAB_PATRONICTL_CONFIG"], "pause", "--wait")
    try:
        lab.ssh(stopped, f"cd /tmp && runuser -u postgres -- {FACTS['pg_bin']}/pg_ctl -D {PG_DATA} -m fast -w stop")
        with_one_down = timed_incremental(lab, leader)
        assert with_one_down <= with_all + 30, (with_all, with_one_down)
        # The apply's check: a retention change runs the stanza and verify steps again.
        changed = {**pinned, "pgbackup:retention": {**pinned["pgbackup:retention"], "full": 3}}
        started = time.monotonic()
        result = lab.apply(stack=changed)
        assert {"stanza", "verify"} <= changed_steps(result["ran"])
        assert result["outputs"]["stanzaStatus"] == {"code": 0, "message": "ok"}
        print(f"incremental backup: {with_all:.1f} s with every standby up, {with_one_down:.1f} s with "
              f"{stopped} stopped; apply with the check {time.monotonic() - started:.1f} s")
        for other in lab.replicas()[1:]:
            lab.ssh(other, f"cd /tmp && runuser -u postgres -- {FACTS['pg_bin']}/pg_ctl -D {PG_DATA} -m fast -w stop")
        timed_incremental(lab, leader)
    finally:
        sh("patronictl", "-c", lab.env["LAB_PATRONICTL_CONFIG"], "resume", "--wait")
    lab.wait_healthy()
    assert lab.apply()["outputs"]["stanzaStatus"]["code"] == 0  # back to Pulumi.lab.yaml


@pytest.mark.releases("trixie")
def test_a_node_with_another_pgbackrest_version_fails_the_apply_naming_it(lab: Lab) -> None:
    """Every node must run the same pgBackRest. One replica gets Debian 12's pgBackRest 2.45 (the real
    package, which installs on Debian 13: libssl3t64 provides libssl3); when the install steps run again (as
    after `pulumi up --replace` of them, or on a new state: Pulumi runs a step only when its inputs change),
    the apply fails naming every node and its version, before any cluster-wide step. The pin the message
    asks for installs the pinned version on that node, and the apply succeeds. Debian 13 only: a Debian 12
    node cannot install Debian 13's pgBackRest 2.55.1-1 (it depends on libssl3t64, libssh2-1t64 and libzstd1
    1.5.5, which Debian 12 does not have)."""
    deb, other = host_pgbackrest_deb()
    lab_version = lab.first_apply["outputs"]["pgbackrestVersion"]
    assert not other.startswith(FACTS["pgbackrest"]), f"the host's apt offers {other}, the lab's own pgBackRest"
    node = lab.replicas()[-1]
    assert lab.install_deb(node, deb) == f"pgBackRest {other.split('-')[0]}"
    for peer in lab.nodes:
        if peer != node:
            assert lab.ssh(peer, "cd /tmp && runuser -u postgres -- pgbackrest version").stdout.strip() == (
                f"pgBackRest {lab_version.split('-')[0]}")
    state = lab.driver_state()
    for peer in lab.nodes:
        state[f"cluster-{peer}-install"]["inputs"] = "forget"
    (LAB_DIR / "driver-state.json").write_text(json.dumps(state))
    log = LAB_DIR / "driver-runs.jsonl"
    already = len(log.read_text().splitlines())
    with pytest.raises(VersionMismatch) as failure:
        lab.apply()
    message = str(failure.value)
    print(f"\n{message}")
    assert message == ("pgBackRest must be the same version on every node, but "
                       + ", ".join(f"{n} runs {other if n == node else lab_version}" for n in lab.nodes)
                       + ": set pgbackup:pgbackrest.version to pin one")
    ran = [json.loads(line)["resource"] for line in log.read_text().splitlines()[already:]]
    assert sorted(ran) == [f"cluster-{n}-install" for n in lab.nodes], ran
    # The remedy the message names: the pin installs the release's version on that node again.
    pinned = {**lab.stack(), "pgbackup:pgbackrest": {**lab.stack()["pgbackup:pgbackrest"],
                                                       "version": f"{FACTS['pgbackrest']}*"}}
    result = lab.apply(stack=pinned)
    assert result["outputs"]["pgbackrestVersion"] == lab_version
    assert result["outputs"]["stanzaStatus"]["code"] == 0
    assert f"installed: pgbackrest={FACTS['pgbackrest']}*" in lab.driver_state()[f"cluster-{node}-install"][
        "outputs"]["stdout"]
    assert lab.ssh(node, "cd /tmp && runuser -u postgres -- pgbackrest version").stdout.strip() == (
        f"pgBackRest {lab_version.split('-')[0]}")
    assert lab.apply()["outputs"]["stanzaStatus"]["code"] == 0  # back to Pulumi.lab.yaml


def node_key(lab: Lab, node: str) -> tuple[str, str]:
    """repo1's key as the node holds it in pgbackrest.conf (what an intruder with a root or postgres shell reads)."""
    options = dict(line.split("=", 1) for line in lab.ssh(node, "cat /etc/pgbackrest/pgbackrest.conf").stdout.splitlines()
                   if line.startswith(("repo1-s3-key=", "repo1-s3-key-secret=")))
    return options["repo1-s3-key"], options["repo1-s3-key-secret"]


@pytest.mark.releases("trixie")
def test_a_repository_deleted_with_the_nodes_key_restores_as_it_was(lab: Lab) -> None:
    """storage.objectLockDays against an S3 that checks signatures and enforces Object Lock (moto): the bucket
    is created locked; an intruder with the leader's own key deletes every object under the repository prefix
    (delete markers: removing a version is refused); archiving, `check` and the backup fail loudly (the
    wal-archive check CRITICAL); docs/restoring.md's restore with --repo-target-time brings back the rows written before
    the deletion; `pgbackup repository undelete` (the administrator's key from the environment) removes the
    intruder's delete markers, runs check and the full backups through the units, and the repository is healthy
    again with no WAL lost; the rotation it prints next, in that order, ends with the stolen key refused."""
    s3 = AuthenticatedS3(lab, bucket="pgbackup-lockhost", prefix="lab", port=9446, moto_port=9103, admin=True)
    stack = copy.deepcopy(lab.stack())
    stack["pgbackup:storage"].update(endpoint=s3.endpoint, bucket="pgbackup-locked", objectLockDays=1)
    stack["pgbackup:pgbackrest"] = {**stack["pgbackup:pgbackrest"], "version": f"{FACTS['pgbackrest']}*"}
    admin = s3.admin_env()
    try:
        applied = lab.apply(stack, env=admin)
        assert applied["outputs"]["stanzaStatus"] == {"code": 0, "message": "ok"}
        administrator = s3.client_as(*s3.admin)  # type: ignore[misc]
        assert administrator.get_object_lock_configuration(Bucket="pgbackup-locked")["ObjectLockConfiguration"][
            "Rule"]["DefaultRetention"] == {"Mode": "COMPLIANCE", "Days": 1, "Years": 0}
        leader = lab.leader()
        target = lab.rows_around_a_target(leader, "immutable")
        time.sleep(2)
        before_deletion = lab.sql(leader, "SELECT to_char(now() AT TIME ZONE 'utc', 'YYYY-MM-DD HH24:MI:SS') || '+00'")
        time.sleep(2)

        # The intruder: the leader's own key, every object under the prefix deleted by name.
        labels_before = [b["label"] for b in backups(lab)]
        stolen = node_key(lab, leader)
        intruder = s3.client_as(*stolen)
        names = [o["Key"] for page in intruder.get_paginator("list_objects_v2").paginate(
            Bucket="pgbackup-locked", Prefix="lab/") for o in page.get("Contents", [])]
        assert len(names) > 10, names
        # One DeleteObject by name each (moto's authenticated DeleteObjects refuses every key of a locked bucket,
        # which S3 does not: a delete by name only adds a delete marker).
        for name in names:
            assert intruder.delete_object(Bucket="pgbackup-locked", Key=name)["DeleteMarker"] is True
        left = [o["Key"] for o in intruder.list_objects_v2(Bucket="pgbackup-locked", Prefix="lab/").get("Contents", [])]
        assert left == [], (left, len(names))
        version = intruder.list_object_versions(Bucket="pgbackup-locked", Prefix="lab/")["Versions"][0]
        for who in (intruder, administrator):  # the policy refuses the intruder; the lock refuses everyone
            with pytest.raises(ClientError) as refused:
                who.delete_object(Bucket="pgbackup-locked", Key=version["Key"], VersionId=version["VersionId"])
            assert refused.value.response["Error"]["Code"] == "AccessDenied", refused.value.response

        # Loud failures: check, archiving (pg_stat_archiver and the wal-archive check), the scheduled backup.
        assert lab.pgbackrest(leader, "--log-level-console=warn check", check=False).returncode != 0
        failed_before = archiver(lab, leader)[1]
        lab.sql(leader, "INSERT INTO immutable SELECT 'after-deletion' FROM generate_series(1, 5)")
        lab.switch_wal(leader)
        deadline = time.monotonic() + 120
        while archiver(lab, leader)[1] == failed_before:
            assert time.monotonic() < deadline, "archiving did not fail"
            time.sleep(2)
        collect_metrics(lab, leader)
        code, message = run_check(lab, leader, "wal-archive")
        assert code == 2, message
        lab.ssh(leader, "systemctl start pgbackup-backup-incr.service", check=False)
        assert unit_result(lab, leader, "pgbackup-backup-incr.service") == "exit-code"  # systemd: the backup failed

        # docs/restoring.md "After a deletion": the repository as it was, into a scratch directory on a replica.
        counts = lab.restored_copy_says(
            lab.replicas()[0],
            f"--repo=1 '--repo-target-time={before_deletion}' --type=time '--target={target}' --target-action=promote",
            "SELECT batch || '=' || count(*) FROM immutable GROUP BY batch ORDER BY batch")
        assert counts.split() == ["before=100"]

        # Healthy again (docs/restoring.md): `pgbackup repository undelete` with the administrator's key in the environment
        # removes the delete markers written after the time the repository was whole (pgBackRest's own deletes
        # stay deleted), waits for `check` while the WAL PostgreSQL kept goes out, and takes the full backups
        # (repo1, and repo2 in its prefix) through the backup units.
        undelete_started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        undeleted = lab.pgbackup("repository", "undelete", "--before", before_deletion, stack=stack, env=admin,
                                 timeout=1800)
        out = undeleted.stdout
        print(f"\n{out}")
        assert f"removed {len(names)} of {len(names)} delete markers" in out, out
        assert f"{leader} (leader): pgbackrest check passed" in out, out
        assert "(full, repo1)" in out, out
        assert "(full, repo2)" in out, out
        shown = {o["Key"] for page in administrator.get_paginator("list_objects_v2").paginate(
            Bucket="pgbackup-locked", Prefix="lab/") for o in page.get("Contents", [])}
        # Every file the intruder hid shows again, but for the WAL that the new full backups' expire removed (its
        # own delete markers, written after the undelete: retention keeps no WAL older than what it needs).
        expired = {m["Key"] for page in administrator.get_paginator("list_object_versions").paginate(
            Bucket="pgbackup-locked", Prefix="lab/") for m in page.get("DeleteMarkers", [])
            if m["IsLatest"] and m["LastModified"] >= undelete_started}
        assert set(names) - shown <= expired, sorted(set(names) - shown - expired)
        assert all("/archive/" in name for name in set(names) - shown), sorted(set(names) - shown)
        for secret in admin.values():
            assert secret not in out + undeleted.stderr
        assert lab.info(leader)["status"]["code"] == 0
        # The backups from before the deletion show again (those retention keeps after the new full), then the
        # new full backup.
        *shown_again, newest = backups(lab)
        assert newest["type"] == "full", newest
        assert newest["label"] not in labels_before, (newest, labels_before)
        assert shown_again, labels_before
        assert {b["label"] for b in shown_again} <= set(labels_before), (shown_again, labels_before)
        # Nothing written before the deletion or while archiving failed is missing from the repository.
        counts = lab.restored_copy_says(lab.replicas()[0], "--repo=1 --type=default",
                                        "SELECT batch || '=' || count(*) FROM immutable GROUP BY batch ORDER BY batch")
        assert counts.split() == ["after=50", "after-deletion=5", "before=100"]

        # The stolen key, in the order the command printed: the rotation now that the markers are gone (before,
        # its stanza-create stops with error 40 and the stolen key stays valid).
        assert "pulumi config set --path pgbackup:storage.keyGeneration 1 -s lab" in out, out
        assert out.index("removed") < out.index("keyGeneration 1")
        rotated_stack = copy.deepcopy(stack)
        rotated_stack["pgbackup:storage"]["keyGeneration"] = 1
        rotated = lab.apply(rotated_stack, env=admin)
        assert rotated["outputs"]["stanzaStatus"] == {"code": 0, "message": "ok"}
        assert node_key(lab, leader)[0] == rotated["outputs"]["accessKeyId"] != stolen[0]
        with pytest.raises(ClientError) as refused:
            intruder.list_objects_v2(Bucket="pgbackup-locked", Prefix="lab/")
        assert refused.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "AccessDenied"), refused.value.response
    finally:
        try:
            lab.apply(env=admin)  # the default stack again, while this S3 still answers
        finally:
            s3.close()
