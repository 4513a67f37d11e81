"""Object storage: the bucket that holds the repository and an access key that reaches only it.

Provider differences live in `_BACKENDS` (one function per provider family); everything else is shared.
The bucket is retained on `pulumi destroy`: it holds the backups.

Key rotation (storage.keyGeneration): a new generation gives the key resources new names. Pulumi creates the
new key, updates what depends on it (every node's pgbackrest.conf, then the stanza and verify steps, whose
`pgbackrest check` proves it), and deletes the old key only after all of that succeeded: a resource gone from
the program is deleted at the end of the update, and not at all when a step failed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_minio as minio
import pulumi_random as random

from components.b2 import B2ApplicationKey, B2ApplicationKeyArgs, B2Bucket, B2BucketArgs
from components.config import StorageConfig, generation_suffix
from components.objectlock import ObjectLock, ObjectLockArgs
from components.providers import PROVIDERS, admin_env

OFFSITE_SETTING = "pgbackup:offsite"

# What pgBackRest does with a repository: list the repo prefix, read, write (multipart included), delete.
# Versions: pgBackRest reads a specific version of a file on restore (repo-target-time) and tags objects.
# Deletes: pgBackRest (src/storage/s3/storage.c) deletes BY NAME only, DeleteObject without a versionId and
# DeleteObjects whose entries carry only a Key. On a versioned bucket that only adds a delete marker: "If
# bucket versioning is enabled, the operation inserts a delete marker ... To permanently delete an object in a
# versioned bucket, you must include the object's versionId in the request", which needs
# s3:DeleteObjectVersion (https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObject.html). Wasabi's
# and MinIO's IAM take the same policy language.
S3_OBJECT_ACTIONS = [
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:PutObject",
    "s3:PutObjectTagging",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]

# Denied outright, on the whole bucket: removing versions for good, and turning off what keeps them
# (versioning, the lifecycle rule, object lock). An explicit Deny, not only the absence of an Allow: MinIO lets
# s3:DeleteObject delete a specific version too unless s3:DeleteObjectVersion is explicitly denied
# (https://github.com/minio/minio/pull/16409, "enforce deny on DeleteVersionAction"); on AWS and Wasabi a Deny
# also wins over any Allow the user is given later.
S3_DENIED_ACTIONS = [
    "s3:DeleteObjectVersion",
    "s3:DeleteObjectVersionTagging",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:BypassGovernanceRetention",
]

# With Object Lock (objectLockDays), also denied: the key can neither lift a lock nor set one. Compliance mode cannot
# be shortened by anyone, but a key allowed s3:PutObjectRetention could lock versions for years (a bill nobody can
# stop) and, in governance mode, shorten them; PutObject with lock headers needs it too. (Without a lock these calls
# fail anyway, and the policy of an existing stack stays as it was.)
S3_LOCK_DENIED_ACTIONS = [
    "s3:PutObjectRetention",
    "s3:PutObjectLegalHold",
    "s3:PutBucketObjectLockConfiguration",
]


def source_ip_statement(allowed: Sequence[str]) -> dict[str, object]:
    """storage.allowedSourceIps: every S3 action denied to a request from any other address. A Deny, not an Allow
    conditioned on IpAddress: an explicit Deny wins over every Allow, this policy's and any the user is given
    later (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_examples_aws_deny-ip.html)."""
    return {
        "Sid": "OnlyFromAllowedSourceIps",
        "Effect": "Deny",
        "Action": ["s3:*"],
        "Resource": ["arn:aws:s3:::*"],
        "Condition": {"NotIpAddress": {"aws:SourceIp": list(allowed)}},
    }


def repository_policy(bucket: str, prefix: str, object_lock: bool = False,
                      allowed_source_ips: Sequence[str] | None = None) -> dict[str, object]:
    """An IAM policy granting exactly what pgBackRest needs, limited to `bucket` and its `prefix`, and denying
    every way to remove a version for good (and, with `object_lock`, to change a lock; with
    `allowed_source_ips`, any request from another address)."""
    policy: dict[str, object] = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListRepository",
                "Effect": "Allow",
                # With a lock, also the versions under the prefix: pgBackRest's repo-target-time lists them
                # (ListObjectVersions) to read the repository as it was before a deletion.
                "Action": ["s3:ListBucket", "s3:ListBucketVersions"] if object_lock else ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}},
            },
            {
                "Sid": "ReadWriteRepository",
                "Effect": "Allow",
                "Action": S3_OBJECT_ACTIONS,
                "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"],
            },
            {
                "Sid": "NeverRemoveVersions",
                "Effect": "Deny",
                "Action": S3_DENIED_ACTIONS + (S3_LOCK_DENIED_ACTIONS if object_lock else []),
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            },
            *([source_ip_statement(allowed_source_ips)] if allowed_source_ips else []),
        ],
    }
    return policy


def _policy(storage: StorageConfig) -> str:
    """The node key's policy document, as the IAM user policy (s3, wasabi) or MinIO policy gets it."""
    return json.dumps(repository_policy(storage.bucket, storage.key_prefix, bool(storage.object_lock_days),
                                        storage.allowed_source_ips), sort_keys=True)


def _is_offsite(setting: str) -> bool:
    return setting == OFFSITE_SETTING


def offsite_admin_key(storage: StorageConfig) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """pgbackup:offsite's administrator's key for pulumi-aws or pulumi-minio, from PGBACKUP_OFFSITE_* (checked
    present by config.check_offsite_admin_key before anything is declared). Those plugins take a second key only
    as their provider's configuration, which Pulumi keeps in the state: as secrets, so encrypted there."""
    names = admin_env(storage.provider, offsite=True)
    key_id, secret = (os.environ.get(name, "").strip() for name in names)
    return pulumi.Output.secret(key_id), pulumi.Output.secret(secret)


def object_lock(parent: BackupRepository, name: str, storage: StorageConfig, setting: str, *,
                depends_on: list[pulumi.Resource], key: Credentials | None = None) -> ObjectLock:
    """The bucket's Object Lock default retention: set with the administrator's key (`key` None), or checked with
    the repository's key (`storage.create` false)."""
    assert storage.endpoint is not None
    assert storage.region is not None
    return ObjectLock(
        f"{name}-object-lock",
        ObjectLockArgs(setting=setting, provider=storage.provider, bucket=storage.bucket, endpoint=storage.endpoint,
                       region=storage.region, path_style=storage.uri_style == "path", verify_tls=storage.verify_tls,
                       ca_cert=storage.ca_cert, days=storage.object_lock_days, manage=key is None,
                       key_id=key.access_key_id if key else None, secret=key.secret_access_key if key else None,
                       admin_env=list(admin_env(storage.provider, offsite=True))
                       if key is None and _is_offsite(setting) else None),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=depends_on),
    )


def lifecycle_rule_id(storage: StorageConfig) -> str:
    """The id of the one lifecycle rule the program sets on an S3-compatible bucket."""
    return f"pgbackup-{storage.key_prefix}"


@dataclass(frozen=True)
class Credentials:
    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]


Backend = Callable[["BackupRepository", str, StorageConfig, str, str], Credentials]


def _b2(parent: BackupRepository, name: str, storage: StorageConfig, key_name: str, setting: str) -> Credentials:
    # pgbackup:offsite's resources name their own administrator's key (PGBACKUP_OFFSITE_B2_*); repo1's keep the
    # b2 CLI's names, their inputs as they were.
    admin = list(admin_env("b2", offsite=True)) if _is_offsite(setting) else None
    bucket = B2Bucket(
        f"{name}-bucket",
        B2BucketArgs(bucket_name=storage.bucket, file_name_prefix=f"{storage.key_prefix}/",
                     hidden_file_retention_days=storage.noncurrent_version_days,
                     file_lock_days=storage.object_lock_days, admin_env=admin),
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True, protect=False),
    )
    gen = generation_suffix(storage.key_generation)
    key = B2ApplicationKey(
        f"{name}-key{gen}",
        B2ApplicationKeyArgs(key_name=key_name + gen, bucket_id=bucket.bucket_id,
                             name_prefix=f"{storage.key_prefix}/", admin_env=admin),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return Credentials(key.application_key_id, key.application_key)


def _aws_compatible(parent: BackupRepository, name: str, storage: StorageConfig, key_name: str, setting: str
                    ) -> Credentials:
    """Wasabi and generic S3 (AWS, Ceph RGW, ...): pulumi-aws pointed at the provider's endpoints."""
    s3_url = f"https://{storage.endpoint}"
    iam_url, iam_region = PROVIDERS[storage.provider].iam or (s3_url, storage.region or "us-east-1")

    # repo1's administrator's key: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, read by pulumi-aws itself (never in
    # the state). pgbackup:offsite's: PGBACKUP_OFFSITE_AWS_*, given to its providers (secrets in the state).
    admin_key_id, admin_secret = offsite_admin_key(storage) if _is_offsite(setting) else (None, None)

    def provider(suffix: str, region: str | None, endpoints: aws.ProviderEndpointArgs) -> aws.Provider:
        # Not AWS itself: no account id, metadata API or region list to check against.
        return aws.Provider(
            f"{name}-{suffix}",
            access_key=admin_key_id,
            secret_key=admin_secret,
            region=region,
            endpoints=[endpoints],
            s3_use_path_style=storage.uri_style == "path",
            skip_credentials_validation=True,
            skip_region_validation=True,
            skip_requesting_account_id=True,
            skip_metadata_api_check=True,
            opts=pulumi.ResourceOptions(parent=parent),
        )

    s3 = provider("s3", storage.region, aws.ProviderEndpointArgs(s3=s3_url, sts=s3_url))
    iam = provider("iam", iam_region, aws.ProviderEndpointArgs(iam=iam_url, sts=iam_url))
    # Object Lock is asked for when the bucket is created; an existing bucket is never replaced for it
    # (ignore_changes): the ObjectLock resource then names the key and what to do.
    bucket = aws.s3.Bucket(
        f"{name}-bucket",
        bucket=storage.bucket,
        force_destroy=False,
        object_lock_enabled=True if storage.object_lock_days else None,
        opts=pulumi.ResourceOptions(parent=parent, provider=s3, retain_on_delete=True,
                                    ignore_changes=["objectLockEnabled"]),
    )
    versioning = aws.s3.BucketVersioning(
        f"{name}-versioning",
        bucket=bucket.id,
        versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
        opts=pulumi.ResourceOptions(parent=parent, provider=s3, retain_on_delete=True),
    )
    # S3's lifecycle configuration is one document per bucket: this is the bucket the program created, and its
    # one rule is limited to the repository's prefix. Noncurrent versions (deleted or overwritten by pgBackRest)
    # go after noncurrentVersionDays; a delete marker goes once no version is left behind it.
    aws.s3.BucketLifecycleConfiguration(
        f"{name}-lifecycle",
        bucket=bucket.id,
        rules=[
            aws.s3.BucketLifecycleConfigurationRuleArgs(
                id=lifecycle_rule_id(storage),
                status="Enabled",
                filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=f"{storage.key_prefix}/"),
                noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                    noncurrent_days=storage.noncurrent_version_days
                ),
                expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(expired_object_delete_marker=True),
            )
        ],
        opts=pulumi.ResourceOptions(parent=parent, provider=s3, retain_on_delete=True, depends_on=[versioning]),
    )
    if storage.object_lock_days:
        object_lock(parent, name, storage, setting, depends_on=[versioning])
    user = aws.iam.User(f"{name}-user", name=key_name, opts=pulumi.ResourceOptions(parent=parent, provider=iam))
    aws.iam.UserPolicy(
        f"{name}-policy",
        user=user.name,
        policy=_policy(storage),
        opts=pulumi.ResourceOptions(parent=parent, provider=iam),
    )
    key = aws.iam.AccessKey(f"{name}-key{generation_suffix(storage.key_generation)}", user=user.name,
                            opts=pulumi.ResourceOptions(parent=parent, provider=iam))
    return Credentials(key.id, key.secret)


def _minio(parent: BackupRepository, name: str, storage: StorageConfig, key_name: str, setting: str) -> Credentials:
    """Self-hosted MinIO: its own provider; admin credentials from MINIO_USER / MINIO_PASSWORD (read by
    pulumi-minio), for pgbackup:offsite from PGBACKUP_OFFSITE_MINIO_* (given to its provider, secrets)."""
    admin_user, admin_password = offsite_admin_key(storage) if _is_offsite(setting) else (None, None)
    provider = minio.Provider(
        f"{name}-minio",
        minio_server=storage.endpoint,
        minio_region=storage.region,
        minio_ssl=True,
        minio_insecure=not storage.verify_tls,
        minio_user=admin_user,
        minio_password=admin_password,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    bucket = minio.S3Bucket(
        f"{name}-bucket",
        bucket=storage.bucket,
        acl="private",
        force_destroy=False,
        object_locking=True if storage.object_lock_days else None,
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, retain_on_delete=True,
                                    ignore_changes=["objectLocking"]),
    )
    versioning = minio.S3BucketVersioning(
        f"{name}-versioning",
        bucket=bucket.bucket,
        versioning_configuration=minio.S3BucketVersioningVersioningConfigurationArgs(status="Enabled"),
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, retain_on_delete=True),
    )
    # As for S3: the created bucket's one rule, limited to the repository's prefix ("DeleteMarker": expired
    # delete markers go too).
    minio.IlmPolicy(
        f"{name}-lifecycle",
        bucket=bucket.bucket,
        rules=[
            minio.IlmPolicyRuleArgs(
                id=lifecycle_rule_id(storage),
                status="Enabled",
                filter=f"{storage.key_prefix}/",
                noncurrent_version_expiration_days=storage.noncurrent_version_days,
                expiration="DeleteMarker",
            )
        ],
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, retain_on_delete=True, depends_on=[versioning]),
    )
    if storage.object_lock_days:
        object_lock(parent, name, storage, setting, depends_on=[versioning])
    # MinIO's key is a user: a new generation is a new user (and secret), attached to the same policy.
    gen = generation_suffix(storage.key_generation)
    password = random.RandomPassword(
        f"{name}-secret{gen}", length=40, special=False, opts=pulumi.ResourceOptions(parent=parent)
    )
    user = minio.IamUser(
        f"{name}-user{gen}",
        name=key_name + gen,
        secret=password.result,
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, additional_secret_outputs=["secret"]),
    )
    policy = minio.IamPolicy(
        f"{name}-policy",
        name=key_name,
        policy=_policy(storage),
        opts=pulumi.ResourceOptions(parent=parent, provider=provider),
    )
    minio.IamUserPolicyAttachment(
        f"{name}-attachment{gen}",
        user_name=user.name,
        policy_name=policy.name,
        opts=pulumi.ResourceOptions(parent=parent, provider=provider),
    )
    return Credentials(user.name, pulumi.Output.secret(password.result))


_BACKENDS: dict[str, Backend] = {"b2": _b2, "wasabi": _aws_compatible, "s3": _aws_compatible, "minio": _minio}


@dataclass
class BackupRepositoryArgs:
    storage: StorageConfig
    """The validated `pgbackup:storage` object."""
    key_name: str
    """Name of the access key / IAM user made for pgBackRest."""
    access_key_id: pulumi.Input[str] | None = None
    """With `storage.create` false: the existing key's id (secret config)."""
    secret_access_key: pulumi.Input[str] | None = None
    """With `storage.create` false: the existing key's secret (secret config)."""
    setting: str = "pgbackup:storage"
    """The configuration object `storage` comes from, for errors (pgbackup:offsite for the second location)."""


class BackupRepository(pulumi.ComponentResource):
    """A bucket and a key limited to its repository path, on the configured provider."""

    bucket: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]

    def __init__(self, name: str, args: BackupRepositoryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgbackup:storage:BackupRepository", name, None, opts)
        storage = args.storage
        if storage.create:
            credentials = _BACKENDS[storage.provider](self, name, storage, args.key_name, args.setting)
        else:
            assert args.access_key_id is not None
            assert args.secret_access_key is not None
            credentials = Credentials(pulumi.Output.from_input(args.access_key_id),
                                      pulumi.Output.from_input(args.secret_access_key))
            if storage.object_lock_days:
                object_lock(self, name, storage, args.setting, depends_on=[], key=credentials)
        self.bucket = pulumi.Output.from_input(storage.bucket)
        self.endpoint = pulumi.Output.from_input(storage.endpoint or "")
        self.access_key_id = credentials.access_key_id
        self.secret_access_key = pulumi.Output.secret(credentials.secret_access_key)
        self.register_outputs(
            {
                "bucket": self.bucket,
                "endpoint": self.endpoint,
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
            }
        )
