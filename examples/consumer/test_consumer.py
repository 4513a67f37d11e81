"""The consumer example, fed with the outputs the real pgbackup program produces under mocks."""

from __future__ import annotations

import asyncio
import json
import runpy
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import settings as pulumi_settings

from tests.harness import SENTINELS, run_program, stack_config

CONSUMER = Path(__file__).resolve().parent / "__main__.py"


class StackReferenceMocks(pulumi.runtime.Mocks):
    def __init__(self, outputs: dict[str, Any]) -> None:
        self.outputs = outputs

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        assert args.typ == "pulumi:pulumi:StackReference"
        return args.name, {"name": args.name, "outputs": self.outputs}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


def run_consumer(outputs: dict[str, Any], now: str) -> tuple[dict[str, Any], set[str]]:
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(StackReferenceMocks(outputs), project="pgbackup-consumer", stack="test", preview=False)
    pulumi.runtime.set_all_config({"pgbackup-consumer:backupStack": "org/pgbackup/prod",
                                   "pgbackup-consumer:now": now})
    values: dict[str, Any] = {}
    secret: set[str] = set()

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def body() -> Any:
        runpy.run_path(str(CONSUMER), run_name="__main__")
        exported = dict(getattr(pulumi_settings.get_root_resource(), "outputs", {}))

        async def collect() -> None:
            for key, value in exported.items():
                out = pulumi.Output.from_input(value)
                values[key] = await out.future()
                if await out.is_secret():
                    secret.add(key)

        return pulumi.Output.from_input(asyncio.ensure_future(collect()))

    body()
    return values, secret


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
