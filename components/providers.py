"""What pgbackup knows of each storage provider, in one place: where its S3 and IAM APIs live, how its
buckets are addressed by default, and Backblaze B2's naming rules. The provider-specific resources are in
components/storage.py (and components/b2.py for B2's native API)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    endpoint: str | None
    """Its S3 endpoint (host), `{region}` filled in; None: pgbackup:storage.endpoint is required."""
    uri_style: str
    """How buckets are addressed by default: host (bucket.endpoint) or path (endpoint/bucket)."""
    region: str | None
    """The default region; None: pgbackup:storage.region is required."""
    iam: tuple[str, str] | None = None
    """Its IAM API (URL, signing region) when that is not the S3 endpoint."""


PROVIDERS: dict[str, Provider] = {
    "b2": Provider("s3.{region}.backblazeb2.com", "host", None),
    "wasabi": Provider("s3.{region}.wasabisys.com", "host", None, ("https://iam.wasabisys.com", "us-east-1")),
    "minio": Provider(None, "path", "us-east-1"),
    "s3": Provider(None, "path", None),
}

# B2's naming rules (b2_create_bucket, b2_create_key). The S3-compatible rule (lower case only) is checked
# before these for a bucket pgbackup names.
B2_BUCKET_RULE = "6-63 letters, digits or '-', not starting with 'b2-'"
_B2_BUCKET_NAME = re.compile(r"[A-Za-z0-9-]{6,63}")
B2_KEY_NAME = re.compile(r"[A-Za-z0-9-]{1,100}")


def b2_bucket_name_ok(name: str) -> bool:
    return bool(_B2_BUCKET_NAME.fullmatch(name)) and not name.lower().startswith("b2-")
