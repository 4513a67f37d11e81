"""The consumer example, fed with the outputs the real pgbackup program produces under mocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest

from pgbackup_testkit.harness import SENTINELS, run_program, stack_config
from pgbackup_testkit.mockrun import evaluate

CONSUMER = Path(__file__).resolve().parent / "__main__.py"


class StackReferenceMocks(pulumi.runtime.Mocks):
    def __init__(self, outputs: dict[str, Any]) -> None:
        self.outputs = outputs
        self.referenced: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        assert args.typ == "pulumi:pulumi:StackReference"
        self.referenced.append(args.inputs["name"])
        return args.name, {"name": args.name, "outputs": self.outputs}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


# The pgbackup stack's name as each kind of backend spells it (Pulumi.yaml, docs/deploying.md "First deployment").
STACK_NAMES = {"Pulumi Cloud": "myorg/pgbackup/prod", "self-managed": "organization/pgbackup/prod"}


def run_consumer(outputs: dict[str, Any], now: str, backup_stack: str = STACK_NAMES["Pulumi Cloud"],
                 mocks: StackReferenceMocks | None = None) -> tuple[dict[str, Any], set[str]]:
    return evaluate(CONSUMER, mocks or StackReferenceMocks(outputs), project="pgbackup-consumer", stack="test",
                    config={"pgbackup-consumer:backupStack": backup_stack, "pgbackup-consumer:now": now},
                    secret_keys=[])


def pgbackup_outputs() -> dict[str, Any]:
    storage = {"provider": "minio", "endpoint": "minio.lan:9000", "bucket": "pg-backups"}
    outputs: dict[str, Any] = json.loads(json.dumps(run_program(stack_config(storage=storage)).outputs))
    return outputs


def test_consumer_reads_the_contract() -> None:
    values, secret = run_consumer(pgbackup_outputs(), now="2026-11-23T12:00:00+00:00")
    assert values["backupHealthy"] is True
    assert values["leader"] == "pg1"
    assert values["stanza"] == "main"
    assert "repo1-s3-endpoint=minio.lan\n" in values["restoreConfig"]
    assert "repo1-storage-port=9000\n" in values["restoreConfig"]
    assert f"repo1-cipher-pass={SENTINELS['cipherPass']}" in values["restoreConfig"]
    assert secret == {"restoreConfig"}


def test_consumer_flags_an_old_backup() -> None:
    values, _ = run_consumer(pgbackup_outputs(), now="2026-11-30T12:00:00+00:00")
    assert values["backupHealthy"] is False


@pytest.mark.parametrize("backend", sorted(STACK_NAMES))
def test_consumer_references_the_stack_by_its_backend_name(backend: str) -> None:
    """Both documented forms reach the StackReference as written; the Pulumi.yaml shows each."""
    mocks = StackReferenceMocks(pgbackup_outputs())
    values, _ = run_consumer(mocks.outputs, now="2026-11-23T12:00:00+00:00", backup_stack=STACK_NAMES[backend],
                             mocks=mocks)
    assert mocks.referenced == [STACK_NAMES[backend]]
    assert values["stanza"] == "main"
    assert STACK_NAMES[backend] in (Path(__file__).parent / "Pulumi.yaml").read_text()
