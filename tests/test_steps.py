"""The remote steps: secrets never in a command, order, parallelism, determinism, and what re-runs."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from pgbackup_cli.remote import ROOTSAFE
from tests.harness import (
    SENTINELS,
    Run,
    depends_on,
    depth,
    host_key,
    is_wrapped_secret,
    node_config,
    node_files,
    run_program,
    script_of,
    stack_config,
)

STEPS = ["install", "files", "patroni", "stanza", "archiving", "verify", "schedule"]


def sentinel_forms() -> list[str]:
    """Each sentinel, plus its base64 forms at the three alignments (a secret may travel encoded)."""
    forms = []
    for value in SENTINELS.values():
        core = value.split("\n")[1] if "\n" in value else value
        forms.append(core)
        for pad in range(3):
            encoded = base64.b64encode(b"x" * pad + core.encode()).decode()
            forms.append(encoded[4:-4])
    return forms


def unmarked_strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every string in `value` that is not inside a secret envelope."""
    if is_wrapped_secret(value):
        return []
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in unmarked_strings(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [item for i, v in enumerate(value) for item in unmarked_strings(v, f"{path}[{i}]")]
    return [(path, value)] if isinstance(value, str) else []


@pytest.fixture(scope="module")
def run() -> Run:
    return run_program(stack_config())


def test_every_node_gets_every_step(run: Run) -> None:
    names = {c.name for c in run.commands}
    assert names == {f"cluster-{n}-{s}" for n in ("pg1", "pg2", "pg3") for s in STEPS}


def test_no_secret_in_any_command_string_or_environment(run: Run) -> None:
    forms = sentinel_forms()
    for command in run.commands:
        for key in ("create", "update", "delete"):
            text = command.inputs.get(key) or ""
            assert not any(f in text for f in forms), f"{command.name}.{key} holds a secret"
        assert not command.inputs.get("environment"), f"{command.name} uses environment="
        assert command.inputs["addPreviousOutputInEnv"] is False


def test_secrets_only_in_marked_state(run: Run) -> None:
    """Anywhere a sentinel (or its base64) appears in what the engine stores, it is inside a secret."""
    forms = sentinel_forms()
    for resource in run.resources:
        for path, text in unmarked_strings(resource.raw_inputs):
            assert not any(f in text for f in forms), f"{resource.name}{path} stores a secret unmarked"


def test_secrets_travel_on_stdin_of_the_files_step(run: Run) -> None:
    files = node_files(run, "pg1")
    config = files["/etc/pgbackrest/pgbackrest.conf"]
    # Root-owned, readable by pgBackRest through its group: postgres cannot replace or relink them.
    assert (config["mode"], config["owner"], config["group"], config["secret"]) == ("0640", "root", "postgres", "1")
    assert f"repo1-s3-key-secret={SENTINELS['providerSecret']}" in config["content"]
    assert f"repo1-cipher-pass={SENTINELS['cipherPass']}" in config["content"]
    key = files["/etc/pgbackrest/tls/node.key"]
    assert (key["mode"], key["owner"], key["group"], key["secret"]) == ("0640", "root", "postgres", "1")
    assert "SENTINEL-TLS-KEY" in key["content"]
    assert is_wrapped_secret(run.named("cluster-pg1-files").raw_inputs["stdin"])


def test_ssh_connection_key_is_secret(run: Run) -> None:
    for command in run.commands:
        raw = command.raw_inputs["connection"]
        assert is_wrapped_secret(raw) or is_wrapped_secret(raw.get("privateKey")), command.name


def test_scripts_are_strict_bash(run: Run) -> None:
    for command in run.commands:
        for key in ("create", "delete"):
            if command.inputs.get(key):
                script = script_of(command, key)
                assert "set -Eeuo pipefail" in script.splitlines()[1], command.name
                assert "failed on node" in script


def test_dependency_order(run: Run) -> None:
    nodes = ("pg1", "pg2", "pg3")
    barriers = {b.name: depends_on(run, b.name) for b in run.of_type("command:local:Command")}
    assert barriers == {
        "cluster-files-ready": {f"cluster-{m}-files" for m in nodes},
        "cluster-stanza-ready": {f"cluster-{m}-{s}" for m in nodes for s in ("stanza", "patroni")},
        "cluster-archiving-ready": {f"cluster-{m}-archiving" for m in nodes},
        "cluster-verified": {f"cluster-{m}-verify" for m in nodes},
    }
    for barrier in run.of_type("command:local:Command"):
        assert not any(barrier.inputs.get(k) for k in ("create", "update", "delete")), "a barrier runs nothing"
    for n in nodes:
        assert depends_on(run, f"cluster-{n}-files") == {f"cluster-{n}-install"}
        assert depends_on(run, f"cluster-{n}-patroni") == {f"cluster-{n}-files"}
        assert depends_on(run, f"cluster-{n}-stanza") == {"cluster-files-ready"}
        assert depends_on(run, f"cluster-{n}-archiving") == {"cluster-stanza-ready"}
        assert depends_on(run, f"cluster-{n}-verify") == {"cluster-archiving-ready"}
        assert depends_on(run, f"cluster-{n}-schedule") == {"cluster-verified", f"cluster-{n}-files"}
    # Under mocks a resource registers only after what it depends on: the order is a deployment order.
    order = [r.name for r in run.resources]
    for n in nodes:
        positions = [order.index(f"cluster-{n}-{s}") for s in STEPS]
        assert positions == sorted(positions), n
        assert max(order.index(f"cluster-{m}-archiving") for m in nodes) < order.index(f"cluster-{n}-verify")


def nodes(count: int) -> list[dict[str, str]]:
    return [node_config(f"pg{i}") for i in range(1, count + 1)]


def test_sequential_depth_does_not_grow_with_nodes() -> None:
    depths = {count: depth(run_program(stack_config(cluster={"stanza": "main", "nodes": nodes(count)})))
              for count in (2, 3, 8)}
    # install, files, patroni-local (stanza beside it), archiving, verify, schedule
    assert set(depths.values()) == {6}, depths


def command_inputs(run: Run) -> dict[str, dict[str, Any]]:
    return {c.name: {k: c.inputs.get(k) for k in ("create", "delete", "stdin", "triggers", "connection")}
            for c in run.commands}


def test_two_evaluations_give_identical_inputs(run: Run) -> None:
    assert command_inputs(run_program(stack_config())) == command_inputs(run)


def changed_steps(before: Run, after: Run) -> set[str]:
    a, b = command_inputs(before), command_inputs(after)
    return {name.split("-", 2)[2] for name in a if a[name] != b[name]}


def test_retention_change_reruns_only_what_depends_on_it(run: Run) -> None:
    after = run_program(stack_config(retention={"full": 6}))
    assert changed_steps(run, after) == {"files", "stanza", "verify"}


def test_schedule_change_reruns_only_files_and_schedule(run: Run) -> None:
    after = run_program(stack_config(schedule={"full": "Sat *-*-* 03:00:00"}))
    assert changed_steps(run, after) == {"files", "schedule"}


def test_version_pin_reruns_only_install(run: Run) -> None:
    after = run_program(stack_config(pgbackrest={"version": "2.45-1"}))
    assert changed_steps(run, after) == {"install"}


def test_destroy_disables_timers_and_keeps_everything_else(run: Run) -> None:
    with_delete = [c.name for c in run.commands if c.inputs.get("delete")]
    assert sorted(with_delete) == [f"cluster-{n}-schedule" for n in ("pg1", "pg2", "pg3")]
    script = script_of(run.named("cluster-pg1-schedule"), "delete")
    assert "systemctl disable --now" in script
    # The only file removed is the Consul service definition (pgbackup:monitoring.consul), when there is one.
    consul = "/etc/consul.d/pgbackrest.json"
    own = script.replace(ROOTSAFE, "")  # the root-safe helper every script starts with
    assert ROOTSAFE in script
    assert [line.strip() for line in own.splitlines() if "rm " in line] == [f"rm -f {consul}"]
    assert "pgbackrest" not in script.replace(consul, "").replace("pgbackup", "")


def test_ssh_host_key_is_pinned_into_every_connection() -> None:
    cluster = {"stanza": "main", "nodes": [
        node_config("pg1", "pg1.lan", hostKey=host_key("pg1") + " root@pg1"),  # ssh-keyscan's comment is dropped
        node_config("pg2", "pg2.lan", port=2222, user="admin")]}
    run = run_program(stack_config(cluster=cluster))
    for command in run.commands:
        name = command.name.split("-")[1]
        assert command.inputs["connection"]["hostKey"] == host_key(name), command.name
    second = run.named("cluster-pg2-install").inputs["connection"]
    assert (second["host"], second["port"], second["user"]) == ("pg2.lan", 2222, "admin")
