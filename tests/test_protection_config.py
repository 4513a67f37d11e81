"""pgbackup:storage.objectLockDays and pgbackup:offsite: what the configuration accepts and refuses."""

from __future__ import annotations

from typing import Any

import pytest

from components.config import ConfigError, parse_offsite, parse_settings
from tests.harness import run_program, stack_config

LOCKED = {"objectLockDays": 14, "noncurrentVersionDays": 30}
PIN_2_55 = {"version": "2.55*"}
OFFSITE = {"provider": "s3", "endpoint": "s3.other.example.org", "region": "eu-west-1", "bucket": "pg-offsite"}


def config_with(storage: dict[str, Any] | None = None, **objects: Any) -> dict[str, Any]:
    base = stack_config()
    return stack_config(storage={**base["storage"], **(storage or {})}, **objects)


def test_object_lock_is_off_by_default() -> None:
    assert parse_settings(config_with())[0].object_lock_days == 0


def test_object_lock_days_with_pgbackrest_2_55() -> None:
    storage = parse_settings(config_with(LOCKED, pgbackrest=PIN_2_55))[0]
    assert (storage.object_lock_days, storage.noncurrent_version_days) == (14, 30)


@pytest.mark.parametrize("pin", [None, "2.45-1", "2.53*"])
def test_object_lock_before_pgbackrest_2_54_names_the_key_and_the_version(pin: str | None) -> None:
    config = config_with(LOCKED, **({"pgbackrest": {"version": pin}} if pin else {}))
    with pytest.raises(ConfigError) as refused:
        parse_settings(config)
    message = str(refused.value)
    assert message.startswith("pgbackup:storage.objectLockDays: needs pgBackRest 2.54 or later (repo-target-time")
    assert (repr(pin) if pin else "no pin: 2.45") in message


def test_noncurrent_versions_must_outlive_the_lock() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_settings(config_with({"objectLockDays": 60}, pgbackrest=PIN_2_55))
    assert str(refused.value) == (
        "pgbackup:storage.noncurrentVersionDays: 30 is shorter than objectLockDays 60: a version cannot expire while "
        "it is locked; set noncurrentVersionDays to 60 or more")
    assert parse_settings(config_with({"objectLockDays": 60, "noncurrentVersionDays": 60},
                                      pgbackrest=PIN_2_55))[0].object_lock_days == 60


@pytest.mark.parametrize("days", [-1, 3651, "7"])
def test_object_lock_days_out_of_range(days: Any) -> None:
    with pytest.raises(ConfigError, match=r"^pgbackup:storage\.objectLockDays: "):
        parse_settings(config_with({"objectLockDays": days}, pgbackrest=PIN_2_55))


def test_offsite_is_absent_unless_set() -> None:
    config = config_with(retention={"monthly": 12})
    assert parse_offsite(config, parse_settings(config)[3]) is None


def test_offsite_takes_the_storage_keys() -> None:
    config = config_with(retention={"monthly": 12}, offsite={**OFFSITE, "repoPath": "/archives"})
    offsite = parse_offsite(config, parse_settings(config)[3])
    assert offsite is not None
    assert (offsite.bucket, offsite.endpoint, offsite.uri_style, offsite.monthly_repo_path) == (
        "pg-offsite", "s3.other.example.org", "path", "/archives")


def test_offsite_needs_monthly_archives() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_settings(config_with(offsite=OFFSITE))
    assert str(refused.value) == ("pgbackup:offsite: holds repo2 (the monthly archives): set "
                                  "pgbackup:retention.monthly above 0, or remove pgbackup:offsite")


def test_offsite_errors_name_the_offsite_key() -> None:
    with pytest.raises(ConfigError, match=r"^pgbackup:offsite\.region: required for provider s3$"):
        parse_settings(config_with(retention={"monthly": 12}, offsite={**OFFSITE, "region": None}))
    with pytest.raises(ConfigError, match=r"^pgbackup:offsite\.objectLockDays: needs pgBackRest 2\.54"):
        parse_settings(config_with(retention={"monthly": 12}, offsite={**OFFSITE, "objectLockDays": 7}))


def test_an_existing_offsite_key_is_required_with_create_false() -> None:
    config = config_with(retention={"monthly": 12}, offsite={**OFFSITE, "create": False})
    with pytest.raises(Exception, match=r"pgbackup:offsiteAccessKeyId / pgbackup:offsiteSecretAccessKey: required "
                                        r"\(secrets\) when pgbackup:offsite\.create is false"):
        run_program(config)


def test_offsite_keys_without_create_false_are_refused() -> None:
    secrets = {"sshPrivateKey": "k", "offsiteAccessKeyId": "AKIA", "offsiteSecretAccessKey": "s"}
    with pytest.raises(Exception, match=r"pgbackup:offsiteAccessKeyId / pgbackup:offsiteSecretAccessKey: only used "
                                        r"with offsite\.create false"):
        run_program(config_with(), secrets=secrets)
