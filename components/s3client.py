"""One S3 client for the program's own calls to a bucket (the Object Lock provider, `pgbackup repository
undelete`): the provider's endpoint over HTTPS, its private CA trusted if any, path or virtual-host addressing."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config as BotoConfig


@contextmanager
def s3_client(endpoint_url: str, region: str | None, key_id: str, secret: str, *, verify_tls: bool,
              ca_cert: str | None, path_style: bool, retries: dict[str, Any]) -> Iterator[Any]:
    """A boto3 S3 client of `endpoint_url` (the provider's, https://); `ca_cert` (PEM) is trusted through a
    file that lives as long as the client does."""
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as ca:
        verify: bool | str = verify_tls
        if verify_tls and ca_cert:
            ca.write(ca_cert)
            ca.flush()
            verify = ca.name
        yield boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=key_id,
            aws_secret_access_key=secret, verify=verify,
            config=BotoConfig(s3={"addressing_style": "path" if path_style else "virtual"},
                              retries=retries))
