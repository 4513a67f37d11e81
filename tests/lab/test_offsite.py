"""End to end: pgbackup:offsite, repo2 at a second S3 with its own bucket and key. In a module of its own: a
fresh lab, as on its own it passed on both releases, whatever test_lab.py's long story left behind."""

from __future__ import annotations

import copy

import boto3
from botocore.exceptions import ClientError

from lab.control import STANZA, AuthenticatedS3, Lab
from tests.lab.test_lab import backups, unit_result


def test_the_newest_monthly_archive_restores_from_the_offsite_copy_alone(lab: Lab) -> None:
    """pgbackup:offsite: repo2 in its own bucket with its own key at a second S3 (moto checking signatures, its
    own port), repo1 in a bucket of the lab's S3. With repo1's bucket deleted outright (every version, then the
    bucket), the newest monthly archive restores from repo2 alone."""
    s3 = AuthenticatedS3(lab, bucket="pgbackup-offhost", prefix="archives", port=9447, moto_port=9104, admin=True)
    stack = copy.deepcopy(lab.stack())
    stack["pgbackup:storage"]["bucket"] = "pgbackup-repo1-only"
    stack["pgbackup:offsite"] = {"provider": "s3", "endpoint": s3.endpoint, "region": "us-east-1",
                                 "bucket": "pgbackup-offsite", "repoPath": "/archives",
                                 "caCert": stack["pgbackup:storage"]["caCert"]}
    admin = s3.admin_env(offsite=True)  # PGBACKUP_OFFSITE_AWS_*: repo1 keeps the lab S3's own AWS_*
    try:
        applied = lab.apply(stack, env=admin)
        assert applied["outputs"]["stanzaStatus"] == {"code": 0, "message": "ok"}
        assert applied["outputs"]["offsite"]["bucket"] == "pgbackup-offsite"
        leader = lab.leader()
        conf = dict(line.split("=", 1) for line in lab.ssh(leader, "cat /etc/pgbackrest/pgbackrest.conf").stdout
                    .splitlines() if line.startswith("repo"))
        assert {k: conf[f"repo2-{k}"] for k in ("s3-bucket", "s3-endpoint", "storage-port", "path")} == {
            "s3-bucket": "pgbackup-offsite", "s3-endpoint": "localhost", "storage-port": "9447", "path": "/archives"}
        assert conf["repo1-s3-bucket"] == "pgbackup-repo1-only"
        assert conf["repo2-s3-key"] != conf["repo1-s3-key"]
        lab.sql(leader, "DROP TABLE IF EXISTS offsite; CREATE TABLE offsite (batch text)")
        lab.sql(leader, "INSERT INTO offsite SELECT 'in-the-archive' FROM generate_series(1, 10)")
        lab.ssh(leader, "systemctl start pgbackup-backup-monthly.service")
        assert unit_result(lab, leader, "pgbackup-backup-monthly.service") == "success"
        label = backups(lab, repo=2)[-1]["label"]
        offsite_key = s3.client_as(*s3.admin)  # type: ignore[misc]
        stored = [o["Key"] for page in offsite_key.get_paginator("list_objects_v2").paginate(
            Bucket="pgbackup-offsite", Prefix=f"archives/backup/{STANZA}/") for o in page.get("Contents", [])]
        assert any(f"/{label}/" in key for key in stored), stored

        # repo1's bucket deleted outright, at the lab's S3 (every version and marker, then the bucket).
        repo1 = boto3.client("s3", endpoint_url="https://localhost:9443", region_name="us-east-1",
                             aws_access_key_id="labadmin", aws_secret_access_key=lab.env["AWS_SECRET_ACCESS_KEY"],
                             verify=lab.env["LAB_CA_FILE"])
        # The cluster archives on meanwhile: what it added since the listing goes in the next round.
        for attempt in range(10):
            for page in repo1.get_paginator("list_object_versions").paginate(Bucket="pgbackup-repo1-only"):
                for version in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    repo1.delete_object(Bucket="pgbackup-repo1-only", Key=version["Key"],
                                        VersionId=version["VersionId"])
            try:
                repo1.delete_bucket(Bucket="pgbackup-repo1-only")
                break
            except ClientError as error:
                if error.response["Error"]["Code"] != "BucketNotEmpty" or attempt == 9:
                    raise
        assert "pgbackup-repo1-only" not in [b["Name"] for b in repo1.list_buckets()["Buckets"]]

        counts = lab.restored_copy_says(lab.replicas()[0],
                                        f"--repo=2 --set={label} --type=immediate --target-action=promote",
                                        "SELECT batch || '=' || count(*) FROM offsite GROUP BY batch")
        assert counts.split() == ["in-the-archive=10"]
    finally:
        try:
            lab.apply(env=admin)  # the default stack again, while the offsite S3 still answers
        finally:
            s3.close()
