"""The check commands (Nagios exit codes) run by python against fabricated metrics files, and the Consul
service definition checked against Consul's documented fields. No Consul agent can be installed here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import Run, node_files, run_program, script_of, stack_config

CHECK = "/usr/local/lib/pgbackup/pgbackup-check"
CONSUL = "/etc/consul.d/pgbackrest.json"
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
HOUR = 3600

# Consul's documented fields. Service definition reference
# (https://developer.hashicorp.com/consul/docs/reference/service): `name` required.
SERVICE_FIELDS = {"name", "id", "address", "port", "ports", "tags", "meta", "tagged_addresses", "socket_path",
                  "enable_tag_override", "check", "checks", "kind", "proxy", "connect", "native", "sidecar_service",
                  "locality", "weights", "token", "namespace", "partition"}
# Health check configuration reference (https://developer.hashicorp.com/consul/docs/agent/checks): a script
# check is `args` + `interval` (the old `script` field is gone, so it is not listed); `name` required.
CHECK_FIELDS = {"name", "id", "notes", "interval", "timeout", "ttl", "http", "header", "method", "body",
                "disable_redirects", "tcp", "tcp_use_tls", "udp", "os_service", "tls_server_name", "tls_skip_verify",
                "grpc", "grpc_use_tls", "h2ping", "h2ping_use_tls", "alias_node", "alias_service",
                "docker_container_id", "shell", "args", "success_before_passing", "failures_before_warning",
                "failures_before_critical", "deregister_critical_service_after", "status", "output_max_size",
                "service_id"}
DURATION = r"^\d+(ms|s|m|h)$"


@pytest.fixture(scope="module")
def consul_run() -> Run:
    return run_program(stack_config(monitoring={"consul": True}, retention={"full": 4, "monthly": 12}))


@pytest.fixture(scope="module")
def check_script(consul_run: Run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = node_files(consul_run, "pg1")
    assert files[CHECK]["mode"] == "0755"
    path = tmp_path_factory.mktemp("check") / "pgbackup-check"
    path.write_text(files[CHECK]["content"])
    return path


def prom(now: float, *, leader: bool = True, collected_ago: float = 60, repo1_age: float = 3 * HOUR,
         repo2_age: float | None = 5 * 86400, status: int = 0, count: int = 3, queue: int = 0,
         failing: int = 0, archived_ago: float | None = 30, failures: int = 0) -> str:
    """A metrics file as pgbackup-metrics writes it (stanza "main")."""
    lab = 'stanza="main"'
    lines = [f"pgbackrest_is_leader{{{lab}}} {int(leader)}", f"pgbackrest_stanza_status{{{lab}}} {status}",
             f"pgbackrest_backup_count{{{lab}}} {count}"]
    if count:
        lines.append(f'pgbackrest_last_backup_timestamp_seconds{{{lab},type="full",repo="1"}} {int(now - 50 * HOUR)}')
        lines.append(f'pgbackrest_last_backup_timestamp_seconds{{{lab},type="incr",repo="1"}} {int(now - repo1_age)}')
        if repo2_age is not None:
            lines.append(f'pgbackrest_last_backup_timestamp_seconds{{{lab},type="full",repo="2"}} {int(now - repo2_age)}')
    lines.append(f"pgbackrest_archive_queue_bytes{{{lab}}} {queue}")
    if leader and archived_ago is not None:
        lines += [f"pgbackrest_archive_last_archived_timestamp_seconds{{{lab}}} {int(now - collected_ago - archived_ago)}",
                  f"pgbackrest_archive_failed_total{{{lab}}} {failures}",
                  f"pgbackrest_archive_check_failed{{{lab}}} {failing}"]
    lines.append(f"pgbackrest_metrics_collected_timestamp_seconds{{{lab}}} {int(now - collected_ago)}")
    return "\n".join(lines) + "\n"


def run_check(script: Path, command: str, metrics: str | None, tmp_path: Path) -> tuple[int, str]:
    path = tmp_path / "pgbackrest.prom"
    if metrics is not None:
        path.write_text(metrics)
    result = subprocess.run([sys.executable, str(script), command], capture_output=True, text=True, check=False,
                            env={**os.environ, "PGBACKUP_METRICS": str(path)})
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1, result.stdout
    return result.returncode, result.stdout.strip()


GiB = 1024**3


@pytest.mark.parametrize(("case", "command", "metrics", "code", "says"), [
    ("healthy", "backup-age", {}, OK, "BACKUP-AGE OK: repo1: newest backup 3.0 h old (limit 26.0 h); repo2: newest"),
    ("healthy", "wal-archive", {}, OK, "WAL-ARCHIVE OK: last WAL archived 30 s before collection; backlog 0 MiB"),
    ("stale backup", "backup-age", {"repo1_age": 27 * HOUR}, CRITICAL,
     "CRITICAL: repo1: newest backup 27.0 h old (limit 26.0 h)"),
    ("old monthly archive", "backup-age", {"repo2_age": 40 * 86400}, WARNING,
     "WARNING: repo2: newest backup 40.0 d old (limit 36.0 d)"),
    ("no backup", "backup-age", {"count": 0}, CRITICAL, "CRITICAL: no backup in the repository"),
    ("info failed", "backup-age", {"status": 99, "count": 0}, UNKNOWN, "UNKNOWN: pgbackrest info failed"),
    ("stanza error", "backup-age", {"status": 2}, WARNING, "WARNING: pgbackrest info reports status 2"),
    ("archive failing", "wal-archive", {"failing": 1, "failures": 4, "queue": 3 * 16 * 1024**2}, CRITICAL,
     "CRITICAL: the last WAL archive attempt failed (4 failures since the statistics reset)"),
    ("archive stalled", "wal-archive", {"queue": 16 * 1024**2, "archived_ago": 600}, CRITICAL,
     "CRITICAL: 16 MiB of WAL waiting and nothing archived for 10 min (limit 5 min)"),
    ("quiet, nothing waiting", "wal-archive", {"archived_ago": 6 * HOUR}, OK, "OK: last WAL archived 6.0 h"),
    ("queue near the limit", "wal-archive", {"queue": 3 * GiB}, CRITICAL,
     "CRITICAL: WAL backlog 3072 MiB is past half of archive-push-queue-max (4GiB): beyond it WAL is dropped"),
    ("queue below half", "wal-archive", {"queue": GiB}, OK, "OK: last WAL archived"),
    ("replica", "backup-age", {"leader": False, "repo1_age": 27 * HOUR}, OK, "BACKUP-AGE OK: not the leader"),
    ("replica", "wal-archive", {"leader": False}, OK, "WAL-ARCHIVE OK: not the leader"),
    ("replica with a backlog", "wal-archive", {"leader": False, "queue": 3 * GiB}, CRITICAL,
     "CRITICAL: WAL backlog 3072 MiB is past half"),
    ("pg_stat_archiver unread", "wal-archive", {"archived_ago": None}, UNKNOWN,
     "UNKNOWN: the collector could not read pg_stat_archiver on the leader"),
    ("collector stale", "backup-age", {"collected_ago": 31 * 60}, UNKNOWN, "UNKNOWN: metrics are 31 min old"),
    ("collector stale", "wal-archive", {"collected_ago": 31 * 60, "leader": False}, UNKNOWN,
     "UNKNOWN: metrics are 31 min old (limit 30 min)"),
    # Each threshold at its edge (issue 26): at the limit still OK, just past it not (ages: a minute either side,
    # as the check reads the clock; what the collector wrote, to the byte or second).
    ("backup at the limit", "backup-age", {"repo1_age": 26 * HOUR - 60}, OK, "BACKUP-AGE OK"),
    ("backup just past", "backup-age", {"repo1_age": 26 * HOUR + 60}, CRITICAL, "CRITICAL: repo1: newest backup"),
    ("monthly at the limit", "backup-age", {"repo2_age": 36 * 86400 - 60}, OK, "BACKUP-AGE OK"),
    ("monthly just past", "backup-age", {"repo2_age": 36 * 86400 + 60}, WARNING, "WARNING: repo2: newest backup"),
    ("queue at half", "wal-archive", {"queue": 2 * GiB}, OK, "WAL-ARCHIVE OK"),
    ("queue a byte past half", "wal-archive", {"queue": 2 * GiB + 1}, CRITICAL, "CRITICAL: WAL backlog 2048 MiB"),
    ("archived at the limit", "wal-archive", {"queue": 16 * 1024**2, "archived_ago": 300}, OK, "WAL-ARCHIVE OK"),
    ("archived a second past", "wal-archive", {"queue": 16 * 1024**2, "archived_ago": 301}, CRITICAL,
     "CRITICAL: 16 MiB of WAL waiting and nothing archived"),
    ("collector at the limit", "backup-age", {"collected_ago": 30 * 60 - 60}, OK, "BACKUP-AGE OK"),
    ("collector just past", "backup-age", {"collected_ago": 30 * 60 + 60}, UNKNOWN, "UNKNOWN: metrics are 31 min old"),
    ("missing file", "backup-age", None, UNKNOWN, "UNKNOWN: no metrics to read (No such file or directory"),
    ("missing file", "wal-archive", None, UNKNOWN, "is pgbackup-metrics.timer running?"),
])
def test_check_exit_code_and_message(check_script: Path, tmp_path: Path, case: str, command: str,
                                     metrics: dict[str, object] | None, code: int, says: str) -> None:
    text = None if metrics is None else prom(time.time(), **metrics)  # type: ignore[arg-type]
    got, message = run_check(check_script, command, text, tmp_path)
    assert (got, says in message) == (code, True), f"{case}: {got} {message}"
    assert message.startswith(f"PGBACKREST {command.upper()} {('OK', 'WARNING', 'CRITICAL', 'UNKNOWN')[code]}: ")


def test_another_stanzas_metrics_are_not_read(check_script: Path, tmp_path: Path) -> None:
    text = prom(time.time()).replace('stanza="main"', 'stanza="other"')
    assert run_check(check_script, "backup-age", text, tmp_path) == (
        UNKNOWN, f"PGBACKREST BACKUP-AGE UNKNOWN: {tmp_path / 'pgbackrest.prom'} holds no metrics of stanza main")


def test_unknown_command_is_unknown(check_script: Path, tmp_path: Path) -> None:
    code, message = run_check(check_script, "backup", prom(time.time()), tmp_path)
    assert code == UNKNOWN
    assert "usage: pgbackup-check backup-age | wal-archive" in message


def test_checks_and_alert_rules_share_their_thresholds() -> None:
    """One place: schedule.maxBackupAgeHours and archivePushQueueMax move the rules and the checks alike."""
    run = run_program(stack_config(schedule={"maxBackupAgeHours": 2}, pgbackrest={"archivePushQueueMax": "1GiB"}))
    check = node_files(run, "pg1")[CHECK]["content"]
    rules = run.outputs["alertRules"]
    assert "BACKUP_MAX_AGE = 7200\n" in check
    assert "> 7200\n" in rules
    assert f"QUEUE_ALERT = {GiB // 2}\n" in check
    assert f"> {GiB // 2}\n" in rules
    assert "MONTHLY_MAX_AGE = 0\n" in check  # no monthly archives: neither a rule nor a check
    assert "PgBackRestMonthlyArchiveTooOld" not in rules
    assert "ARCHIVE_MAX_AGE = 300\n" in check
    assert "nothing was archived for 300 s" in rules


def test_consul_service_uses_documented_fields_only(consul_run: Run) -> None:
    files = node_files(consul_run, "pg2")
    assert files[CONSUL]["mode"] == "0644"
    definition = json.loads(files[CONSUL]["content"])
    assert set(definition) == {"service"}
    service = definition["service"]
    assert set(service) <= SERVICE_FIELDS
    assert service["name"] == "pgbackrest"
    assert service["port"] == 8432  # pgBackRest's TLS server, as the design registers it
    checks = service["checks"]
    for check in checks:
        assert set(check) <= CHECK_FIELDS, set(check) - CHECK_FIELDS
        assert {"name", "args", "interval"} <= set(check)  # a script check: args with an interval
        assert "script" not in check
        assert all(isinstance(arg, str) for arg in check["args"])
        for key in ("interval", "timeout"):
            assert re.match(DURATION, check[key]), check[key]
    assert {c["id"]: (c["args"], c["interval"]) for c in checks} == {
        "pgbackrest-backup-age": ([CHECK, "backup-age"], "1h"),
        "pgbackrest-wal-archive": ([CHECK, "wal-archive"], "10m"),
        "pgbackrest-standby": ([CHECK, "standby"], "5m"),
    }
    assert len({c["name"] for c in checks}) == 3


def test_consul_field_judge_refuses_the_design_documents_script_check() -> None:
    design = {"id": "pgbackrest-backup-age", "name": "pgBackRest Backup Age",
              "script": "/usr/local/bin/check-pgbackrest-backup", "interval": "1h"}
    assert set(design) - CHECK_FIELDS == {"script"}


def test_consul_definition_is_reloaded_or_removed(consul_run: Run) -> None:
    assert node_files(consul_run, "pg1")[CONSUL]["actions"] == "consul-reload"
    files_step = script_of(consul_run.named("cluster-pg1-files"))
    assert "if pending consul-reload; then\n  consul_reload\n" in files_step
    assert "systemctl reload consul.service" in files_step
    off = run_program(stack_config(retention={"full": 4, "monthly": 12}))
    # Off: not in the manifest, so the files step removes the one it installed (and does its action: reload).
    assert CONSUL not in node_files(off, "pg1")
    assert CHECK in node_files(off, "pg1")  # the checks are there for any Nagios-style monitor
    # On destroy it goes too: its checks would only report stale metrics.
    destroy = script_of(off.named("cluster-pg1-schedule"), "delete")
    assert f"rm -f {CONSUL}\n" in destroy
    assert "consul_reload\n" in destroy
    # Turning it on or off changes the files' manifest and the schedule step's units digest, nothing else.
    on, off_commands = ({c.name: (c.inputs["create"], c.inputs.get("stdin")) for c in r.commands}
                        for r in (consul_run, off))
    changed = {name.split("-", 2)[2] for name in on if on[name] != off_commands[name]}
    assert changed == {"files", "schedule"}


def consul_reload_function(run: Run) -> str:
    script = script_of(run.named("cluster-pg1-files"))
    start = script.index("consul_reload() {")
    return script[start:script.index("\n}\n", start) + 3]


@pytest.mark.parametrize(("agent", "says"), [
    ("none", "pgbackup: warning: node pg1: no Consul agent to reload (consul.service not active, `consul reload` "
             "failed or absent): /etc/consul.d/pgbackrest.json is read when the agent starts"),
    ("systemd", "consul: agent reloaded (/etc/consul.d/pgbackrest.json)"),
    ("cli", "consul: agent reloaded (/etc/consul.d/pgbackrest.json)"),
])
def test_consul_reload_with_and_without_an_agent(consul_run: Run, tmp_path: Path, agent: str, says: str) -> None:
    """The files step's consul_reload, run here with stand-in systemctl and consul commands (no Consul agent
    can be installed here): without an agent a warning and exit 0, never a failed apply."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    active = 0 if agent == "systemd" else 3  # systemctl is-active: 3 = inactive
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "systemctl $*" >>{calls}\n'
                                       f'[ "$1" = is-active ] && exit {active}\nexit 0\n')
    if agent == "cli":
        (bin_dir / "consul").write_text(f'#!/bin/sh\necho "consul $*" >>{calls}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    result = subprocess.run(["bash", "-c", "set -Eeuo pipefail\n" + consul_reload_function(consul_run) +
                             "consul_reload\n"], capture_output=True, text=True, check=False,
                            env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert says in (result.stderr if agent == "none" else result.stdout)
    expected = {"none": "systemctl is-active --quiet consul.service\n",
                "systemd": "systemctl is-active --quiet consul.service\nsystemctl reload consul.service\n",
                "cli": "systemctl is-active --quiet consul.service\nconsul reload\n"}[agent]
    assert calls.read_text() == expected
