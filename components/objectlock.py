"""Object Lock on an S3-compatible bucket (S3, Wasabi, MinIO; B2's file lock is in components/b2.py), as a Pulumi
dynamic resource on boto3.

Two uses, one provider:
- `manage` (a bucket the program created): with the administrator's key, read at call time from the
  environment (AWS_* for s3 and wasabi, MINIO_* for minio; pgbackup:offsite's from PGBACKUP_OFFSITE_AWS_* /
  PGBACKUP_OFFSITE_MINIO_*; never an input, never in the state), check that the
  bucket has Object Lock, then set its default retention: COMPLIANCE mode, `days`. A bucket created before
  objectLockDays was set has no Object Lock; most providers turn it on only when a bucket is created, so the
  error names the key and what to do instead of leaving the repository unprotected.
- check only (`storage.create: false`): with the repository's own key, check that versioning is on, Object Lock
  is on and the default retention locks new versions at least `days`. Any of them off is an error (the stack
  asked for a repository a stolen key cannot destroy; deploying without it would pretend otherwise); a key not
  allowed to read those settings is a warning (nothing is known to be wrong, and pgBackRest needs no such
  permission).

The resource never removes a lock or a default retention: on delete the bucket keeps them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pulumi
import pulumi.dynamic
from botocore.exceptions import BotoCoreError, ClientError
from pulumi.runtime import rpc

from components.providers import ADMIN_ENV as PROVIDER_ADMIN_ENV
from components.s3client import s3_client

MODE = "COMPLIANCE"
"""Nobody, the account's root included, can delete a locked version or shorten its lock (docs/security.md: "What the
node's key can and cannot do" says why compliance, not governance)."""

ADMIN_ENV = {provider: names for provider, names in PROVIDER_ADMIN_ENV.items() if provider != "b2"}

# What a bucket without an Object Lock configuration answers (S3 and moto; MinIO's name in its docs).
_NO_LOCK = {"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration", "InvalidRequest"}


class ObjectLockError(RuntimeError):
    """The bucket is not protected as configured. The message names the key and what to do."""


V = TypeVar("V")


def _plain(value: Any) -> Any:
    return rpc.unwrap_rpc_secret(value)


@dataclass(frozen=True)
class _Lock(Generic[V]):
    """Where the bucket is and whose key asks: `V` is `str` once resolved (Target), or `pulumi.Input[str]` for
    the values known only at apply time (ObjectLockArgs)."""

    setting: str
    """The configuration object, for errors: pgbackup:storage or pgbackup:offsite."""
    provider: str
    bucket: V
    endpoint: str
    region: str
    path_style: bool
    verify_tls: bool
    ca_cert: str | None
    days: int
    manage: bool
    key_id: V | None = None
    secret: V | None = None
    admin_env: list[str] | None = None
    """The variables holding the administrator's key (names, never values); None: ADMIN_ENV's for the provider
    (pgbackup:storage's). pgbackup:offsite's names its own, PGBACKUP_OFFSITE_*."""


@dataclass(frozen=True)
class Target(_Lock[str]):
    """The resolved values, as the provider gets them (built from the resource's properties)."""

    @classmethod
    def of(cls, props: dict[str, Any]) -> Target:
        value = {name: _plain(props.get(name)) for name in cls.__dataclass_fields__}
        value["days"] = int(value["days"])
        if value["admin_env"] is not None:
            value["admin_env"] = [str(_plain(name)) for name in value["admin_env"]]
        return cls(**value)

    @property
    def key(self) -> str:
        return f"{self.setting}.objectLockDays"


def _credentials(target: Target, environ: Mapping[str, str]) -> tuple[str, str]:
    if not target.manage:
        assert target.key_id is not None
        assert target.secret is not None
        return target.key_id, target.secret
    id_name, secret_name = (tuple(target.admin_env) if target.admin_env and len(target.admin_env) == 2
                            else ADMIN_ENV[target.provider])
    key_id, secret = environ.get(id_name, "").strip(), environ.get(secret_name, "").strip()
    if not key_id or not secret:
        raise ObjectLockError(f"{target.key}: setting the default retention of bucket '{target.bucket}' needs the "
                              f"administrator's key in {id_name} and {secret_name} (the environment of `pulumi`)")
    return key_id, secret


@contextmanager
def client(target: Target, environ: Mapping[str, str]) -> Iterator[Any]:
    """An S3 client on the bucket's endpoint (its private CA trusted, if any), the administrator's key read from
    `environ`. Module-level so tests can replace it."""
    key_id, secret = _credentials(target, environ)
    with s3_client(f"https://{target.endpoint}", target.region, key_id, secret, verify_tls=target.verify_tls,
                   ca_cert=target.ca_cert, path_style=target.path_style, retries={"max_attempts": 3}) as s3:
        yield s3


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class Found:
    versioning: str
    lock_enabled: bool
    mode: str | None
    days: int | None


def read_protection(s3: Any, bucket: str) -> Found:
    """The bucket's versioning status and Object Lock configuration (ClientError when the key may not read them)."""
    versioning = str(s3.get_bucket_versioning(Bucket=bucket).get("Status") or "off")
    try:
        config = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except ClientError as err:
        if _code(err) not in _NO_LOCK:
            raise
        return Found(versioning, False, None, None)
    retention = config.get("Rule", {}).get("DefaultRetention", {})
    days = retention.get("Days") or (retention["Years"] * 365 if retention.get("Years") else None)
    return Found(versioning, config.get("ObjectLockEnabled") == "Enabled", retention.get("Mode"), days)


def _not_locked(target: Target) -> str:
    return (f"{target.key}: bucket '{target.bucket}' has no Object Lock: it was created without it, and "
            f"{target.provider} turns Object Lock on only when a bucket is created (AWS S3 also for an existing "
            "versioned bucket: `aws s3api put-object-lock-configuration --bucket "
            f"{target.bucket} --object-lock-configuration ObjectLockEnabled=Enabled`, then `pulumi up` again). "
            f"Otherwise set {target.setting}.bucket to a new bucket, which pgbackup creates with Object Lock (a new "
            "repository: take its first full backup; the old bucket keeps its backups), or set objectLockDays to 0")


def apply(target: Target, environ: Mapping[str, str] | None = None) -> None:
    """Set (manage) or check the bucket's protection; raises ObjectLockError naming the key. The administrator's
    key comes from `environ` (the process's environment: that of `pulumi up`)."""
    try:
        with client(target, os.environ if environ is None else environ) as s3:
            found = read_protection(s3, target.bucket)
            if target.manage:
                if not found.lock_enabled:
                    raise ObjectLockError(_not_locked(target))
                s3.put_object_lock_configuration(Bucket=target.bucket, ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": MODE, "Days": target.days}}})
                pulumi.log.info(f"bucket '{target.bucket}': new versions locked {target.days} days ({MODE})")
                return
    except ClientError as err:
        if target.manage or _code(err) not in {"AccessDenied", "403"}:
            raise ObjectLockError(f"{target.key}: bucket '{target.bucket}': {_code(err)}: {err}") from err
        pulumi.log.warn(
            f"{target.key}: could not check that bucket '{target.bucket}' has versioning and Object Lock: the key in "
            f"pgbackup:{'offsiteAccessKeyId' if target.setting.endswith('offsite') else 'accessKeyId'} may not read "
            f"them ({_code(err)}). Grant it s3:GetBucketVersioning and s3:GetBucketObjectLockConfiguration on the "
            "bucket (read-only) to have every `pulumi up` check them, or check them yourself")
        return
    except BotoCoreError as err:
        raise ObjectLockError(f"{target.key}: bucket '{target.bucket}': {err}") from err
    missing = []
    if found.versioning != "Enabled":
        missing.append(f"versioning is {found.versioning}")
    if not found.lock_enabled:
        missing.append("Object Lock is off")
    elif found.mode is None or (found.days or 0) < target.days:
        missing.append(f"the default retention is {found.mode or 'none'} {found.days or 0} days, not at least "
                       f"{target.days}")
    if missing:
        raise ObjectLockError(
            f"{target.key}: bucket '{target.bucket}' (create: false) is not protected as configured: "
            f"{'; '.join(missing)}. Turn them on (a default retention of {target.days} days or more, COMPLIANCE or "
            "GOVERNANCE), use a bucket that has them, or set objectLockDays to 0")


_INPUTS = tuple(Target.__dataclass_fields__)


class _ObjectLockProvider(pulumi.dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        target = Target.of(props)
        apply(target)
        return pulumi.dynamic.CreateResult(f"{target.bucket}-object-lock", props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        # Which variables hold the administrator's key is not a change of the bucket's protection.
        changed = [name for name in _INPUTS if name != "admin_env" and _plain(olds.get(name)) != _plain(news.get(name))]
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        apply(Target.of(news))
        return pulumi.dynamic.UpdateResult(news)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        pulumi.log.info(f"bucket '{_plain(props.get('bucket'))}': its Object Lock and default retention stay "
                        "(locked versions stay locked); only the Pulumi state forgets them")


# What the ObjectLock resource takes.
ObjectLockArgs = _Lock[pulumi.Input[str]]


class ObjectLock(pulumi.dynamic.Resource, module="s3", name="ObjectLock"):
    """The bucket's Object Lock default retention, set (manage) or checked."""

    def __init__(self, resource_name: str, args: ObjectLockArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        props = {name: getattr(args, name) for name in _INPUTS}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["key_id",
                                                                                                    "secret"]))
        super().__init__(_ObjectLockProvider(), resource_name, props, opts)
