"""pgbackup:offsite: repo2 (the monthly archives) in its own bucket with its own key at another provider."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from components.config import parse_offsite, parse_settings
from components.context import repository_prices
from components.layout import PATHS
from components.providers import Price
from pgbackup_testkit.engine import unwrap
from tests.harness import SENTINELS, node_files, run_program, stack_config
from tests.test_hostile import valid_settings
from tests.test_rendered import option_lines, pgbackrest_judge

CA = (Path(__file__).parent / "data" / "storage-ca.pem").read_text()
OFFSITE = {"provider": "b2", "region": "eu-central-003", "bucket": "pg-offsite-archives", "repoPath": "/archives"}


def offsite_config(offsite: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    return stack_config(retention={"full": 4, "monthly": 12}, offsite=offsite or OFFSITE, **overrides)


def conf_options(run: Any, node: str = "pg1") -> dict[str, str]:
    return {k: v for _, k, v in option_lines(node_files(run, node)[PATHS.config]["content"])}


def test_repo2_lives_at_the_offsite_location_with_its_own_key() -> None:
    run = run_program(offsite_config())
    options = conf_options(run)
    offsite_key = run.named("offsite-key").inputs
    assert offsite_key["key_name"] == "pgbackup-test-main-offsite"
    assert offsite_key["name_prefix"] == "archives/"
    assert run.named("offsite-bucket").inputs["bucket_name"] == "pg-offsite-archives"
    assert {k: options[f"repo2-{k}"] for k in ("path", "s3-bucket", "s3-endpoint", "s3-region", "s3-uri-style")} == {
        "path": "/archives", "s3-bucket": "pg-offsite-archives", "s3-endpoint": "s3.eu-central-003.backblazeb2.com",
        "s3-region": "eu-central-003", "s3-uri-style": "host"}
    # The mocks give each key its resource's id: repo2's is the offsite key, repo1's the repository's.
    assert options["repo2-s3-key"] != options["repo1-s3-key"]
    assert options["repo2-s3-key"] == unwrap(run.outputs["offsiteAccessKeyId"])
    assert options["repo1-s3-key"] == run.outputs["accessKeyId"]
    assert options["repo2-s3-key-secret"] == unwrap(run.outputs["offsiteSecretAccessKey"])
    assert options["repo2-cipher-pass"] == options["repo1-cipher-pass"]
    assert (options["repo1-path"], options["repo1-s3-bucket"]) == ("/pgbackrest", "pg-backups")
    assert (options["repo2-retention-full"], options["repo2-retention-archive"]) == ("12", "1")


def test_the_offsite_configuration_passes_pgbackrests_parser(tmp_path: Path) -> None:
    run = run_program(offsite_config())
    for node in ("pg1", "pg2", "pg3"):
        assert pgbackrest_judge(node_files(run, node)[PATHS.config]["content"], "main", tmp_path) == [], node


def test_the_offsite_ca_is_its_own_file() -> None:
    offsite = {"provider": "s3", "endpoint": "offsite.example.org:9443", "region": "eu-west-1", "bucket": "pg-off",
               "caCert": CA, "verifyTls": True}
    run = run_program(offsite_config(offsite))
    files = node_files(run, "pg1")
    options = conf_options(run)
    assert options["repo2-storage-ca-file"] == PATHS.offsite_ca
    assert options["repo2-storage-port"] == "9443"
    assert files[PATHS.offsite_ca]["content"] == CA
    assert "repo1-storage-ca-file" not in options
    assert PATHS.storage_ca not in files


def test_outputs_gain_the_offsite_location_and_its_key_as_secrets() -> None:
    run = run_program(offsite_config())
    assert run.outputs["offsite"] == {"provider": "b2", "endpoint": "s3.eu-central-003.backblazeb2.com",
                                      "region": "eu-central-003", "bucket": "pg-offsite-archives",
                                      "repoPath": "/archives", "uriStyle": "host"}
    assert {"offsiteAccessKeyId", "offsiteSecretAccessKey"} <= run.secret_outputs
    assert "offsite" not in run.secret_outputs


def test_without_offsite_repo2_stays_nested_and_nothing_is_added() -> None:
    run = run_program(stack_config(retention={"full": 4, "monthly": 12}))
    options = conf_options(run)
    assert options["repo2-path"] == "/pgbackrest/monthly"
    assert options["repo2-s3-key"] == options["repo1-s3-key"]
    assert not [r.name for r in run.resources if r.name.startswith("offsite")]
    assert not {"offsite", "offsiteAccessKeyId", "offsiteSecretAccessKey"} & set(run.outputs)


def test_an_existing_offsite_bucket_and_key() -> None:
    secrets = {"sshPrivateKey": SENTINELS["sshPrivateKey"], "cipherPass": SENTINELS["cipherPass"],
               "offsiteAccessKeyId": "OFFSITEKEYID", "offsiteSecretAccessKey": "OFFSITE-SECRET-9f2"}
    run = run_program(offsite_config({**OFFSITE, "create": False}), secrets=secrets)
    options = conf_options(run)
    assert (options["repo2-s3-key"], options["repo2-s3-key-secret"]) == ("OFFSITEKEYID", "OFFSITE-SECRET-9f2")
    assert not [r.name for r in run.resources if r.name.startswith("offsite-") and r.name != "offsite"]
    for resource in run.resources:  # the given secret reaches no command or environment in the clear
        assert "OFFSITE-SECRET-9f2" not in json.dumps(resource.inputs.get("create", "")), resource.name


def test_storage_cost_prices_repo2_at_the_offsite_provider() -> None:
    config = offsite_config({**OFFSITE, "pricePerTbMonth": 1.5})
    settings = replace(valid_settings(config), offsite=parse_offsite(config, parse_settings(config)[3]))
    prices = repository_prices(settings)
    assert prices[1][0] == "s3"
    assert prices[2] == ("b2", Price(1.5, "configured (pgbackup:offsite.pricePerTbMonth)"))


def test_rotating_the_offsite_key_renames_only_it_and_reaches_every_node() -> None:
    """offsite.keyGeneration rotates repo2's key as storage.keyGeneration rotates repo1's: the offsite key
    resource gets a new name (created, pushed and proven before Pulumi deletes the old one), repo1's key stays,
    and each node's repo2-s3-key changes to the new key."""
    before = run_program(offsite_config())
    after = run_program(offsite_config({**OFFSITE, "keyGeneration": 1}))
    names_before = {r.name for r in before.resources}
    names_after = {r.name for r in after.resources}
    assert names_before - names_after == {"offsite-key"}
    assert names_after - names_before == {"offsite-key-g1"}
    assert after.named("offsite-key-g1").inputs["key_name"] == "pgbackup-test-main-offsite-g1"
    for node in ("pg1", "pg2", "pg3"):
        old, new = conf_options(before, node), conf_options(after, node)
        assert new["repo2-s3-key"] == unwrap(after.outputs["offsiteAccessKeyId"]) != old["repo2-s3-key"]
        assert new["repo1-s3-key"] == old["repo1-s3-key"]
    for step in ("stanza", "verify"):
        assert before.named(f"cluster-pg1-{step}").inputs["triggers"] != after.named(f"cluster-pg1-{step}").inputs[
            "triggers"]
