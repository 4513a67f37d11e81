"""`pgbackup repository undelete` (pgbackup_cli/undelete.py) against moto's S3 server on a versioned bucket:
the files an intruder hid (delete markers written after --before) show again, exactly those, in DeleteObjects
batches of at most 1000; markers at or before --before stay; refusals touch nothing; the administrator's key
(sentinel values) appears in no printed line and no process's arguments."""

from __future__ import annotations

import logging
import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer

from pgbackup_cli import cli, operations, undelete
from pgbackup_cli.cluster import Cluster
from pgbackup_cli.remote import Result
from pgbackup_cli.stack import load_stack
from tests.test_object_lock import locked_s3  # noqa: F401 -- the fixture
from tests.test_storage import BUCKET as STORAGE_BUCKET
from tests.test_storage import PREFIX as STORAGE_PREFIX
from tests.test_storage import WAL

ROOT = Path(__file__).resolve().parent.parent
KEY_ID = "SENTINEL-UNDELETE-ADMIN-KEY-ID"
SECRET = "SENTINEL-UNDELETE-ADMIN-SECRET"
PREFIX = "lab/"  # Pulumi.lab.yaml's repoPath /lab, without its leading slash
BUCKETS = count()


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class Repo:
    """A bucket of its own on moto, the lab's stack file pointing at it, the command's calls recorded."""

    def __init__(self, url: str, tmp_path: Path, versioned: bool = True) -> None:
        self.bucket = f"undelete-{next(BUCKETS)}-{int(time.time() * 1000)}"
        self.s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup",
                               aws_secret_access_key="setup-secret", config=BotoConfig(s3={"addressing_style": "path"}))
        self.s3.create_bucket(Bucket=self.bucket)
        if versioned:
            self.s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        config = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())
        config["config"]["pgbackup:storage"]["bucket"] = self.bucket
        (tmp_path / "Pulumi.lab.yaml").write_text(yaml.safe_dump(config))
        self.dir = tmp_path
        self.batches: list[int] = []
        self.healed: list[int] = []
        self.clients = 0

    def put(self, *keys: str) -> None:
        for key in keys:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=f"content of {key}".encode())

    def delete(self, keys: list[str], times: int = 1) -> None:
        """Deletes by name (what a node's key can do): delete markers."""
        for _ in range(times):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys]})

    def visible(self, prefix: str = "") -> dict[str, bytes]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents") or []]
        return {k: self.s3.get_object(Bucket=self.bucket, Key=k)["Body"].read() for k in keys}

    def everything(self) -> list[tuple[str, str, bool]]:
        """Every version and marker in the bucket: (key, version id, is a marker)."""
        pages = self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket)
        return sorted([(v["Key"], v["VersionId"], False) for p in pages for v in p.get("Versions") or []]
                      + [(m["Key"], m["VersionId"], True)
                         for p in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket)
                         for m in p.get("DeleteMarkers") or []])

    def markers(self) -> list[tuple[str, datetime]]:
        pages = self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket)
        return [(m["Key"], m["LastModified"]) for p in pages for m in p.get("DeleteMarkers") or []]


@pytest.fixture
def repo(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    """The command's S3 client goes to moto (the endpoint is the only change), its DeleteObjects batches are
    counted, and the cluster's part (check, full backup) is recorded instead of run (tested below)."""
    made = Repo(moto_url, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setattr(undelete, "endpoint_url", lambda _storage: moto_url)
    real_client = undelete.client

    @contextmanager
    def counted(storage: Any, key_id: str, secret: str) -> Iterator[Any]:
        made.clients += 1
        with real_client(storage, key_id, secret) as s3:
            assert s3.meta.endpoint_url == moto_url
            s3.meta.events.register("provide-client-params.s3.DeleteObjects",
                                    lambda params, **_: made.batches.append(len(params["Delete"]["Objects"])))
            yield s3

    monkeypatch.setattr(undelete, "client", counted)

    def healthy_again(_cluster: Any, where: undelete.Location, _say: Any) -> bool:
        made.healed.append(where.repo)
        return True

    monkeypatch.setattr(undelete, "healthy_again", healthy_again)
    return made


def undelete_cli(repo: Repo, before: str, *extra: str) -> int:
    return cli.main(["repository", "undelete", "-s", "lab", "-C", str(repo.dir), "--before", before, *extra])


def next_second() -> None:
    """S3 dates versions to the second: what follows is dated after what came before."""
    time.sleep(1.02 - time.time() % 1)


def test_undelete_shows_exactly_the_hidden_files_again_in_batches_of_1000(
        repo: Repo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[str] = []
    real_popen_init = subprocess.Popen.__init__

    def recording_popen(self: Any, args: Any, *more: Any, **kw: Any) -> None:
        spawned.append(str(args) + str(kw.get("env")))
        real_popen_init(self, args, *more, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording_popen)
    files = [f"{PREFIX}archive/lab/17-1/0000000100000000/seg-{n:03}" for n in range(48)]
    files += [f"{PREFIX}backup/lab/backup.info", f"{PREFIX}archive/lab/archive.info"]
    outside = ["other/file", "lab-sibling/file"]  # not under the prefix lab/
    repo.put(*files, *outside, f"{PREFIX}archive/lab/expired-by-pgbackrest")
    repo.delete([f"{PREFIX}archive/lab/expired-by-pgbackrest"])  # pgBackRest's own expiry, before the deletion
    (own_marker,) = repo.markers()
    next_second()
    # The intruder, after the time given: every file hidden, 21 times over (1050 markers, two batches), and the
    # files outside the prefix too.
    repo.delete(files, times=21)
    repo.delete(outside)
    assert repo.visible() == {}
    before = own_marker[1].isoformat()  # at the last marker to keep: "after" is strictly after

    assert undelete_cli(repo, before) == 0

    assert repo.visible() == {k: f"content of {k}".encode() for k in files}
    # Only the markers after --before under the prefix are removed: pgBackRest's own, and those outside, stay.
    assert own_marker in repo.markers()
    assert sorted(k for k, _ in repo.markers()) == sorted([own_marker[0], *outside])
    assert repo.batches == [1000, 50]
    assert repo.healed == [1]
    out, err = capsys.readouterr()
    assert "prefix lab/ (repoPath /lab without its leading slash)" in out
    assert "1050 written after" in out
    assert "50 files hidden by them" in out
    assert "1 at or before it" in out
    assert "removed 1000 of 1050 delete markers\nremoved 1050 of 1050 delete markers\n" in out
    assert "pulumi config set --path pgbackup:storage.keyGeneration 1 -s lab" in out
    assert out.index("removed 1050") < out.index("keyGeneration 1")
    for text in (out, err, *spawned):
        assert KEY_ID not in text
        assert SECRET not in text


def test_dry_run_lists_the_markers_and_touches_nothing(repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    repo.put(f"{PREFIX}backup/lab/backup.info", f"{PREFIX}a\u202eb")  # a key with a bidirectional override
    before = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
    repo.delete([f"{PREFIX}backup/lab/backup.info", f"{PREFIX}a\u202eb"])
    state = repo.everything()
    assert undelete_cli(repo, before, "--dry-run") == 0
    assert repo.everything() == state
    assert repo.batches == []
    assert repo.healed == []
    out, _ = capsys.readouterr()
    assert f"would remove the delete marker of {PREFIX}backup/lab/backup.info (written " in out
    assert f"would remove the delete marker of {PREFIX}a\\u202eb (written " in out  # escaped, not obeyed
    assert "dry run: nothing removed" in out


@pytest.mark.parametrize(("case", "expected"), [
    ("no versioning", "bucket 'undelete-"),
    ("unparseable", "--before 'yesterday': expected a time with its zone"),
    ("no zone", "--before '2026-11-20 14:00:00': give the time zone too"),
    ("future", "is in the future"),
    ("no key", "needs the storage administrator's key in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (not set: "
               "AWS_SECRET_ACCESS_KEY)"),
])
def test_refusals_touch_nothing(case: str, expected: str, moto_url: str, tmp_path: Path,
                                repo: Repo, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = Repo(moto_url, tmp_path, versioned=False) if case == "no versioning" else repo
    target.batches, target.healed = repo.batches, repo.healed
    target.put(f"{PREFIX}backup/lab/backup.info", f"{PREFIX}archive/lab/archive.info")
    before = {"unparseable": "yesterday", "no zone": "2026-11-20 14:00:00",
              "future": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()}.get(
        case, (datetime.now(UTC) - timedelta(seconds=2)).isoformat())
    target.delete([f"{PREFIX}backup/lab/backup.info"])
    if case == "no key":
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    state = target.everything()
    assert undelete_cli(target, before) == 3
    assert target.everything() == state
    assert repo.batches == []
    assert repo.healed == []
    if case != "no versioning":
        assert repo.clients == 0, "refused before any request"
    out, err = capsys.readouterr()
    assert expected in err, err
    assert "nothing touched" in err
    if case == "no versioning":
        assert "has no versioning (status: never enabled)" in err
    for text in (out, err):
        assert KEY_ID not in text
        assert SECRET not in text


def test_the_endpoint_prefix_and_key_of_each_repository(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]
    config["pgbackup:storage"] = {"provider": "b2", "region": "us-west-004", "bucket": "pgbackups-x",
                                  "repoPath": "/pgbackrest"}
    config["pgbackup:offsite"] = {"provider": "wasabi", "region": "eu-central-2", "bucket": "pgbackups-y",
                                  "repoPath": "/deep/repo"}
    (tmp_path / "Pulumi.x.yaml").write_text(yaml.safe_dump({"config": config}))
    stack = load_stack("x", tmp_path)
    one, two = undelete.location(stack, 1), undelete.location(stack, 2)
    assert (undelete.endpoint_url(one.storage), one.prefix, one.env) == (
        "https://s3.us-west-004.backblazeb2.com", "pgbackrest/", ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY"))
    assert (undelete.endpoint_url(two.storage), two.prefix, two.env) == (
        "https://s3.eu-central-2.wasabisys.com", "deep/repo/",
        ("PGBACKUP_OFFSITE_AWS_ACCESS_KEY_ID", "PGBACKUP_OFFSITE_AWS_SECRET_ACCESS_KEY"))
    lab = load_stack("lab", ROOT)
    assert undelete.location(lab, 2).prefix == "lab/monthly/"  # nested in repo1's bucket
    with undelete.client(one.storage, "id", "secret") as s3:
        assert s3.meta.endpoint_url == "https://s3.us-west-004.backblazeb2.com"
        assert s3.meta.config.s3["addressing_style"] == "virtual"


class FakeNode:
    def __init__(self, statuses: list[int], scripts: list[str]) -> None:
        self.statuses, self.scripts = statuses, scripts

    def run(self, script: str, stdin: str = "", timeout: float = 600, on_output: Any = None) -> Result:
        self.scripts.append(script)
        return Result(self.statuses.pop(0), "", "ERROR: [082]: WAL segment was not archived")


class FakeCluster(Cluster):
    def __init__(self, statuses: list[int]) -> None:
        self.stack = load_stack("lab", ROOT)
        self.scripts: list[str] = []
        self.q = shlex.quote
        self.fake = FakeNode(statuses, self.scripts)

    def members(self, prefer: str | None = None) -> list[dict[str, Any]]:
        return [{"Member": "pgnode2", "Role": "Leader", "State": "running"},
                {"Member": "pgnode1", "Role": "Replica", "State": "streaming"}]

    def node(self, name: str) -> Any:
        assert name == "pgnode2"
        return self.fake


@pytest.mark.parametrize("checks", [[0], [82, 0]])
def test_healthy_again_checks_on_the_leader_then_takes_full_backups_through_the_units(
        checks: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    backups: list[tuple[str, int]] = []

    def backup(_cluster: Any, pg_type: str, repo: int, _say: Any) -> int:
        backups.append((pg_type, repo))
        return 0

    monkeypatch.setattr(operations, "backup", backup)
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    cluster = FakeCluster(list(checks))
    lines: list[str] = []
    assert undelete.healthy_again(cluster, undelete.location(cluster.stack, 1), lines.append) is True
    assert len(cluster.scripts) == len(checks)
    assert all("pgbackrest --stanza=lab --log-level-console=warn check" in s for s in cluster.scripts)
    assert backups == [("full", 1), ("full", 2)]  # repo2 lies under repo1's prefix in the lab's stack
    assert lines[-1] == "pgnode2 (leader): pgbackrest check passed"


def test_no_backup_while_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    backups: list[int] = []

    def backup(_cluster: Any, _pg_type: str, repo: int, _say: Any) -> int:
        backups.append(repo)
        return 0

    monkeypatch.setattr(operations, "backup", backup)
    monkeypatch.setattr(undelete, "CHECK_WAIT", 0)
    cluster = FakeCluster([82])
    lines: list[str] = []
    assert undelete.healthy_again(cluster, undelete.location(cluster.stack, 1), lines.append) is False
    assert backups == []
    assert lines == ["pgnode2 (leader): pgbackrest check failed (exit 82): ERROR: [082]: WAL segment was not "
                     "archived"]


def test_the_administrator_removes_the_markers_of_a_locked_bucket_the_node_key_cannot(
        request: pytest.FixtureRequest) -> None:
    """Against moto with authentication and Object Lock (COMPLIANCE): markers are not locked, so the command's
    DeleteObjects by version id, with the administrator's key, shows the locked file again; the node's key
    (pgbackup's repository policy) is refused the same request."""
    admin, node = request.getfixturevalue("locked_s3")  # tests/test_object_lock.py's
    node.put_object(Bucket=STORAGE_BUCKET, Key=WAL, Body=b"wal")
    before = datetime.now(UTC) - timedelta(seconds=2)
    assert node.delete_object(Bucket=STORAGE_BUCKET, Key=WAL)["DeleteMarker"] is True
    storage = load_stack("lab", ROOT).storage.model_copy(update={"bucket": STORAGE_BUCKET})
    where = undelete.Location(1, "pgbackup:storage", storage, f"/{STORAGE_PREFIX}", ("A", "B"))
    lines: list[str] = []
    found = undelete.list_markers(admin, where, before, lines.append)
    assert [key for key, _, _ in found.after] == [WAL]
    assert undelete.remove(node, STORAGE_BUCKET, found.after, lines.append) != []  # the node's key: refused
    assert undelete.remove(admin, STORAGE_BUCKET, found.after, lines.append) == []
    assert admin.get_object(Bucket=STORAGE_BUCKET, Key=WAL)["Body"].read() == b"wal"
    assert lines == ["removed 0 of 1 delete markers (1 failed)", "removed 1 of 1 delete markers"]
