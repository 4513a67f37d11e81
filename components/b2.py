"""Backblaze B2 bucket and application key as Pulumi dynamic resources (no B2 Pulumi package exists).

The account's admin key is read by the provider at call time from B2_APPLICATION_KEY_ID and
B2_APPLICATION_KEY (the b2 CLI's names), or from the variables a resource names in `admin_env`
(pgbackup:offsite: PGBACKUP_OFFSITE_B2_APPLICATION_KEY_ID / PGBACKUP_OFFSITE_B2_APPLICATION_KEY). The key is
never an input (only the variables' names are), and the providers hold no state, so nothing secret is pickled
into the Pulumi state with them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi.dynamic
from b2sdk.v2 import B2Api, BucketRetentionSetting, InMemoryAccountInfo, LifecycleRule, RetentionMode, RetentionPeriod
from b2sdk.v2.exception import B2Error, DuplicateBucketName
from pulumi.runtime import rpc

from components.providers import B2_BUCKET_RULE, B2_KEY_NAME, b2_bucket_name_ok

ENV_KEY_ID = "B2_APPLICATION_KEY_ID"
ENV_KEY = "B2_APPLICATION_KEY"

BUCKET_TYPE = "allPrivate"

# What pgBackRest needs through B2's S3-compatible API, and no more. pgBackRest (src/storage/s3/storage.c)
# only issues object-level requests: ListObjectsV2 on the repo prefix (listFiles), HEAD/GET object
# (readFiles), PUT and multipart upload (writeFiles), and deletes BY NAME: DeleteObject without a versionId
# and DeleteObjects whose entries carry only a Key. B2's "S3-Compatible App Keys" page
# (https://www.backblaze.com/docs/cloud-storage-s3-compatible-app-keys): "The writeFiles permission is
# necessary when you delete a file by name, and the deleteFiles permission is required when you delete a
# specific version"; B2's "S3 Delete Object" (https://www.backblaze.com/apidocs/s3-delete-object): without a
# versionId "a delete marker will be inserted" (a hide marker), with one "an object will be permanently
# deleted". So the key gets no `deleteFiles`: it can hide a file, never remove a version; hidden versions
# go only by the bucket's lifecycle rule (`daysFromHidingToDeleting`). The same page maps `listBuckets` to
# S3 ListBuckets/HeadBucket, which pgBackRest never makes, and recommends `listAllBucketNames` only "for
# compatibility with SDKs and integrations": neither is granted by default; pass `capabilities` to add them.
DEFAULT_KEY_CAPABILITIES: tuple[str, ...] = ("listFiles", "readFiles", "writeFiles")

# Every capability the node's key may be given. Anything else can destroy or unprotect the backups
# (https://www.backblaze.com/docs/cloud-storage-application-key-capabilities): `deleteFiles` removes file
# versions for good, `writeBuckets` rewrites the lifecycle rules, `writeKeys` makes keys with any capability,
# `bypassGovernance` and the retention/legal-hold writes lift object lock.
ALLOWED_KEY_CAPABILITIES: frozenset[str] = frozenset(
    (*DEFAULT_KEY_CAPABILITIES, "listBuckets", "listAllBucketNames", "readBuckets", "readBucketEncryption",
     "readFileRetentions", "readFileLegalHolds", "readBucketRetentions")
)



class B2ProviderError(RuntimeError):
    """A B2 call made by a dynamic provider failed (the message names the operation, never a secret)."""


class B2CredentialsError(B2ProviderError):
    """The admin key environment variables are missing."""


def _admin_env(props: dict[str, Any]) -> tuple[str, str]:
    """The names of the variables holding the admin key, as the resource's `admin_env` gives them (pgbackup:offsite:
    PGBACKUP_OFFSITE_B2_*); without it, the b2 CLI's names (pgbackup:storage, and a resource recorded before
    `admin_env` existed: it was made with them). Names only: the values are never an input."""
    names = _plain(props.get("admin_env"))
    if isinstance(names, (list, tuple)) and len(names) == 2 and all(isinstance(_plain(n), str) for n in names):
        return str(_plain(names[0])), str(_plain(names[1]))
    return ENV_KEY_ID, ENV_KEY


def _credentials(names: tuple[str, str] = (ENV_KEY_ID, ENV_KEY)) -> tuple[str, str]:
    """The admin key from the environment variables `names`, read at call time."""
    id_name, key_name = names
    key_id = os.environ.get(id_name, "").strip()
    key = os.environ.get(key_name, "").strip()
    missing = [name for name, value in ((id_name, key_id), (key_name, key)) if not value]
    if missing:
        raise B2CredentialsError(
            f"B2 credentials missing: set both {id_name} and {key_name} (an account key allowed to manage "
            f"buckets and keys, as used by the b2 CLI) in the environment of `pulumi`; "
            f"not set: {', '.join(missing)}"
        )
    return key_id, key


def _make_api(names: tuple[str, str] = (ENV_KEY_ID, ENV_KEY)) -> B2Api:
    """A fresh B2Api, authorized with the key in the variables `names`. Module-level so tests can replace it;
    never stored on a provider."""
    key_id, key = _credentials(names)
    api = B2Api(InMemoryAccountInfo())
    with _b2_errors(f"authorization with the key from {names[0]}/{names[1]}"):
        api.authorize_account("production", key_id, key)
    return api


@contextmanager
def _b2_errors(operation: str) -> Iterator[None]:
    """Re-raise b2sdk errors with the operation and the bucket or key it concerned."""
    try:
        yield
    except B2Error as exc:
        raise B2ProviderError(f"B2 {operation} failed: {type(exc).__name__}: {exc}") from exc


def _plain(value: Any) -> Any:
    """The value of a property, unwrapped if Pulumi passed it as a secret."""
    return rpc.unwrap_rpc_secret(value)


def _is_known(value: Any) -> bool:
    """False for values unknown during a preview (they are neither str nor number nor list)."""
    return isinstance(value, (str, int, float, list, tuple)) and not isinstance(value, bool)


# --- bucket ---------------------------------------------------------------------------------------


def _rule(prefix: str, days: int) -> LifecycleRule:
    """The repository's rule: a version hidden (by a delete by name or a newer upload) under `prefix` is
    removed `days` later. Nothing is ever hidden by the rule itself."""
    return {"fileNamePrefix": prefix, "daysFromHidingToDeleting": days, "daysFromUploadingToHiding": None}


def _set(rule: Any) -> dict[str, Any]:
    return {k: v for k, v in rule.items() if v is not None} if isinstance(rule, dict) else {}


def _merged_rules(existing: Any, prefix: str, days: int, drop: Any = None) -> list[LifecycleRule]:
    """B2 keeps one bucket-wide list of rules: keep every rule for other prefixes, replace ours (and `drop`, a
    rule this resource set before, e.g. under a former prefix) by the repository's rule."""
    dropped = _set(drop)
    kept = [r for r in existing or [] if r.get("fileNamePrefix") != prefix and (not dropped or _set(r) != dropped)]
    return [*kept, _rule(prefix, days)]


def _days_from_rules(rules: Any, prefix: str) -> int | None:
    """The retention days if `rules` hold exactly the rule this resource sets for `prefix`, else None (drift)."""
    for rule in rules if isinstance(rules, list) else []:
        found = _set(rule)
        days = found.get("daysFromHidingToDeleting")
        if found.get("fileNamePrefix") == prefix and isinstance(days, int) and found == _set(_rule(prefix, days)):
            return days
    return None


def _former_rule(olds: dict[str, Any]) -> LifecycleRule | None:
    """The rule this resource set in its last state: for its prefix, or bucket-wide before it had a prefix."""
    days = _plain(olds.get("hidden_file_retention_days"))
    if not isinstance(days, (int, float)):
        return None
    prefix = _plain(olds.get("file_name_prefix"))
    return _rule(prefix if isinstance(prefix, str) else "", int(days))


def _bucket_outputs(bucket_id: str, bucket_name: str, prefix: str, days: int | None, lock_days: int = 0,
                    props: dict[str, Any] | None = None) -> dict[str, Any]:
    outputs: dict[str, Any] = {"bucket_id": bucket_id, "bucket_name": bucket_name, "file_name_prefix": prefix,
                               "hidden_file_retention_days": days}
    return outputs | ({"file_lock_days": lock_days} if lock_days else {}) | _admin_env_output(props or {})


def _admin_env_output(props: dict[str, Any]) -> dict[str, Any]:
    """`admin_env` kept in the outputs (names only), so that read and delete use the key that made the resource."""
    return {"admin_env": list(_admin_env(props))} if props.get("admin_env") is not None else {}


def _lock_days(props: dict[str, Any]) -> int:
    """objectLockDays: 0 (absent) is off."""
    return int(_plain(props.get("file_lock_days")) or 0)


def file_lock(days: int) -> dict[str, Any]:
    """bucket.update's arguments for B2's file lock: on, with a COMPLIANCE default retention of `days` (nobody,
    the account included, can delete a locked version or shorten its retention). Never lifted: with `days` 0
    nothing is changed (a bucket keeps the lock it has)."""
    if not days:
        return {}
    return {"is_file_lock_enabled": True,
            "default_retention": BucketRetentionSetting(RetentionMode.COMPLIANCE, RetentionPeriod(days=days))}


class _B2BucketProvider(pulumi.dynamic.ResourceProvider):
    """CRUD for a private B2 bucket. Holds no state: the API is built per call by `_make_api()`."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.CheckResult:
        failures = []
        name = _plain(news.get("bucket_name"))
        if isinstance(name, str) and not b2_bucket_name_ok(name):
            failures.append(pulumi.dynamic.CheckFailure("bucket_name", f"B2 bucket names are {B2_BUCKET_RULE}"))
        days = _plain(news.get("hidden_file_retention_days"))
        if _is_known(days) and not (isinstance(days, (int, float)) and float(days).is_integer() and days >= 1):
            failures.append(pulumi.dynamic.CheckFailure("hidden_file_retention_days", "expected an integer >= 1"))
        prefix = _plain(news.get("file_name_prefix"))
        if _is_known(prefix) and not (isinstance(prefix, str) and prefix.endswith("/") and not prefix.startswith("/")):
            failures.append(
                pulumi.dynamic.CheckFailure(
                    "file_name_prefix",
                    "expected the repository's prefix such as 'pgbackrest/' (no leading '/', a trailing '/'): "
                    "the lifecycle rule is never bucket-wide",
                )
            )
        return pulumi.dynamic.CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        name = str(_plain(props["bucket_name"]))
        prefix = str(_plain(props["file_name_prefix"]))
        days = int(_plain(props["hidden_file_retention_days"]))
        lock_days = _lock_days(props)
        api = _make_api(_admin_env(props))
        with _b2_errors(f"lookup of bucket '{name}'"):
            existing = api.list_buckets(bucket_name=name)
        if existing:
            bucket = existing[0]
            rules = _merged_rules(bucket.lifecycle_rules, prefix, days)
            # B2 turns file lock on for an existing bucket too (b2_update_bucket fileLockEnabled).
            with _b2_errors(f"update of existing bucket '{name}' (with objectLockDays: file lock on)"
                            if lock_days else f"update of existing bucket '{name}'"):
                bucket.update(bucket_type=BUCKET_TYPE, lifecycle_rules=rules, **file_lock(lock_days))
            pulumi.log.info(
                f"B2 bucket '{name}' ({bucket.id_}) already exists in this account: adopted it, set it "
                f"{BUCKET_TYPE} (was {bucket.type_}) and set the lifecycle rule for '{prefix}' "
                f"(rules were {bucket.lifecycle_rules!r}, now {rules!r})"
            )
            return pulumi.dynamic.CreateResult(bucket.id_, _bucket_outputs(bucket.id_, name, prefix, days, lock_days,
                                                                           props))
        try:
            bucket = api.create_bucket(name, BUCKET_TYPE, lifecycle_rules=[_rule(prefix, days)],
                                       **({"is_file_lock_enabled": True} if lock_days else {}))
        except DuplicateBucketName as exc:
            raise B2ProviderError(
                f"B2 creation of bucket '{name}' failed: the name is taken, and not by this account "
                "(bucket names are global across B2); choose another bucket name"
            ) from exc
        except B2Error as exc:
            raise B2ProviderError(f"B2 creation of bucket '{name}' failed: {type(exc).__name__}: {exc}") from exc
        if lock_days:
            with _b2_errors(f"default retention of bucket '{name}'"):
                bucket.update(**file_lock(lock_days))
        pulumi.log.info(f"B2 bucket '{name}' ({bucket.id_}) created, {BUCKET_TYPE}"
                        + (f", file lock: {lock_days} days, compliance" if lock_days else ""))
        return pulumi.dynamic.CreateResult(bucket.id_, _bucket_outputs(bucket.id_, name, prefix, days, lock_days,
                                                                       props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        replaces = []
        if _plain(olds.get("bucket_name")) != _plain(news.get("bucket_name")):
            replaces.append("bucket_name")
        old_days = _plain(olds.get("hidden_file_retention_days"))
        new_days = _plain(news.get("hidden_file_retention_days"))
        days_changed = not (
            isinstance(old_days, (int, float)) and isinstance(new_days, (int, float)) and old_days == new_days
        )
        old_prefix, new_prefix = _plain(olds.get("file_name_prefix")), _plain(news.get("file_name_prefix"))
        prefix_changed = not (isinstance(new_prefix, str) and old_prefix == new_prefix)
        lock_changed = _lock_days(olds) != _lock_days(news) if _is_known(news.get("file_lock_days") or 0) else True
        return pulumi.dynamic.DiffResult(
            changes=bool(replaces) or days_changed or prefix_changed or lock_changed, replaces=replaces,
            delete_before_replace=False,
        )

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        name = str(_plain(news["bucket_name"]))
        prefix = str(_plain(news["file_name_prefix"]))
        days = int(_plain(news["hidden_file_retention_days"]))
        lock_days = _lock_days(news)
        api = _make_api(_admin_env(news))
        what = f"update of the lifecycle rules of bucket '{name}' ({id_})"
        with _b2_errors(what):
            found = api.list_buckets(bucket_id=id_)
            if not found:
                raise B2ProviderError(f"B2 {what} failed: the bucket is gone (run `pulumi refresh`)")
            rules = _merged_rules(found[0].lifecycle_rules, prefix, days, drop=_former_rule(olds))
            found[0].update(bucket_type=BUCKET_TYPE, lifecycle_rules=rules, **file_lock(lock_days))
        if _lock_days(olds) and not lock_days:
            pulumi.log.info(f"B2 bucket '{name}': objectLockDays is 0 now; its file lock and default retention stay "
                            "as they are (pgbackup never lifts a lock): change them by hand if new files should not "
                            "be locked")
        return pulumi.dynamic.UpdateResult(_bucket_outputs(id_, name, prefix, days, lock_days, news))

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        api = _make_api(_admin_env(props))
        with _b2_errors(f"read of bucket {id_}"):
            found = api.list_buckets(bucket_id=id_)
        if not found:
            return pulumi.dynamic.ReadResult("", {})
        bucket = found[0]
        prefix = str(_plain(props.get("file_name_prefix")) or "")
        return pulumi.dynamic.ReadResult(
            id_, _bucket_outputs(bucket.id_, str(bucket.name), prefix, _days_from_rules(bucket.lifecycle_rules, prefix),
                                 props=props)
        )

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        # Never delete: the bucket holds the backups. (B2 would refuse a non-empty bucket anyway.)
        pulumi.log.info(
            f"B2 bucket '{_plain(props.get('bucket_name'))}' ({id_}) retained: it holds the backups; "
            "it is only removed from the Pulumi state"
        )


# --- application key ------------------------------------------------------------------------------


def _capability_list(value: Any) -> list[str]:
    return [str(_plain(c)) for c in _plain(value)]


class _B2ApplicationKeyProvider(pulumi.dynamic.ResourceProvider):
    """CRUD for a B2 application key restricted to one bucket and a name prefix. Keys are immutable."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.CheckResult:
        failures = []
        key_name = _plain(news.get("key_name"))
        if isinstance(key_name, str) and not B2_KEY_NAME.fullmatch(key_name):
            failures.append(pulumi.dynamic.CheckFailure("key_name", "B2 key names are 1-100 letters, digits or '-'"))
        prefix = _plain(news.get("name_prefix"))
        if isinstance(prefix, str) and prefix.startswith("/"):
            failures.append(
                pulumi.dynamic.CheckFailure("name_prefix", "B2 file names have no leading '/': drop it from the prefix")
            )
        caps = _plain(news.get("capabilities"))
        if isinstance(caps, list) and not caps:
            failures.append(pulumi.dynamic.CheckFailure("capabilities", "at least one capability is needed"))
        refused = sorted({c for c in _capability_list(caps) if c not in ALLOWED_KEY_CAPABILITIES}) \
            if isinstance(caps, list) and all(isinstance(_plain(c), str) for c in caps) else []
        if refused:
            failures.append(
                pulumi.dynamic.CheckFailure(
                    "capabilities",
                    f"refused: {', '.join(refused)} (the node's key must not be able to remove file versions, "
                    f"change the bucket or make keys); allowed: {', '.join(sorted(ALLOWED_KEY_CAPABILITIES))}",
                )
            )
        return pulumi.dynamic.CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        key_name = str(_plain(props["key_name"]))
        bucket_id = str(_plain(props["bucket_id"]))
        prefix = _plain(props.get("name_prefix")) or ""
        capabilities = _capability_list(props["capabilities"])
        api = _make_api(_admin_env(props))
        with _b2_errors(f"creation of application key '{key_name}' for bucket {bucket_id}"):
            key = api.create_key(
                capabilities=capabilities,
                key_name=key_name,
                bucket_id=bucket_id,
                name_prefix=prefix or None,  # empty: the whole bucket
            )
        return pulumi.dynamic.CreateResult(
            key.id_,
            {
                "key_name": key_name,
                "bucket_id": bucket_id,
                "name_prefix": prefix,
                "capabilities": capabilities,
                "application_key_id": key.id_,
                "application_key": key.application_key,
                **_admin_env_output(props),
            },
        )

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        immutable = ("key_name", "bucket_id", "name_prefix")
        replaces = [prop for prop in immutable if _plain(olds.get(prop)) != _plain(news.get(prop))]
        old_caps, new_caps = _plain(olds.get("capabilities")), _plain(news.get("capabilities"))
        if not (
            isinstance(old_caps, list)
            and isinstance(new_caps, list)
            and all(isinstance(_plain(c), str) for c in new_caps)
            and sorted(_capability_list(old_caps)) == sorted(_capability_list(new_caps))
        ):
            replaces.append("capabilities")
        return pulumi.dynamic.DiffResult(changes=bool(replaces), replaces=replaces, delete_before_replace=False)

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        api = _make_api(_admin_env(props))
        with _b2_errors(f"read of application key '{_plain(props.get('key_name'))}' ({id_})"):
            key = api.get_key(id_)
        if key is None:
            return pulumi.dynamic.ReadResult("", {})
        # B2 never returns the secret again: keep the recorded outputs.
        return pulumi.dynamic.ReadResult(id_, props)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        what = f"application key '{_plain(props.get('key_name'))}' ({id_})"
        api = _make_api(_admin_env(props))
        try:
            with _b2_errors(f"deletion of {what}"):
                api.delete_key_by_id(id_)
        except B2ProviderError:
            try:
                gone = api.get_key(id_) is None
            except B2Error:
                gone = False
            if not gone:
                raise
            pulumi.log.info(f"B2 {what} was already deleted")


# --- resources ------------------------------------------------------------------------------------


@dataclass
class B2BucketArgs:
    """Inputs of `B2Bucket`. `file_name_prefix` is the repository's prefix ('pgbackrest/'): the lifecycle rule
    the bucket gets applies to it only; other rules of an adopted bucket are kept."""

    bucket_name: pulumi.Input[str]
    file_name_prefix: pulumi.Input[str]
    hidden_file_retention_days: pulumi.Input[int] = 30
    file_lock_days: pulumi.Input[int] = 0
    """objectLockDays: file lock on, every new version locked that many days (COMPLIANCE); 0: not set."""
    admin_env: Sequence[str] | None = None
    """The variables holding the admin key (names); None: B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY."""


@dataclass
class B2ApplicationKeyArgs:
    """Inputs of `B2ApplicationKey`. `name_prefix` has no leading '/', e.g. 'pgbackrest/'; '' is the whole bucket."""

    key_name: pulumi.Input[str]
    bucket_id: pulumi.Input[str]
    name_prefix: pulumi.Input[str] = ""
    capabilities: pulumi.Input[Sequence[pulumi.Input[str]]] = field(
        default_factory=lambda: list(DEFAULT_KEY_CAPABILITIES)
    )
    admin_env: Sequence[str] | None = None
    """The variables holding the admin key (names); None: B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY."""


class B2Bucket(pulumi.dynamic.Resource, module="b2", name="Bucket"):
    """A private B2 bucket (adopted if it already exists) whose versions hidden under the repository's prefix are
    removed `hidden_file_retention_days` later. Never deleted by Pulumi: it holds the backups."""

    bucket_id: pulumi.Output[str]
    bucket_name: pulumi.Output[str]
    file_name_prefix: pulumi.Output[str]
    hidden_file_retention_days: pulumi.Output[int]

    def __init__(self, resource_name: str, args: B2BucketArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        props: dict[str, Any] = {
            "bucket_name": args.bucket_name,
            "file_name_prefix": args.file_name_prefix,
            "hidden_file_retention_days": args.hidden_file_retention_days,
            "bucket_id": None,
        }
        if args.file_lock_days:  # absent when 0: the bucket's inputs are unchanged for a stack without a lock
            props["file_lock_days"] = args.file_lock_days
        if args.admin_env is not None:  # absent for repo1: its inputs are unchanged
            props["admin_env"] = list(args.admin_env)
        super().__init__(_B2BucketProvider(), resource_name, props, opts)


class B2ApplicationKey(pulumi.dynamic.Resource, module="b2", name="ApplicationKey"):
    """A B2 application key for one bucket and prefix; `application_key` is a secret output."""

    application_key_id: pulumi.Output[str]
    application_key: pulumi.Output[str]
    key_name: pulumi.Output[str]
    bucket_id: pulumi.Output[str]
    name_prefix: pulumi.Output[str]
    capabilities: pulumi.Output[list[str]]

    def __init__(
        self, resource_name: str, args: B2ApplicationKeyArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props = {
            "key_name": args.key_name,
            "bucket_id": args.bucket_id,
            "name_prefix": args.name_prefix,
            "capabilities": args.capabilities,
            "application_key_id": None,
            "application_key": None,
        }
        if args.admin_env is not None:
            props["admin_env"] = list(args.admin_env)
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["application_key"]))
        super().__init__(_B2ApplicationKeyProvider(), resource_name, props, opts)
