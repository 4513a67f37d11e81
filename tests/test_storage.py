"""The repository's storage protection: the retention key's validation, and the S3 policy enforced by moto's IAM.

moto (with authentication on, as the lab's second S3) evaluates pgbackup's repository policy for real: the
scoped key deletes by name, which on a versioned bucket only adds a delete marker, and cannot remove a version,
suspend versioning or change the lifecycle rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto import settings as moto_settings
from moto.core.authorization import ActionAuthenticatorMixin

from components.config import ConfigError, parse_settings
from components.storage import repository_policy
from pgbackup_testkit.engine import s3_shape
from tests.harness import run_program, stack_config

BUCKET, PREFIX = "pg-backups", "repo"
WAL = f"{PREFIX}/archive/main/15-1/000000010000000000000001"


def storage_of(**storage: Any) -> Any:
    config = stack_config()
    config["storage"] = {**config["storage"], **storage}
    return parse_settings(config)[0]


def test_noncurrent_versions_are_kept_30_days_by_default() -> None:
    assert storage_of().noncurrent_version_days == 30
    assert storage_of(noncurrentVersionDays=90).noncurrent_version_days == 90


@pytest.mark.parametrize("days", [0, 3651, "30"])
def test_noncurrent_version_days_out_of_range_is_refused(days: Any) -> None:
    with pytest.raises(ConfigError, match=r"^pgbackup:storage\.noncurrentVersionDays: "):
        storage_of(noncurrentVersionDays=days)


def test_the_former_hidden_version_days_key_names_its_replacement() -> None:
    with pytest.raises(ConfigError) as raised:
        storage_of(hiddenVersionDays=1)
    assert str(raised.value).startswith("pgbackup:storage.hiddenVersionDays: replaced by noncurrentVersionDays")


def _client(service: str, key_id: str = "setup", secret: str = "setup-secret") -> Any:  # noqa: S107 -- moto's
    return boto3.client(service, region_name="us-east-1", aws_access_key_id=key_id, aws_secret_access_key=secret)


def _user(iam: Any, name: str, policy: dict[str, Any]) -> Any:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return _client("s3", key["AccessKeyId"], key["SecretAccessKey"])


ADMIN_POLICY = {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}]}


@pytest.fixture
def scoped_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """(S3 client of an administrator, S3 client of pgbackup's scoped key) on a versioned bucket. The eight
    set-up calls go unchecked; every request after them is signed and checked against IAM."""
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 8)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    with mock_aws():
        setup = _client("s3")
        setup.create_bucket(Bucket=BUCKET)
        setup.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        iam = _client("iam")
        admin = _user(iam, "admin", ADMIN_POLICY)
        node = _user(iam, "pgbackrest", repository_policy(BUCKET, PREFIX))
        assert ActionAuthenticatorMixin.request_count == 8
        yield admin, node


def _code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def test_the_scoped_key_deletes_by_name_leaving_the_version(scoped_s3: tuple[Any, Any]) -> None:
    _, node = scoped_s3
    first = node.put_object(Bucket=BUCKET, Key=WAL, Body=b"wal")["VersionId"]

    deleted = node.delete_object(Bucket=BUCKET, Key=WAL)  # what pgBackRest's expire sends

    assert deleted["DeleteMarker"] is True
    with pytest.raises(ClientError):
        node.head_object(Bucket=BUCKET, Key=WAL)
    assert node.get_object(Bucket=BUCKET, Key=WAL, VersionId=first)["Body"].read() == b"wal"


def test_the_scoped_key_cannot_remove_a_version_or_the_protection(scoped_s3: tuple[Any, Any]) -> None:
    _, node = scoped_s3
    first = node.put_object(Bucket=BUCKET, Key=WAL, Body=b"wal")["VersionId"]
    marker = node.delete_object(Bucket=BUCKET, Key=WAL)["VersionId"]

    for version in (first, marker):
        with pytest.raises(ClientError) as refused:
            node.delete_object(Bucket=BUCKET, Key=WAL, VersionId=version)
        assert _code(refused) == "AccessDenied"
    with pytest.raises(ClientError) as refused:
        node.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"})
    assert _code(refused) == "AccessDenied"
    with pytest.raises(ClientError) as refused:
        node.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [
            {"ID": "gone", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}}]})
    assert _code(refused) == "AccessDenied"
    assert node.get_object(Bucket=BUCKET, Key=WAL, VersionId=first)["Body"].read() == b"wal"


def test_the_same_calls_succeed_with_a_key_allowed_to_remove_versions(scoped_s3: tuple[Any, Any]) -> None:
    """The refusals above come from the policy, not from moto: the administrator's identical call works."""
    admin, node = scoped_s3
    first = node.put_object(Bucket=BUCKET, Key=WAL, Body=b"wal")["VersionId"]

    admin.delete_object(Bucket=BUCKET, Key=WAL, VersionId=first)

    versions = admin.list_object_versions(Bucket=BUCKET, Prefix=PREFIX).get("Versions", [])
    assert [v["VersionId"] for v in versions] == []


def test_the_lifecycle_rule_as_the_lab_driver_puts_it_is_accepted_by_s3() -> None:
    """The program's BucketLifecycleConfiguration, sent by the lab driver as pulumi-aws would: S3 takes it and
    gives back one rule for the repository prefix with the configured days."""
    rules = run_program(stack_config(storage={**stack_config()["storage"], "repoPath": "/repo",
                                              "noncurrentVersionDays": 45})).named("repository-lifecycle").inputs["rules"]
    with mock_aws():
        s3 = _client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": s3_shape(rules)})
        (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert rule["ID"] == "pgbackup-repo"
    assert rule["Filter"] == {"Prefix": "repo/"}
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == 45
    assert rule["Expiration"] == {"ExpiredObjectDeleteMarker": True}


# What pgBackRest needs of a repository and nothing more (components/storage.py's comments say why each).
NEEDED = {"s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:PutObjectTagging", "s3:DeleteObject",
          "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}
NEVER = {"s3:DeleteObjectVersion", "s3:DeleteObjectVersionTagging", "s3:PutBucketVersioning",
         "s3:PutLifecycleConfiguration", "s3:BypassGovernanceRetention"}


@pytest.mark.parametrize("object_lock", [False, True])
def test_the_policy_allows_what_pgbackrest_needs_and_denies_every_way_to_remove_a_version(object_lock: bool) -> None:
    """An action added to the Allow (s3:PutObjectAcl: backups made public) or dropped from the Deny (MinIO lets
    s3:DeleteObject delete a version unless s3:DeleteObjectVersion is explicitly denied) fails here."""
    statements = repository_policy(BUCKET, PREFIX, object_lock=object_lock)["Statement"]
    assert isinstance(statements, list)
    allowed = {action for s in statements if s["Effect"] == "Allow" for action in s["Action"]}
    listing = {"s3:ListBucket", "s3:ListBucketVersions"} if object_lock else {"s3:ListBucket"}
    assert allowed == NEEDED | listing
    for action in NEVER:
        assert [s for s in statements if s["Effect"] == "Deny" and action in s["Action"] and not s.get("Condition")
                and {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"} <= set(s["Resource"])], action
