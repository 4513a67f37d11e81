"""Every unit's conditions, run for real (issue 26): a unit that must only run on the Patroni leader is started the
way systemd starts it (its ExecCondition= commands, in order: exit 0 runs the unit, 1 to 254 skips it cleanly,
anything else fails it) against a stand-in Patroni REST API answering 200 (leader), 503 (replica) or nothing."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from pgbackup_testkit.standins import Binaries, Patroni
from tests.harness import Run, node_files, run_program, script_of, stack_config

UNITS = "/etc/systemd/system/"


@pytest.fixture(scope="module")
def monthly_run() -> Run:
    return run_program(stack_config(retention={"full": 4, "monthly": 12}))


def directives(unit: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, as systemd reads it: comment lines (# or ;) ignored."""
    section, found = "", []
    for raw in unit.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def start(unit: str, api_url: str, local_url: str) -> str:
    """"run", "skipped" or "failed": the unit's ExecCondition= commands run as systemd runs them, with Patroni's
    URL of the node pointed at the stand-in."""
    for section, key, value in directives(unit):
        if section != "Service" or key != "ExecCondition":
            continue
        argv = shlex.split(value.lstrip("-@:+!"))
        assert api_url in argv, f"the condition asks another URL than the node's Patroni API {api_url}: {value}"
        argv = [local_url if arg == api_url else arg for arg in argv]
        code = subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode
        if code == 0:
            continue
        return "skipped" if 1 <= code <= 254 else "failed"
    return "run"


def leader_only(files: dict[str, dict[str, str]]) -> dict[str, str]:
    """The units that must run on the leader only: every backup, and the verification."""
    units = {path.removeprefix(UNITS): file["content"] for path, file in files.items()
             if path.startswith(UNITS) and path.endswith(".service")}
    return {name: text for name, text in units.items()
            if name.startswith("pgbackup-backup-") or name == "pgbackup-verify.service"}


def test_the_leader_only_units_are_the_backups_and_the_verification(monthly_run: Run) -> None:
    names = set(leader_only(node_files(monthly_run, "pg1")))
    assert {"pgbackup-backup-full.service", "pgbackup-backup-incr.service", "pgbackup-verify.service"} <= names
    assert any("repo=2" in text for text in leader_only(node_files(monthly_run, "pg1")).values()), \
        "no unit backs up repo2 (monthly archives): the configuration does not cover it"


@pytest.mark.parametrize(("status", "expected"), [(200, "run"), (503, "skipped"), (404, "skipped")])
def test_a_leader_only_unit_runs_on_the_leader_and_is_skipped_elsewhere(
        monthly_run: Run, patroni: Patroni, status: int, expected: str) -> None:
    patroni.status = status
    local = f"http://127.0.0.1:{patroni.port}/primary"
    for node in ("pg1", "pg2"):
        for name, text in leader_only(node_files(monthly_run, node)).items():
            before = len(patroni.requests)
            assert start(text, f"http://{node}.example.net:8008/primary", local) == expected, (node, name, status)
            assert patroni.requests[before:] == ["/primary"], (node, name, "the unit never asked Patroni")


def test_a_leader_only_unit_is_skipped_not_failed_when_patroni_does_not_answer(monthly_run: Run) -> None:
    patroni = Patroni()
    port = patroni.port
    patroni.close()  # nothing listens there now: curl cannot connect (exit 7)
    for name, text in leader_only(node_files(monthly_run, "pg1")).items():
        assert start(text, "http://pg1.example.net:8008/primary", f"http://127.0.0.1:{port}/primary") == "skipped", \
            name


def test_the_other_units_have_no_leader_condition(monthly_run: Run) -> None:
    """The drill chooses its node itself (every node runs its timer) and the metrics are collected everywhere: a
    leader condition on them would silence the replicas."""
    files = node_files(monthly_run, "pg1")
    for path, file in files.items():
        name = path.removeprefix(UNITS)
        if path.startswith(UNITS) and path.endswith(".service") and name not in leader_only(files):
            assert not [d for d in directives(file["content"]) if d[1] == "ExecCondition"], name


def commands(unit: str) -> list[tuple[str, str, list[str]]]:
    """(directive, the user systemd runs it as, argv) of every Exec*= of a unit: the unit's User= (root without
    one), root for a command prefixed "+" (full privileges)."""
    found = [d for d in directives(unit) if d[0] == "Service"]
    user = next((value for _, key, value in found if key == "User"), "root")
    result = []
    for _, key, value in found:
        if key.startswith("Exec"):
            prefixes = value[:len(value) - len(value.lstrip("-@:+!|"))]
            result.append((key, "root" if "+" in prefixes else user, shlex.split(value[len(prefixes):])))
    return result


def test_the_verification_runs_as_postgres_and_publishes_as_root_whatever_its_result(monthly_run: Run) -> None:
    """postgres cannot write node_exporter's directory (prometheus's): `publish` runs as root, which writes there as
    the directory's owner (rootsafe); the verification itself never runs as root."""
    unit = node_files(monthly_run, "pg1")[f"{UNITS}pgbackup-verify.service"]["content"]
    script = "/usr/local/lib/pgbackup/pgbackup-verify"
    runs = [(key, user, argv) for key, user, argv in commands(unit) if script in argv]
    assert ("ExecStart", "postgres") in [(key, user) for key, user, argv in runs if argv[-1] == script]
    assert [(key, user) for key, user, argv in runs if argv[-1] == "publish"] == [("ExecStopPost", "root")]


def test_the_schedule_step_enables_and_starts_every_timer_the_node_has(monthly_run: Run, tmp_path: Path) -> None:
    """Run under bash as the step runs, with a stand-in systemctl: each timer of the node's files is enabled and
    started now (enabled only, it would wait for the next boot: no backup until then)."""
    bins = Binaries(tmp_path / "bin", tmp_path / "standin", ("systemctl",))
    result = subprocess.run(["bash", "-c", script_of(monthly_run.named("cluster-pg1-schedule")), "pgbackup-schedule"],
                            capture_output=True, text=True, env=bins.env(), timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    timers = {path.removeprefix(UNITS) for path in node_files(monthly_run, "pg1")
              if path.startswith(UNITS) and path.endswith(".timer")}
    started = {call[-1] for call in bins.calls("systemctl") if call[1:4] == ["enable", "--now", "--quiet"]}
    assert timers, "no timer in the node's files"
    assert started == timers
