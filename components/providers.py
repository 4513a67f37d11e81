"""What pgbackup knows of each storage provider, in one place: where its S3 and IAM APIs live, how its
buckets are addressed by default, and Backblaze B2's naming rules. The provider-specific resources are in
components/storage.py (and components/b2.py for B2's native API)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    """What a provider charges to store data, as published on the date given (storage only: no requests,
    egress or minimums). Override with pgbackup:storage.pricePerTbMonth."""

    usd_per_tb_month: float
    as_of: str
    note: str = ""


@dataclass(frozen=True)
class Provider:
    endpoint: str | None
    """Its S3 endpoint (host), `{region}` filled in; None: pgbackup:storage.endpoint is required."""
    uri_style: str
    """How buckets are addressed by default: host (bucket.endpoint) or path (endpoint/bucket)."""
    region: str | None
    """The default region; None: pgbackup:storage.region is required."""
    price: Price
    """Its storage price, for the storageCost output's estimate."""
    iam: tuple[str, str] | None = None
    """Its IAM API (URL, signing region) when that is not the S3 endpoint."""


# Prices: the providers' list prices for storage, in USD per TB (10^12 bytes) and month, as of the date given.
PROVIDERS: dict[str, Provider] = {
    "b2": Provider("s3.{region}.backblazeb2.com", "host", None, Price(6.00, "2026-04", "first 10 GB free")),
    "wasabi": Provider("s3.{region}.wasabisys.com", "host", None,
                       Price(6.99, "2026-04", "billed for at least 1 TB and 90 days per object"),
                       iam=("https://iam.wasabisys.com", "us-east-1")),
    "minio": Provider(None, "path", "us-east-1", Price(0.0, "2026-04", "self-hosted: set pricePerTbMonth")),
    "s3": Provider(None, "path", None, Price(23.0, "2026-04", "AWS S3 Standard, us-east-1, first 50 TB")),
}

# The storage administrator's key (it creates the bucket and the node's key): the environment variables of
# `pulumi` that hold it, per provider, as each provider's own tools name them. Read at call time (B2's and the
# Object Lock's dynamic providers) or by the provider plugin (pulumi-aws, pulumi-minio) for pgbackup:storage.
_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
ADMIN_ENV: dict[str, tuple[str, str]] = {"b2": ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY"), "wasabi": _AWS_ENV,
                                         "s3": _AWS_ENV, "minio": ("MINIO_USER", "MINIO_PASSWORD")}
# pgbackup:offsite's administrator's key: the same names with this prefix, and never repo1's (no fallback): the
# offsite copy may be in another account of the same provider, and a silent fallback to repo1's key would create
# it in repo1's account.
OFFSITE_ENV_PREFIX = "PGBACKUP_OFFSITE_"


def admin_env(provider: str, offsite: bool = False) -> tuple[str, str]:
    """The names of the environment variables holding the administrator's key id and secret of a repository at
    `provider`: pgbackup:storage's (offsite False) or pgbackup:offsite's."""
    key_id, secret = ADMIN_ENV[provider]
    return (OFFSITE_ENV_PREFIX + key_id, OFFSITE_ENV_PREFIX + secret) if offsite else (key_id, secret)


# B2's naming rules (b2_create_bucket, b2_create_key). The S3-compatible rule (lower case only) is checked
# before these for a bucket pgbackup names.
B2_BUCKET_RULE = "6-63 letters, digits or '-', not starting with 'b2-'"
_B2_BUCKET_NAME = re.compile(r"[A-Za-z0-9-]{6,63}")
B2_KEY_NAME = re.compile(r"[A-Za-z0-9-]{1,100}")


def b2_bucket_name_ok(name: str) -> bool:
    return bool(_B2_BUCKET_NAME.fullmatch(name)) and not name.lower().startswith("b2-")
