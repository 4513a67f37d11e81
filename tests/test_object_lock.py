"""objectLockDays: the bucket's Object Lock, set and checked by components/objectlock.py, and what the node's key
can do on a locked repository, against moto with authentication (it evaluates pgbackup's IAM policy and enforces
the lock: a versioned delete of a locked object is refused with AccessDenied)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pulumi
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto import settings as moto_settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam.access_control import IAMPolicy, PermissionResult

from components import objectlock
from components.objectlock import ObjectLockError, Target
from components.storage import repository_policy
from pgbackup_testkit.engine import unwrap
from tests.harness import is_wrapped_secret, run_program, stack_config
from tests.test_storage import ADMIN_POLICY, BUCKET, PREFIX, WAL, _client, _code, _user

DAYS = 7


@pytest.fixture
def locked_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """(administrator, node's scoped key) on a bucket created with Object Lock and a COMPLIANCE default retention
    of DAYS, as pgbackup creates it. Every request after the set-up calls is signed and checked."""
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 8)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    with mock_aws():
        setup = _client("s3")
        setup.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        setup.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": DAYS}}})
        iam = _client("iam")
        admin = _user(iam, "admin", ADMIN_POLICY)
        node = _user(iam, "pgbackrest", repository_policy(BUCKET, PREFIX, object_lock=True))
        assert ActionAuthenticatorMixin.request_count == 8
        yield admin, node


def test_a_new_version_is_locked_for_the_configured_days(locked_s3: tuple[Any, Any]) -> None:
    admin, node = locked_s3
    node.put_object(Bucket=BUCKET, Key=WAL, Body=b"wal")
    head = admin.head_object(Bucket=BUCKET, Key=WAL)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    until = head["ObjectLockRetainUntilDate"] - datetime.now(UTC)
    assert timedelta(days=DAYS - 1) < until <= timedelta(days=DAYS)


def test_the_node_key_cannot_remove_a_locked_version_nor_change_the_lock(locked_s3: tuple[Any, Any]) -> None:
    admin, node = locked_s3
    first = node.put_object(Bucket=BUCKET, Key=WAL, Body=b"wal")["VersionId"]
    assert node.delete_object(Bucket=BUCKET, Key=WAL)["DeleteMarker"] is True  # what an intruder can do

    refused = []
    attempts = {
        "delete the version": lambda: node.delete_object(Bucket=BUCKET, Key=WAL, VersionId=first),
        "delete it bypassing governance": lambda: node.delete_object(Bucket=BUCKET, Key=WAL, VersionId=first,
                                                                     BypassGovernanceRetention=True),
        "remove the default retention": lambda: node.put_object_lock_configuration(
            Bucket=BUCKET, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}),
        "shorten the default retention": lambda: node.put_object_lock_configuration(
            Bucket=BUCKET, ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}}),
    }
    # Per-version retention and legal holds (PutObjectRetention, PutObjectLegalHold, and PutObject with lock headers,
    # which AWS authorizes as s3:PutObjectRetention) are not authorized by moto's S3: see the next test.
    for what, attempt in attempts.items():
        try:
            attempt()
        except ClientError as err:
            refused.append((what, str(err.response["Error"]["Code"])))
        else:
            refused.append((what, "allowed"))
    assert refused == [(what, "AccessDenied") for what in attempts]
    assert node.get_object(Bucket=BUCKET, Key=WAL, VersionId=first)["Body"].read() == b"wal"
    assert admin.get_object_lock_configuration(Bucket=BUCKET)["ObjectLockConfiguration"]["Rule"] == {
        "DefaultRetention": {"Mode": "COMPLIANCE", "Days": DAYS, "Years": 0}}


@pytest.mark.parametrize("action", ["s3:PutObjectRetention", "s3:PutObjectLegalHold", "s3:BypassGovernanceRetention",
                                    "s3:PutBucketObjectLockConfiguration", "s3:DeleteObjectVersion"])
def test_the_policy_denies_every_change_of_a_lock(action: str) -> None:
    """moto's own IAM evaluator on pgbackup's policy: an explicit Deny (no Allow added later can lift it) on the
    repository's objects and the bucket."""
    policy = IAMPolicy(json.dumps(repository_policy(BUCKET, PREFIX, object_lock=True)))
    for resource in (f"arn:aws:s3:::{BUCKET}/{WAL}", f"arn:aws:s3:::{BUCKET}"):
        assert policy.is_action_permitted(action, resource) == PermissionResult.DENIED
    assert policy.is_action_permitted("s3:PutObject", f"arn:aws:s3:::{BUCKET}/{WAL}") == PermissionResult.PERMITTED


def test_without_object_lock_the_policy_is_as_before() -> None:
    assert repository_policy(BUCKET, PREFIX)["Statement"][2]["Action"] == [  # type: ignore[index]
        "s3:DeleteObjectVersion", "s3:DeleteObjectVersionTagging", "s3:PutBucketVersioning",
        "s3:PutLifecycleConfiguration", "s3:BypassGovernanceRetention"]


def test_the_node_key_lists_the_versions_under_its_prefix(locked_s3: tuple[Any, Any]) -> None:
    """What pgBackRest's --repo-target-time needs (ListObjectVersions). The statement carries the same s3:prefix
    condition as ListBucket's, which moto does not evaluate (its IAM ignores conditions)."""
    _, node = locked_s3
    first = node.put_object(Bucket=BUCKET, Key=WAL, Body=b"wal")["VersionId"]
    node.delete_object(Bucket=BUCKET, Key=WAL)
    listed = node.list_object_versions(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    assert [v["VersionId"] for v in listed["Versions"]] == [first]
    assert len(listed["DeleteMarkers"]) == 1
    statement = repository_policy(BUCKET, PREFIX, object_lock=True)["Statement"][0]  # type: ignore[index]
    assert statement["Action"] == ["s3:ListBucket", "s3:ListBucketVersions"]
    assert statement["Condition"] == {"StringLike": {"s3:prefix": [PREFIX, f"{PREFIX}/*"]}}


def test_the_lock_refuses_even_the_administrator(locked_s3: tuple[Any, Any]) -> None:
    """Beyond the policy: the administrator, allowed s3:*, cannot remove the locked version either."""
    admin, node = locked_s3
    first = node.put_object(Bucket=BUCKET, Key=WAL, Body=b"wal")["VersionId"]
    with pytest.raises(ClientError) as raised:
        admin.delete_object(Bucket=BUCKET, Key=WAL, VersionId=first)
    assert _code(raised) == "AccessDenied"
    assert [v["VersionId"] for v in admin.list_object_versions(Bucket=BUCKET, Prefix=PREFIX)["Versions"]] == [first]


# --- the ObjectLock resource's provider ----------------------------------------------------------------------


def target(**changes: Any) -> Target:
    values: dict[str, Any] = {
        "setting": "pgbackup:storage", "provider": "s3", "bucket": BUCKET, "endpoint": "s3.example.net",
        "region": "us-east-1", "path_style": True, "verify_tls": True, "ca_cert": None, "days": DAYS,
        "manage": True, "key_id": None, "secret": None}
    return Target(**(values | changes))


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto, unauthenticated, standing for the bucket's endpoint: the provider's client is moto's."""
    with mock_aws():
        s3 = _client("s3")

        @contextmanager
        def client(_target: Target, _environ: Any) -> Iterator[Any]:
            yield s3

        monkeypatch.setattr(objectlock, "client", client)
        yield s3


def test_manage_sets_the_compliance_default_retention_on_a_locked_bucket(s3: Any) -> None:
    s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    objectlock.apply(target())
    assert s3.get_object_lock_configuration(Bucket=BUCKET)["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": DAYS, "Years": 0}}}


def test_manage_on_a_bucket_created_without_lock_names_the_key_and_what_to_do(s3: Any) -> None:
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    with pytest.raises(ObjectLockError) as raised:
        objectlock.apply(target(setting="pgbackup:offsite"))
    message = str(raised.value)
    assert message.startswith(f"pgbackup:offsite.objectLockDays: bucket '{BUCKET}' has no Object Lock: it was "
                              "created without it")
    assert "set pgbackup:offsite.bucket to a new bucket" in message
    assert "or set objectLockDays to 0" in message
    with pytest.raises(ClientError):
        s3.get_object_lock_configuration(Bucket=BUCKET)  # nothing was set


def test_check_passes_on_a_protected_existing_bucket(s3: Any) -> None:
    s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": DAYS + 1}}})
    objectlock.apply(target(manage=False, key_id="k", secret="s"))


@pytest.mark.parametrize(("setup", "expected"), [
    ("plain", "versioning is off; Object Lock is off"),
    ("versioned", "Object Lock is off"),
    ("no default", "the default retention is none 0 days, not at least 7"),
    ("shorter", "the default retention is COMPLIANCE 3 days, not at least 7"),
])
def test_check_refuses_an_existing_bucket_that_is_not_protected(s3: Any, setup: str, expected: str) -> None:
    s3.create_bucket(Bucket=BUCKET, **({"ObjectLockEnabledForBucket": True} if setup in ("no default", "shorter")
                                       else {}))
    if setup == "versioned":
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    if setup == "shorter":
        s3.put_object_lock_configuration(Bucket=BUCKET, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 3}}})
    with pytest.raises(ObjectLockError) as raised:
        objectlock.apply(target(manage=False, key_id="k", secret="s"))
    assert str(raised.value) == (
        f"pgbackup:storage.objectLockDays: bucket '{BUCKET}' (create: false) is not protected as configured: "
        f"{expected}. Turn them on (a default retention of 7 days or more, COMPLIANCE or GOVERNANCE), use a bucket "
        "that has them, or set objectLockDays to 0")


def test_check_with_a_key_that_may_not_read_the_settings_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    """pgbackup's own scoped policy grants no bucket-level read: the check cannot tell, and says so."""
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **k: warnings.append(msg))
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 4)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    with mock_aws():
        _client("s3").create_bucket(Bucket=BUCKET)
        node = _user(_client("iam"), "pgbackrest", repository_policy(BUCKET, PREFIX, object_lock=True))

        @contextmanager
        def client(_target: Target, _environ: Any) -> Iterator[Any]:
            yield node

        monkeypatch.setattr(objectlock, "client", client)
        objectlock.apply(target(manage=False, key_id="k", secret="s", setting="pgbackup:offsite"))
    (warning,) = warnings
    assert warning.startswith(f"pgbackup:offsite.objectLockDays: could not check that bucket '{BUCKET}' has "
                              "versioning and Object Lock: the key in pgbackup:offsiteAccessKeyId may not read them")


def test_manage_needs_the_administrators_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINIO_USER", raising=False)
    monkeypatch.setenv("MINIO_PASSWORD", "x")
    with pytest.raises(ObjectLockError, match=r"^pgbackup:storage\.objectLockDays: setting the default retention of "
                                              r"bucket 'pg-backups' needs the administrator's key in MINIO_USER and "
                                              r"MINIO_PASSWORD"):
        objectlock.apply(target(provider="minio"))


# --- what the program declares ------------------------------------------------------------------------------

LOCK_TYPE = "pulumi-python:dynamic/s3:ObjectLock"


def locked_config(provider: str, days: int = 5, **storage: Any) -> dict[str, Any]:
    base = stack_config()
    endpoint = {"b2": {"region": "us-west-004"}, "minio": {"endpoint": "minio.example.net:9000"}}.get(provider, {})
    location = {**{k: v for k, v in base["storage"].items() if k not in ("endpoint", "region")},
                "endpoint": "s3.example.net", "region": "eu-central-1", **endpoint, "provider": provider,
                "objectLockDays": days, **storage}
    if provider == "b2":
        del location["endpoint"]
    return stack_config(storage=location, pgbackrest={"version": "2.55*"})


@pytest.mark.parametrize(("provider", "bucket_type", "flag"), [
    ("s3", "aws:s3/bucket:Bucket", "objectLockEnabled"), ("wasabi", "aws:s3/bucket:Bucket", "objectLockEnabled"),
    ("minio", "minio:index/s3Bucket:S3Bucket", "objectLocking")])
def test_a_created_bucket_asks_for_object_lock_and_gets_its_default_retention(provider: str, bucket_type: str,
                                                                              flag: str) -> None:
    run = run_program(locked_config(provider))
    (bucket,) = run.of_type(bucket_type)
    assert bucket.inputs[flag] is True
    assert run.options["repository-bucket"].ignore_changes == [flag]  # an existing bucket is never replaced for it
    (lock,) = run.of_type(LOCK_TYPE)
    assert {k: lock.inputs[k] for k in ("setting", "provider", "bucket", "days", "manage")} == {
        "setting": "pgbackup:storage", "provider": provider, "bucket": "pg-backups", "days": 5, "manage": True}
    assert "key_id" not in lock.inputs  # the administrator's key comes from the environment at call time


def test_b2_gets_file_lock_through_its_bucket() -> None:
    run = run_program(locked_config("b2"))
    assert run.named("repository-bucket").inputs["file_lock_days"] == 5
    assert run.of_type(LOCK_TYPE) == []


@pytest.mark.parametrize("provider", ["s3", "minio", "b2"])
def test_without_object_lock_days_nothing_changes(provider: str) -> None:
    run = run_program(locked_config(provider, days=0))
    assert run.of_type(LOCK_TYPE) == []
    bucket = run.named("repository-bucket").inputs
    assert not {"objectLockEnabled", "objectLocking", "file_lock_days"} & set(bucket)


def test_an_adopted_bucket_is_checked_with_the_given_key() -> None:
    secrets = {"sshPrivateKey": "k", "accessKeyId": "AKIAGIVEN", "secretAccessKey": "given-secret"}
    run = run_program(locked_config("s3", create=False), secrets=secrets)
    (lock,) = run.of_type(LOCK_TYPE)
    assert lock.inputs["manage"] is False
    assert unwrap(lock.inputs["key_id"]) == "AKIAGIVEN"
    assert is_wrapped_secret(lock.raw_inputs["secret"])
    assert is_wrapped_secret(lock.raw_inputs["key_id"])
