"""`pgbackup repository undelete`: the repository as it was before a deletion (README, "After a deletion").

A key that may only add delete markers (the node's, on a versioned bucket; every version kept, locked with
objectLockDays) can hide every file under the repository's prefix. With the storage administrator's key from the
environment this removes the delete markers written after `--before` under that prefix (the repository's
`repoPath` without its leading slash), so that each file's newest real version shows again; markers written at
or before it (pgBackRest's own expiry) stay. Batched DeleteObjects (1000 keys a request) on the provider's own
S3 endpoint (B2 through its S3 API too). Then `pgbackrest check` and a full backup on the leader, through the
lock the backup units share (operations.backup), and what to do about the stolen key, in the order that works.

Refused, with nothing touched (exit 3): an unparseable or future `--before`, no administrator's key in the
environment, a bucket without versioning, a repository the stack does not have.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from components.config import StorageConfig
from components.providers import admin_env
from components.s3client import s3_client
from pgbackup_cli import operations
from pgbackup_cli.cluster import Cluster
from pgbackup_cli.remote import RemoteError
from pgbackup_cli.stack import Stack

BATCH = 1000
"""Keys per DeleteObjects request: S3's limit (B2, Wasabi and MinIO have the same)."""
CHECK_WAIT = 300
"""Seconds `pgbackrest check` is tried again for: archive-push first gets past the errors it recorded while the
files were hidden (its asynchronous process waits archive-timeout), then the WAL kept in pg_wal goes out."""


class UndeleteRefused(Exception):
    """Refused before anything was touched; the message says why and what to do."""


@dataclass(frozen=True)
class Location:
    repo: int
    setting: str
    """pgbackup:storage or pgbackup:offsite: whose bucket, key and keyGeneration."""
    storage: StorageConfig
    repo_path: str
    env: tuple[str, str]
    """The variables holding the administrator's key (names)."""

    @property
    def prefix(self) -> str:
        """The object-key prefix: repoPath without its leading slash, with a trailing one ('' for '/')."""
        path = self.repo_path.strip("/")
        return f"{path}/" if path else ""


def location(stack: Stack, repo: int) -> Location:
    storage = stack.storage
    if repo == 1:
        return Location(1, "pgbackup:storage", storage, storage.repo_path, admin_env(storage.provider))
    if repo == 2 and stack.retention.monthly:
        if stack.offsite is not None:
            offsite = stack.offsite
            return Location(2, "pgbackup:offsite", offsite, offsite.monthly_repo_path,
                            admin_env(offsite.provider, offsite=True))
        return Location(2, "pgbackup:storage", storage, storage.monthly_repo_path, admin_env(storage.provider))
    raise UndeleteRefused(f"--repo {repo}: stack {stack.name} has no repo{repo} (repo2 holds the monthly "
                          "archives, with pgbackup:retention.monthly above 0)")


def parse_before(text: str, now: datetime | None = None) -> datetime:
    """`--before`: a time with its zone, not in the future."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UndeleteRefused(f"--before {text!r}: expected a time with its zone before the deletion, such as "
                              "'2026-11-20 14:00:00+00'; nothing touched") from None
    if moment.tzinfo is None:
        raise UndeleteRefused(f"--before {text!r}: give the time zone too, e.g. '{text}+00' (UTC); nothing touched")
    now = now or datetime.now(UTC)
    if moment > now:
        raise UndeleteRefused(f"--before {text!r} is in the future (now {now.astimezone(UTC):%Y-%m-%d %H:%M:%S}+00):"
                              " give a time before the deletion; nothing touched")
    return moment.astimezone(UTC)


def credentials(where: Location, environ: Mapping[str, str]) -> tuple[str, str]:
    id_name, secret_name = where.env
    key_id, secret = environ.get(id_name, "").strip(), environ.get(secret_name, "").strip()
    if not key_id or not secret:
        missing = ", ".join(n for n, v in ((id_name, key_id), (secret_name, secret)) if not v)
        raise UndeleteRefused(f"{where.setting}: removing delete markers from bucket '{where.storage.bucket}' needs "
                              f"the storage administrator's key in {id_name} and {secret_name} (not set: {missing}); "
                              "the node's key cannot remove a version; nothing touched")
    return key_id, secret


def endpoint_url(storage: StorageConfig) -> str:
    """The provider's S3 API (pgBackRest's: HTTPS only)."""
    return f"https://{storage.endpoint}"


@contextmanager
def client(storage: StorageConfig, key_id: str, secret: str) -> Iterator[Any]:
    """An S3 client of the bucket's endpoint, its private CA trusted if any."""
    with s3_client(endpoint_url(storage), storage.region, key_id, secret, verify_tls=storage.verify_tls,
                   ca_cert=storage.ca_cert, path_style=storage.uri_style == "path",
                   retries={"max_attempts": 5, "mode": "standard"}) as s3:
        yield s3


@dataclass
class Markers:
    """What the listing found under the prefix."""

    after: list[tuple[str, str, datetime]] = field(default_factory=list)
    """(key, version id, written) of each delete marker written after --before: removed."""
    kept: int = 0
    """Delete markers written at or before --before (pgBackRest's own deletions): left."""
    versions: int = 0
    hidden: set[str] = field(default_factory=set)
    """Keys whose newest entry is a marker after --before: shown again once it is removed."""


def _failure(error: Exception) -> str:
    if isinstance(error, ClientError):
        detail = error.response.get("Error", {})
        return f"{detail.get('Code', '?')}: {detail.get('Message', '')}".strip()
    return type(error).__name__ + (f": {error}" if str(error) else "")


def list_markers(s3: Any, where: Location, before: datetime, say: Callable[[str], None]) -> Markers:
    found = Markers()
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=where.storage.bucket, Prefix=where.prefix)
    for page in pages:
        found.versions += len(page.get("Versions") or [])
        for marker in page.get("DeleteMarkers") or []:
            if marker["LastModified"] > before:
                found.after.append((marker["Key"], marker["VersionId"], marker["LastModified"]))
                if marker.get("IsLatest"):
                    found.hidden.add(marker["Key"])
            else:
                found.kept += 1
        if page.get("IsTruncated"):
            say(f"listed {found.versions} versions and {len(found.after) + found.kept} delete markers ...")
    return found


def remove(s3: Any, bucket: str, markers: list[tuple[str, str, datetime]], say: Callable[[str], None]) -> list[str]:
    """DeleteObjects of each marker by its version id, BATCH at a time; the failures, described."""
    failures: list[str] = []
    done = 0
    for start in range(0, len(markers), BATCH):
        batch = markers[start:start + BATCH]
        answer = s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": key, "VersionId": version} for key, version, _ in batch], "Quiet": True})
        errors = answer.get("Errors") or []
        failures += [f"{e.get('Key')} ({e.get('VersionId')}): {e.get('Code')}: {e.get('Message', '')}" for e in errors]
        done += len(batch) - len(errors)
        say(f"removed {done} of {len(markers)} delete markers" + (f" ({len(failures)} failed)" if failures else ""))
    return failures


def key_advice(stack: Stack, where: Location) -> list[str]:
    """What to do about the key that wrote the markers, in the order that works."""
    storage = where.storage
    key = "offsite" if where.setting == "pgbackup:offsite" else "storage"
    lines = ["The key that wrote the markers (the node's repository key, in every node's pgbackrest.conf) is still "
             "valid. Now, in this order (the markers are gone, so the rotation's stanza-create and check pass; "
             "rotating before this command stops at stanza-create with error 40 and leaves the stolen key valid):",
             "  1. remove the intruder from the node(s) the key was read on;"]
    if storage.create:
        generation = storage.key_generation + 1
        lines += [f"  2. pulumi config set --path pgbackup:{key}.keyGeneration {generation} -s {stack.name}",
                  f"     pulumi up -s {stack.name}   (the new key is pushed and proven by `pgbackrest check` on "
                  "every node, then the stolen key is deleted: README \"Key rotation\")",
                  f"  3. check that the old key is gone: the provider's key list has no key named "
                  f"pgbackup-{stack.name}-{stack.cluster.stanza}{'-offsite' if key == 'offsite' else ''}"
                  + (f"-g{storage.key_generation}" if storage.key_generation else "")
                  + f"; then `pgbackup status -s {stack.name}`"]
    else:
        access = "offsiteAccessKeyId" if key == "offsite" else "accessKeyId"
        secret = "offsiteSecretAccessKey" if key == "offsite" else "secretAccessKey"
        lines += [f"  2. {key}.create is false, the key is yours: create a new key for bucket '{storage.bucket}', "
                  f"set it in pgbackup:{access} / pgbackup:{secret} (pulumi config set --secret), pulumi up -s "
                  f"{stack.name};",
                  "  3. once that apply succeeded, delete the stolen key at the provider yourself"]
    return lines


def _check(cluster: Cluster, leader: str, say: Callable[[str], None]) -> bool:
    deadline = time.monotonic() + CHECK_WAIT
    while True:
        result = cluster.node(leader).run(cluster.pgbackrest("--log-level-console=warn check"), timeout=CHECK_WAIT)
        if result.status == 0:
            say(f"{leader} (leader): pgbackrest check passed")
            return True
        last = (result.err.strip() or result.out.strip()).splitlines()[-1:] or ["(no output)"]
        if time.monotonic() >= deadline:
            say(f"{leader} (leader): pgbackrest check failed (exit {result.status}): {last[0]}")
            return False
        say(f"{leader} (leader): pgbackrest check failed (exit {result.status}), archiving may still be catching "
            f"up; again in 20 s: {last[0]}")
        time.sleep(20)


def healthy_again(cluster: Cluster, where: Location, say: Callable[[str], None]) -> bool:
    """`pgbackrest check` on the leader, then a full backup of each repository under the prefix, through the
    backup units' lock."""
    leader = Cluster.leader_of(cluster.members())
    if leader is None:
        say("Patroni reports no running leader: no check nor backup can run")
        return False
    if not _check(cluster, leader, say):
        return False
    repos = [where.repo]
    stack = cluster.stack
    if where.repo == 1 and stack.retention.monthly and stack.offsite is None:
        repos.append(2)  # repo2 lies under repo1's prefix: its markers were removed too
    return all(operations.backup(cluster, "full", repo, say) == 0 for repo in repos)


def run(stack: Stack, repo: int, before_text: str, dry_run: bool, say: Callable[[str], None],
        cluster: Callable[[], Cluster], environ: Mapping[str, str]) -> int:
    where = location(stack, repo)
    before = parse_before(before_text)
    key_id, secret = credentials(where, environ)
    bucket = where.storage.bucket
    shown_prefix = where.prefix or "(the whole bucket)"
    say(f"repo{where.repo}: bucket '{bucket}' at {endpoint_url(where.storage)}, prefix {shown_prefix} "
        f"(repoPath {where.repo_path} without its leading slash)")
    with client(where.storage, key_id, secret) as s3:
        try:
            status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
        except (ClientError, BotoCoreError) as error:
            raise UndeleteRefused(f"{where.setting}: cannot read the versioning of bucket '{bucket}' with the key in "
                                  f"{where.env[0]}: {_failure(error)}; nothing touched") from None
        if status != "Enabled":
            raise UndeleteRefused(f"{where.setting}: bucket '{bucket}' has no versioning (status: "
                                  f"{status or 'never enabled'}): a delete there removed the files for good and "
                                  "there is no delete marker to remove; nothing touched")
        try:
            found = list_markers(s3, where, before, say)
        except (ClientError, BotoCoreError) as error:
            raise UndeleteRefused(f"{where.setting}: listing the versions under {shown_prefix} failed: "
                                  f"{_failure(error)}; nothing touched") from None
        say(f"{found.versions} versions; {len(found.after) + found.kept} delete markers: {len(found.after)} written "
            f"after {before:%Y-%m-%d %H:%M:%S}+00 ({len(found.hidden)} files hidden by them), {found.kept} at or "
            "before it (pgBackRest's own deletions: left)")
        if dry_run:
            for key, _version, written in found.after:
                say(f"would remove the delete marker of {key} (written {written.astimezone(UTC):%Y-%m-%d %H:%M:%S}+00)")
            say("dry run: nothing removed; without --dry-run, then `pgbackrest check` and a full backup on the leader")
            return 0
        if not found.after:
            say("no delete marker after that time: nothing to remove")
        try:
            failures = remove(s3, bucket, found.after, say)
        except (ClientError, BotoCoreError) as error:
            failures = [f"DeleteObjects: {_failure(error)}"]
    if failures:
        for line in failures[:20]:
            say(f"not removed: {line}")
        say(f"{len(failures)} delete markers were not removed: run the same command again (markers already removed "
            "are not listed again)")
        return 1
    try:
        ok = healthy_again(cluster(), where, say)
    except RemoteError as error:
        say(f"the markers are removed, but the cluster could not be reached: {error}")
        ok = False
    if not ok:
        say(f"then run `pgbackup backup -s {stack.name} --type full --repo {where.repo}` once `pgbackrest check` "
            "passes on the leader")
    for line in key_advice(stack, where):
        say(line)
    return 0 if ok else 1
