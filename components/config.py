"""The stack configuration: read once, validated into typed objects, before any resource exists.

Every mistake becomes one `ConfigError` whose message names the key (``pgbackup:storage.endpoint``,
``pgbackup:cluster.nodes[2].host``) and what was expected. Nothing is declared before validation passes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import pulumi
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.calendar import CalendarError, validate_calendar
from components.providers import B2_KEY_NAME, PROVIDERS, admin_env, b2_bucket_name_ok
from components.text import check_text, unsafe_character

NAMESPACE = "pgbackup"

Provider = Literal["b2", "wasabi", "minio", "s3"]

# Every pattern is matched whole (re.fullmatch): `^...$` would accept a trailing line feed.
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_NODE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_STANZA = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SIZE = re.compile(r"[0-9]+(B|KB|MB|GB|TB|PB|KiB|MiB|GiB|TiB|PiB)?", re.IGNORECASE)
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_APT_VERSION = re.compile(r"[0-9][A-Za-z0-9.+~:-]*\*?")
_POSIX_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_POSIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_HOST_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,2}")
# pgBackRest numbers a node's PostgreSQL hosts pg1..pg256: its parser refuses pg257 ("option 'pg257-host' key
# exceeds maximum of 256", pgBackRest 2.45; CFG_OPTION_INDEX_MAX in src/config). pg1 is the node itself and
# every other member is a peer, so a cluster has at most 256 members.
MAX_NODES = 256


class ConfigError(Exception):
    """Bad stack configuration. The message names the key and what was expected."""


def normalise_host(value: str) -> str:
    """A DNS name (lower-case, without a trailing dot) or an IP address (Python's canonical form), as ssh,
    pgBackRest and curl will be given it. Raises ValueError otherwise.

    IPv6 zone ids (`fe80::1%eth0`) are refused: Python's ipaddress accepts any text after `%`, a zone only
    means something on one host, and in a URL it would need `%25` escaping."""
    if "%" in value:
        raise ValueError("an IPv6 zone id ('%...') is not accepted: give a global or unique-local address or a "
                         "DNS name")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value.lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ValueError("expected a DNS name or an IP address")
    return name


def is_valid_host(value: str) -> bool:
    """A DNS name or an IP address (what ssh, pgBackRest and curl will be given)."""
    try:
        normalise_host(value)
    except ValueError:
        return False
    return True


def url_host(host: str) -> str:
    """`host` as the host part of a URL: an IPv6 literal in brackets (RFC 3986), anything else as it is."""
    return f"[{host}]" if ":" in host else host


def _loads_as_ssh_key(key: str) -> bool:
    try:
        load_ssh_public_key(key.encode())
    except (ValueError, UnsupportedAlgorithm):
        return False
    return True


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, extra="forbid", frozen=True, strict=True
    )
    _MULTILINE: ClassVar[frozenset[str]] = frozenset()
    """Fields that may hold line feeds (a PEM certificate). Every other string is one line."""

    @field_validator("*", mode="before")
    @classmethod
    def _one_line(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs before every other validator: no string with a control character gets further.
        if isinstance(value, str):
            check_text(value, allow="\n" if info.field_name in cls._MULTILINE else "")
        return value


def doc(*, default: str | None = None, short: str | None = None) -> dict[str, JsonValue]:
    """What the configuration reference needs beyond a field's `description` (the reference's meaning text, in
    Markdown): the default as docs/configuration.md shows it, when the field's own default does not say it (a derived
    value), and a shorter plain text for Pulumi.yaml's comments, when the description is long. The reference
    is generated from the models: `make reference` (components/reference.py)."""
    return {key: value for key, value in (("shownDefault", default), ("short", short)) if value is not None}


def _check_path(value: str) -> str:
    if not _POSIX_PATH.fullmatch(value) or "//" in value or "/../" in f"{value}/":
        raise ValueError("expected an absolute path of letters, digits and ._/@+- (no '..')")
    return value.rstrip("/") or "/"


class StorageConfig(_Model):
    """`pgbackup:storage`: where the repository lives."""

    _MULTILINE = frozenset({"ca_cert"})

    provider: Provider = Field(description="`b2`, `wasabi`, `minio` or `s3`")
    bucket: str = Field(description="bucket name (B2: 6-63 of `a-z0-9-`)")
    region: str | None = Field(default=None, description="required for b2 (e.g. `us-west-004`), wasabi and s3",
                               json_schema_extra=doc(default="minio: `us-east-1`"))
    endpoint: str | None = Field(
        default=None,
        description="`host[:port]` of the S3 API; required for minio and s3. HTTPS only (pgBackRest 2.45 has no "
                    "plain HTTP)",
        json_schema_extra=doc(default="b2: `s3.<region>.backblazeb2.com`, wasabi: `s3.<region>.wasabisys.com`",
                              short="host[:port] of the S3 API, HTTPS only; required for minio and s3"))
    repo_path: str = Field(default="/pgbackrest", description="repository path in the bucket; the key is limited to it")
    uri_style: Literal["host", "path"] | None = Field(
        default=None, description="S3 addressing: `host` (the bucket in the host name) or `path`",
        json_schema_extra=doc(default="`path` for minio and s3, `host` otherwise"))
    verify_tls: bool = Field(default=True, description="verify the endpoint's certificate")
    ca_cert: str | None = Field(
        default=None,
        description="PEM of a private CA that signed the endpoint's certificate (placed on every node)")
    create: bool = Field(
        default=True,
        description="`false`: use an existing bucket and the key in `pgbackup:accessKeyId` / "
                    "`pgbackup:secretAccessKey`")
    noncurrent_version_days: int = Field(
        default=30, ge=1, le=3650,
        description="days a deleted or overwritten version under `repoPath` is kept before the bucket's lifecycle "
                    "rule removes it (1-3650; see [What the node's key can do]"
                    "(security.md#what-the-nodes-key-can-and-cannot-do)). Replaces `hiddenVersionDays`, which is "
                    "refused with an error naming this key: it covered B2 only, with 1 day, and a stack that kept "
                    "it would silently keep that window",
        json_schema_extra=doc(short="days a deleted or overwritten version under repoPath is kept before the "
                                    "bucket's lifecycle rule removes it (1-3650); replaces hiddenVersionDays, "
                                    "now refused"),
    )
    key_generation: int = Field(
        default=0, ge=0, le=9999,
        description="the repository key's generation: raise it by one to rotate the key (with `create`): the new "
                    "key is made, pushed to every node and proven by `pgbackrest check` before the old one is "
                    "deleted (see [Key rotation](security.md#key-rotation))",
        json_schema_extra=doc(short="raise by one to rotate the key: the new key is made, pushed and proven "
                                    "before the old one is deleted"))
    price_per_tb_month: float | None = Field(
        default=None, ge=0, le=100000,
        description="USD per TB (10^12 bytes) and month for the `storageCost` output's estimate; unset: the "
                    "provider's list price in `components/providers.py` (dated; `0` for minio)",
        json_schema_extra=doc(short="USD per TB and month for the storageCost estimate; unset: the provider's "
                                    "list price (components/providers.py)"))

    allowed_source_ips: list[str] | None = Field(
        default=None,
        description="the only addresses (IPs or CIDR ranges, IPv4 or IPv6) the node's key works from: the nodes' "
                    "egress addresses as the storage sees them. A Deny statement with `NotIpAddress` on "
                    "`aws:SourceIp` in the key's policy (s3, wasabi, minio); refused for b2 (its application keys "
                    "have no address condition) and with `create: false` (that key's policy is yours). Unset: any "
                    "address. The administrator's key is not limited. See [Keys that work only from the nodes]"
                    "(security.md#keys-that-work-only-from-the-nodes-allowedsourceips) for what it costs",
        json_schema_extra=doc(short="IPs or CIDR ranges the node's key works from (its policy denies any other "
                                    "source address); not for b2; unset: any address"))

    object_lock_days: int = Field(
        default=0, ge=0, le=3650,
        description="`0`: off. Days every new version under `repoPath` is locked in COMPLIANCE mode (nobody, the "
                    "account's administrator included, can remove it or shorten its lock before then): the bucket is "
                    "created with versioning and Object Lock (B2: file lock) and this default retention; needs "
                    "pgBackRest 2.54 or later (`pgbackrest.version`) and `noncurrentVersionDays` at least as long. "
                    "See [What the node's key can do](security.md#what-the-nodes-key-can-and-cannot-do)",
        json_schema_extra=doc(short="0: off; days every new version is locked in compliance mode (Object Lock, B2 "
                                    "file lock); needs pgBackRest >= 2.54 and noncurrentVersionDays >= it"),
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hiddenVersionDays" in data:
            raise ValueError(
                "hiddenVersionDays: replaced by noncurrentVersionDays (days a deleted or overwritten version is kept, "
                "on every provider; default 30): rename the key"
            )
        return data

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.fullmatch(value) or ".." in value:
            raise ValueError("expected 3-63 lower-case letters, digits, '.' or '-', starting and ending alphanumeric")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.fullmatch(value):
            raise ValueError("expected a region name like us-west-004 or us-east-1")
        return value

    @field_validator("repo_path")
    @classmethod
    def _repo_path(cls, value: str) -> str:
        value = _check_path(value)
        if value == "/":
            raise ValueError("expected a sub-path such as /pgbackrest, not the bucket root")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("http://"):
            raise ValueError("pgBackRest reaches S3 over HTTPS only: give https://host[:port] or host[:port]")
        value = value.removeprefix("https://").rstrip("/")
        if value.startswith("[") or value.count(":") > 1:
            raise ValueError("an IPv6 address is not accepted as the endpoint: give its DNS name (host[:port])")
        host, colon, port = value.partition(":")
        if not is_valid_host(host) or (colon and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError("expected host[:port], e.g. minio.example.net:9000")
        return normalise_host(host) + colon + port

    @field_validator("allowed_source_ips")
    @classmethod
    def _allowed_source_ips(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty list would refuse the node's key from everywhere: remove the key to allow "
                             "any address, or list the nodes' egress addresses")
        networks = []
        for i, entry in enumerate(value):
            try:
                networks.append(str(ipaddress.ip_network(entry, strict=True)))
            except ValueError as err:
                raise ValueError(f"entry {i}, {entry!r}: expected an IP address or a CIDR range such as "
                                 f"203.0.113.7, 203.0.113.0/28 or 2001:db8::/64 ({err})") from None
        return networks

    @field_validator("ca_cert")
    @classmethod
    def _ca_cert(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            x509.load_pem_x509_certificates(value.encode())
        except ValueError:
            raise ValueError("expected a PEM certificate, or several, that parse as X.509 "
                             "(-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)") from None
        return value

    @model_validator(mode="after")
    def _derive(self) -> StorageConfig:
        provider = PROVIDERS[self.provider]
        if self.provider == "b2" and not b2_bucket_name_ok(self.bucket):
            raise ValueError("bucket: B2 takes 6-63 lower-case letters, digits and '-', not starting with 'b2-'")
        region = self.region or provider.region
        if region is None:
            raise ValueError(f"region: required for provider {self.provider}")
        endpoint = self.endpoint
        if endpoint is None:
            if provider.endpoint is None:
                raise ValueError(f"endpoint: required for provider {self.provider} (host[:port] of its S3 API)")
            endpoint = provider.endpoint.format(region=region)
        if self.allowed_source_ips is not None and self.provider == "b2":
            raise ValueError("allowedSourceIps: B2 cannot limit a key to source addresses (an application key has "
                             "only capabilities, a bucket and a name prefix; no address condition): remove the key, "
                             "or use a provider whose key policies can (s3, wasabi, minio)")
        if self.allowed_source_ips is not None and not self.create:
            raise ValueError("allowedSourceIps: only for a key the program creates (create: true); with create: false "
                             "the key and its policy are yours: add the Deny statement with NotIpAddress on "
                             "aws:SourceIp to its policy yourself")
        if self.object_lock_days > self.noncurrent_version_days:
            raise ValueError(
                f"noncurrentVersionDays: {self.noncurrent_version_days} is shorter than objectLockDays "
                f"{self.object_lock_days}: a version cannot expire while it is locked; set noncurrentVersionDays "
                f"to {self.object_lock_days} or more")
        object.__setattr__(self, "region", region)
        object.__setattr__(self, "endpoint", endpoint)
        object.__setattr__(self, "uri_style", self.uri_style or provider.uri_style)
        return self

    @property
    def endpoint_host(self) -> str:
        assert self.endpoint is not None
        return self.endpoint.partition(":")[0]

    @property
    def endpoint_port(self) -> int:
        assert self.endpoint is not None
        port = self.endpoint.partition(":")[2]
        return int(port) if port else 443

    @property
    def key_prefix(self) -> str:
        """The object-key prefix of the repository: repo path without the leading slash."""
        return self.repo_path.lstrip("/")

    @property
    def monthly_repo_path(self) -> str:
        """repo2 (monthly archives), inside the repository's prefix so that the same scoped key reaches it.
        pgBackRest keeps repo1 in <repoPath>/archive and <repoPath>/backup only: the two never overlap."""
        return f"{self.repo_path}/monthly"


class OffsiteConfig(StorageConfig):
    """`pgbackup:offsite`: a second location, at another provider or account, for repo2 (the monthly archives).
    The same keys as `pgbackup:storage`; unset, repo2 stays in repo1's bucket."""

    create: bool = Field(
        default=True,
        description="`false`: use an existing bucket and the key in `pgbackup:offsiteAccessKeyId` / "
                    "`pgbackup:offsiteSecretAccessKey`")

    @property
    def monthly_repo_path(self) -> str:
        """repo2 is the whole repository path of the offsite bucket."""
        return self.repo_path


class NodeConfig(_Model):
    """One Patroni member reached over SSH."""

    name: str = Field(description="the node's Patroni member name (lower-case letters, digits and `-`)")
    host: str = Field(
        description="how Pulumi (SSH), the other nodes (pgBackRest's TLS server) and the node itself (Patroni's "
                    "REST API) reach it; use a DNS name (pgBackRest checks certificates against DNS names)",
        json_schema_extra=doc(short="DNS name (or IP address) for SSH, pgBackRest's TLS server and Patroni's "
                                    "REST API"))
    user: str = Field(default="root", description="SSH user (root or a sudo-less root equivalent)")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port")
    host_key: str | None = Field(
        default=None,
        description="**required** (unless `insecureSkipHostKeyCheck`): the node's SSH host public key, pinned, "
                    "as `ssh-keyscan -t ed25519 <host>` prints it without the host name (`ssh-ed25519 AAAA...`)",
        json_schema_extra=doc(short='required: "ssh-ed25519 AAAA..." as `ssh-keyscan -t ed25519 <host>` prints it'))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NODE_NAME.fullmatch(value):
            raise ValueError("expected lower-case letters, digits and '-', at most 63 characters")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return normalise_host(value)

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        key = " ".join(value.split()[:2])  # "type base64 [comment]": the comment is dropped
        if not _HOST_KEY.fullmatch(key) or not _loads_as_ssh_key(key):
            raise ValueError("expected an OpenSSH public host key such as 'ssh-ed25519 AAAA...' "
                             "(ssh-keyscan -t ed25519 <host> prints it)")
        return key

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not _POSIX_USER.fullmatch(value):
            raise ValueError("expected a POSIX user name")
        return value


class ClusterConfig(_Model):
    """`pgbackup:cluster`: the Patroni cluster."""

    stanza: str = Field(description="pgBackRest stanza")
    pg_version: int = Field(default=17, ge=10, le=30, description="PostgreSQL major version")
    pg_data: str | None = Field(default=None, description="data directory",
                                json_schema_extra=doc(default="`/var/lib/postgresql/<pgVersion>/main`"))
    pg_port: int = Field(default=5432, ge=1, le=65535, description="PostgreSQL's port")
    pg_socket_path: str = Field(default="/var/run/postgresql", description="PostgreSQL's Unix socket directory")
    patroni_config: str = Field(default="/etc/patroni/patroni.yml", description="Patroni's local configuration file")
    patroni_api_port: int = Field(default=8008, ge=1, le=65535, description="Patroni's REST API (HTTP)")
    nodes: list[NodeConfig] = Field(min_length=1,
                                    description=f"1 to {MAX_NODES} nodes, each an object with the keys below")
    insecure_skip_host_key_check: bool = Field(
        default=False, description="`true`: nodes without `hostKey` are reached unchecked (warned on every run)")

    @field_validator("stanza")
    @classmethod
    def _stanza(cls, value: str) -> str:
        if not _STANZA.fullmatch(value):
            raise ValueError("expected letters, digits, '_', '.', '-' (at most 64)")
        return value

    @field_validator("pg_data", "patroni_config", "pg_socket_path")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else _check_path(value)

    @model_validator(mode="after")
    def _derive(self) -> ClusterConfig:
        if len(self.nodes) > MAX_NODES:
            raise ValueError(f"nodes: at most {MAX_NODES} nodes, got {len(self.nodes)} (pgBackRest numbers a "
                             f"node's PostgreSQL hosts pg1..pg{MAX_NODES})")
        # Hosts are already normalised (lower-case, no trailing dot, canonical IP): DB1. and db1 are one host.
        for attr in ("name", "host"):
            seen: dict[str, int] = {}
            for i, node in enumerate(self.nodes):
                value = getattr(node, attr)
                if value in seen:
                    raise ValueError(f"nodes[{i}].{attr}: {value!r} is already used by nodes[{seen[value]}]")
                seen[value] = i
        if self.pg_data is None:
            object.__setattr__(self, "pg_data", f"/var/lib/postgresql/{self.pg_version}/main")
        return self


def _check_calendar(value: str) -> str:
    # What is validated is what the timer gets: words joined by single spaces, ASCII only.
    calendar = " ".join(value.split())
    try:
        if not calendar.isascii():
            raise CalendarError("only ASCII letters, digits and punctuation")
        validate_calendar(calendar)
    except CalendarError as err:
        raise ValueError(f"expected a systemd calendar expression (systemd.time(7)): {err}") from None
    return calendar


# A systemd calendar expression, normalised and checked as the timer will get it.
Calendar = Annotated[str, AfterValidator(_check_calendar)]


class ScheduleConfig(_Model):
    """`pgbackup:schedule`: one systemd calendar expression per backup type."""

    full: Calendar = Field(
        default="Sun *-*-* 02:00:00",
        description="systemd calendar of the full backup (checked like `systemd-analyze calendar`)")
    incremental: Calendar = Field(default="Mon..Sat *-*-* 02:00:00", description="calendar of the incremental backup")
    monthly: Calendar = Field(
        default="Sun *-*-01..07 04:00:00",
        description="calendar of the monthly archive (the first Sunday of the month); used with `retention.monthly`")
    randomized_delay_sec: int = Field(default=300, ge=0, le=86400, description="timers' `RandomizedDelaySec`")
    max_backup_age_hours: int = Field(
        default=26, ge=1, le=24 * 366,
        description="the `PgBackRestBackupTooOld` alert's and the `backup-age` check's threshold")


class RetentionConfig(_Model):
    """`pgbackup:retention`: pgBackRest keeps WAL for the backups it keeps."""

    full: int = Field(default=4, ge=1, le=9999999,
                      description="full backups kept; WAL is kept for the backups kept")
    full_type: Literal["count", "time"] = Field(
        default="count", description="`count`, or `time` (then `full` is in days: a guaranteed window)")
    monthly: int = Field(
        default=0, ge=0, le=1200,
        description="monthly archives kept (`12`: a year), in a second repository; `0`: none (see below)",
        json_schema_extra=doc(short="monthly archives kept (12: a year), in a second repository (repo2); 0: none"))


_COMPRESS_LEVELS = {"none": (0, 0), "gz": (0, 9), "bz2": (1, 9), "lz4": (-5, 12), "zst": (-7, 22)}


class PgBackRestConfig(_Model):
    """`pgbackup:pgbackrest`: pgBackRest's own tuning."""

    process_max: int = Field(default=4, ge=1, le=999,
                             description="pgBackRest's `process-max`: processes that compress and transfer files")
    compress_type: Literal["none", "gz", "bz2", "lz4", "zst"] = Field(
        default="zst", description="`none`, `gz`, `bz2`, `lz4` or `zst`")
    compress_level: int = Field(default=3, description="level checked against the type's range")
    archive_async: bool = Field(default=True, description="asynchronous archive-push/get with a spool directory")
    archive_push_queue_max: str | None = Field(
        default="4GiB", description="past this backlog pgBackRest DROPS WAL (alerted at half); `null` never drops")
    backup_standby: bool = Field(default=True, description="back up from a standby (needs two or more nodes)")
    start_fast: bool = Field(default=False, description="start backups with an immediate checkpoint")
    version: str | None = Field(
        default=None,
        description="apt version pin, e.g. `2.45-1` or `2.55*`. pgBackRest's features follow the lowest version it "
                    "admits (without a pin: 2.45's): from 2.54, `backup-standby=prefer` (a standby that is down no "
                    "longer fails `check` or a backup) and block incremental (`repo-block` with `repo-bundle`). "
                    "Every node must run the same version: nodes that differ fail the apply, each named with its "
                    "version",
        json_schema_extra=doc(short="apt version pin, e.g. 2.45-1 or 2.55*; from 2.54* on also "
                                    "backup-standby=prefer and repo-block/repo-bundle"))
    archive_timeout: int = Field(default=60, ge=1, le=3600,
                                 description="Patroni's `archive_timeout`: the RPO bound on a quiet database")
    tls_server_port: int = Field(default=8432, ge=1, le=65535, description="pgBackRest's TLS server, between nodes")
    legacy_short_cipher_pass: bool = Field(
        default=False,
        description="`true`: accept a `pgbackup:cipherPass` under 32 characters (never an empty one) for a repository "
                    "that already exists encrypted with it: its passphrase cannot change (a new one is refused for "
                    "an existing repository), so the program cannot refuse it. Warned on every run; refused with a "
                    "`cipherPass` of 32 characters or more, or none. Move to a new repository with a long passphrase "
                    "(a new `storage.repoPath`) when you can",
        json_schema_extra=doc(short="true: accept a cipherPass under 32 characters (not empty) for a repository "
                                    "that already exists with it (warned on every run)"))

    @field_validator("archive_push_queue_max")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and not _SIZE.fullmatch(value):
            raise ValueError("expected a size such as 4GiB or 512MiB, or null")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not _APT_VERSION.fullmatch(value):
            raise ValueError("expected a Debian version such as 2.45-1 or a prefix with '*' such as 2.51*")
        return value

    @property
    def feature_version(self) -> tuple[int, int]:
        """The lowest pgBackRest (major, minor) the `version` pin admits ("2.55*" -> (2, 55), "2.5*" -> (2, 5));
        without a pin, (2, 45): Debian 12's, the oldest the program supports. Features follow it, never the
        version a node happens to run, so what is rendered does not depend on the apply."""
        match = re.match(r"^(?:[0-9]+:)?([0-9]+)\.([0-9]+)", self.version or "")
        return (int(match[1]), int(match[2])) if match else (2, 45)

    @model_validator(mode="after")
    def _level(self) -> PgBackRestConfig:
        low, high = _COMPRESS_LEVELS[self.compress_type]
        if not low <= self.compress_level <= high:
            raise ValueError(f"compressLevel: {self.compress_type} takes {low}..{high}, got {self.compress_level}")
        return self


class MonitoringConfig(_Model):
    """`pgbackup:monitoring`: health checks registered with a local agent."""

    consul: bool = Field(
        default=False,
        description="`true`: the `pgbackrest` service and its three checks (backup age, WAL archive, standbys) in "
                    "`/etc/consul.d/pgbackrest.json`, the local agent reloaded; `false` removes them "
                    "(see \"Monitoring\")",
        json_schema_extra=doc(short="true: the pgbackrest service and its checks in /etc/consul.d"))


class DrillConfig(_Model):
    """`pgbackup:drill`: scheduled verification of the repositories and restore drills."""

    verify_schedule: Calendar = Field(default="*-*-* 05:00:00",
                                 description="calendar of `pgbackrest verify` of each repository, on the leader")
    schedule: Calendar = Field(default="Wed *-*-* 05:30:00",
                          description="calendar of the restore drill of repo1's newest backup, on one node")
    monthly_schedule: Calendar = Field(
        default="Sun *-*-08..14 06:00:00",
        description="calendar of the drill of repo2's newest monthly archive (with `retention.monthly`; the second "
                    "Sunday)")
    path: str = Field(
        default="/var/lib/postgresql/pgbackup-drill",
        description="scratch directory the drill restores into and deletes afterwards; must not overlap "
                    "`cluster.pgData`")
    node: str | None = Field(
        default=None,
        description="the node that runs the drill; unset: a replica chosen at run time (the leader only when it is "
                    "the only node)",
        json_schema_extra=doc(short="the node that runs the drill; unset: a replica chosen at run time"))
    amcheck: bool = Field(default=False, description="`true`: `pg_amcheck` on the restored copy")
    rto_budget_seconds: int = Field(
        default=1800, ge=60, le=7 * 86400,
        description="the drill's restore-to-ready time past which an alert fires (the design's 30 minutes)")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        path = _check_path(value)
        if path == "/" or path.count("/") < 2:
            raise ValueError("expected a directory at least two levels deep, e.g. /var/lib/postgresql/drill "
                             "(the drill deletes what it restored there)")
        return path


@dataclass(frozen=True)
class Settings:
    """Everything the program needs, validated. Secrets stay `pulumi.Output`s."""

    storage: StorageConfig
    cluster: ClusterConfig
    schedule: ScheduleConfig
    retention: RetentionConfig
    pgbackrest: PgBackRestConfig
    monitoring: MonitoringConfig
    drill: DrillConfig
    ssh_private_key: pulumi.Output[str]
    cipher_pass: pulumi.Output[str] | None
    access_key_id: pulumi.Output[str] | None
    secret_access_key: pulumi.Output[str] | None
    offsite: OffsiteConfig | None = None
    """`pgbackup:offsite`: where repo2 lives when it is not nested in repo1's bucket."""
    offsite_access_key_id: pulumi.Output[str] | None = None
    offsite_secret_access_key: pulumi.Output[str] | None = None

    @property
    def monthly_storage(self) -> StorageConfig:
        """Where repo2 (the monthly archives) lives: the offsite location, or repo1's bucket."""
        return self.offsite or self.storage


def _shown(part: str | int) -> str:
    """A key as an error shows it: a key with a control character is shown escaped, never as a new line."""
    text = str(part)
    return ascii(text) if unsafe_character(text) else text


def _format_error(key: str, err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{_shown(p)}" for p in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; keys are camelCase)"
        elif item["type"] == "missing":
            msg = "required"
        # A model validator reports "field: message"; fold the field into the key.
        if not loc and ": " in msg and " " not in msg.split(": ", 1)[0]:
            field, msg = msg.split(": ", 1)
            loc = f".{field}"
        lines.append(f"{NAMESPACE}:{key}{loc}: {msg}")
    return "\n".join(lines)


def _parse(key: str, raw: Any, model: type[_Model], required: bool) -> Any:
    if raw is None:
        if required:
            raise ConfigError(f"{NAMESPACE}:{key}: required (an object; see Pulumi.yaml)")
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{NAMESPACE}:{key}: expected an object, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(key, err)) from None


def _object(config: pulumi.Config, key: str) -> Any:
    text = config.get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{NAMESPACE}:{key}: expected an object, got {text!r}") from None


# Every top-level pgbackup:* key, in one place: the objects (validated by their model; required or not)
# and the secrets. A key set in the stack but not listed here is refused (a misspelt `retension` would
# otherwise deploy the defaults).
OBJECT_KEYS: dict[str, tuple[type[_Model], bool]] = {
    "storage": (StorageConfig, True),
    "cluster": (ClusterConfig, True),
    "schedule": (ScheduleConfig, False),
    "retention": (RetentionConfig, False),
    "pgbackrest": (PgBackRestConfig, False),
    "monitoring": (MonitoringConfig, False),
    "drill": (DrillConfig, False),
    "offsite": (OffsiteConfig, False),
}
# Optional objects that are absent (None) unless set, instead of taking their defaults.
ABSENT_UNLESS_SET = frozenset({"offsite"})


@dataclass(frozen=True)
class SecretKey:
    """A secret top-level key as the configuration reference shows it: `meaning` in docs/configuration.md (Markdown),
    `short` in Pulumi.yaml; `when` is the reference's default column for a key that is not required. A required
    one is also declared in Pulumi.yaml's `config:` (Pulumi then asks for it in every stack)."""

    meaning: str
    short: str = ""  # "": the meaning's text
    required: bool = False
    when: str = ""


SECRET_KEYS: dict[str, SecretKey] = {
    "sshPrivateKey": SecretKey(
        required=True,
        meaning="the private key Pulumi uses to reach the nodes over SSH; its public key in each node's root "
                "`authorized_keys`",
        short="The private key Pulumi uses to reach the nodes over SSH (pulumi config set --secret)."),
    "cipherPass": SecretKey(
        when="generated when absent",
        meaning="the passphrase that encrypts the repository (64 characters when generated, kept in the state); "
                "one line without whitespace, 32 characters or more (a shorter one only with "
                "`pgbackrest.legacyShortCipherPass`, below)"),
    "accessKeyId": SecretKey(
        when="only with `storage.create: false`",
        meaning="the access key id of an existing key that reaches the bucket"),
    "secretAccessKey": SecretKey(
        when="only with `storage.create: false`",
        meaning="that key's secret access key"),
    "offsiteAccessKeyId": SecretKey(
        when="only with `offsite.create: false`",
        meaning="the access key id of an existing key that reaches the offsite bucket"),
    "offsiteSecretAccessKey": SecretKey(
        when="only with `offsite.create: false`",
        meaning="that key's secret access key"),
}
KNOWN_KEYS = (*OBJECT_KEYS, *SECRET_KEYS)


def check_known_keys(keys: Iterable[str]) -> None:
    """Refuse top-level keys pgbackup does not know, naming each and listing the known ones."""
    unknown = sorted(set(keys) - set(KNOWN_KEYS))
    if unknown:
        known = ", ".join(KNOWN_KEYS)
        raise ConfigError("\n".join(f"{NAMESPACE}:{_shown(key)}: unknown key (known keys: {known})"
                                     for key in unknown))


def _runtime_key(key: str) -> str:
    return f"{NAMESPACE}:{key}"


def stack_keys() -> list[str]:
    """The pgbackup:* keys the stack sets (without the namespace). pulumi.Config cannot list keys; the
    runtime holds them: set by `pulumi.runtime.set_all_config` (the mocks) or passed by the language host
    in PULUMI_CONFIG."""
    names = set(pulumi.runtime.config.CONFIG.get()) | set(pulumi.runtime.config.get_config_env())
    prefix = _runtime_key("")
    return sorted(name.removeprefix(prefix) for name in names if name.startswith(prefix))


def is_secret_key(key: str) -> bool:
    """Whether the stack set pgbackup:<key> as a secret (`pulumi config set --secret`)."""
    name = _runtime_key(key)
    return pulumi.runtime.config.is_config_secret(name) or name in pulumi.runtime.config.get_config_secret_keys_env()


def repository_key_name(stack: str, stanza: str, offsite: bool = False) -> str:
    """The name of the repository's storage key (B2 application key, IAM or MinIO user); `offsite`: repo2's key at
    pgbackup:offsite."""
    return f"pgbackup-{stack}-{stanza}" + ("-offsite" if offsite else "")


def generation_suffix(generation: int) -> str:
    """What a key of storage.keyGeneration `generation` adds to its names ("" for 0: a stack that never
    rotated keeps the names it had)."""
    return f"-g{generation}" if generation else ""


def unpinned_nodes(cluster: ClusterConfig) -> list[str]:
    """Nodes reached without checking their SSH host key (only with insecureSkipHostKeyCheck)."""
    return [node.name for node in cluster.nodes if node.host_key is None]


def _check_host_keys(cluster: ClusterConfig) -> None:
    if cluster.insecure_skip_host_key_check:
        return
    missing = [i for i, node in enumerate(cluster.nodes) if node.host_key is None]
    if missing:
        raise ConfigError("\n".join(
            f"{NAMESPACE}:cluster.nodes[{i}].hostKey: required: pin {cluster.nodes[i].name}'s SSH host key, "
            f"e.g. the line `ssh-keyscan -t ed25519 {cluster.nodes[i].host}` prints, without the host: "
            "\"ssh-ed25519 AAAA...\" (the only way around it is pgbackup:cluster.insecureSkipHostKeyCheck: true, "
            "which lets whoever answers on the node's SSH port receive the stack's secrets)"
            for i in missing))


def _check_key_name(storage: StorageConfig, cluster: ClusterConfig, stack: str, offsite: bool = False) -> None:
    name = repository_key_name(stack, cluster.stanza, offsite) + generation_suffix(storage.key_generation)
    # B2's rule for key names (components/b2.py refuses others when the key is created), checked here so that
    # a stanza the name cannot take is reported under pgbackup:cluster.stanza.
    if storage.provider == "b2" and not B2_KEY_NAME.fullmatch(name):
        raise ConfigError(
            f"{NAMESPACE}:cluster.stanza: {cluster.stanza!r} cannot name the B2 application key {name!r}: B2 key "
            "names are 1-100 letters, digits and '-' (use '-' instead of '_' or '.', or a shorter stanza)")


def parse_settings(raw: Mapping[str, Any], stack: str | None = None) -> tuple[
        StorageConfig, ClusterConfig, ScheduleConfig, RetentionConfig, PgBackRestConfig, MonitoringConfig,
        DrillConfig]:
    """Validate the plain (non-secret) objects. Separate from Pulumi so it can be tested directly.
    With `stack`, the storage key's name (which holds the stack's name) is checked too."""
    check_known_keys(raw)
    parsed = {key: _parse(key, raw.get(key), model, required) for key, (model, required) in OBJECT_KEYS.items()
              if key not in ABSENT_UNLESS_SET}
    storage, cluster, schedule, retention, pgbackrest, monitoring, drill = (
        parsed["storage"], parsed["cluster"], parsed["schedule"], parsed["retention"], parsed["pgbackrest"],
        parsed["monitoring"], parsed["drill"])
    _check_host_keys(cluster)
    if stack is not None:
        _check_key_name(storage, cluster, stack)
        offsite = parse_offsite(raw, retention)
        if offsite is not None:
            _check_key_name(offsite, cluster, stack, offsite=True)
    if pgbackrest.backup_standby and len(cluster.nodes) < 2:
        raise ConfigError(
            f"{NAMESPACE}:pgbackrest.backupStandby: needs at least two nodes in pgbackup:cluster.nodes "
            "(pgBackRest 2.45 fails when no standby is reachable); set it to false for a single node"
        )
    names = [node.name for node in cluster.nodes]
    if drill.node is not None and drill.node not in names:
        raise ConfigError(f"{NAMESPACE}:drill.node: {drill.node!r} is not a node of pgbackup:cluster.nodes "
                          f"(expected one of {', '.join(names)})")
    if drill.path == cluster.pg_data or drill.path.startswith(f"{cluster.pg_data}/") \
            or cluster.pg_data.startswith(f"{drill.path}/"):
        raise ConfigError(f"{NAMESPACE}:drill.path: {drill.path!r} overlaps the data directory "
                          f"{cluster.pg_data!r} (the drill deletes what it restored)")
    for key, location in (("storage", storage), ("offsite", parse_offsite(raw, retention))):
        if location is not None and location.object_lock_days and pgbackrest.feature_version < LOCK_VERSION:
            pin = repr(pgbackrest.version) if pgbackrest.version else "no pin: 2.45, Debian 12's"
            raise ConfigError(
                f"{NAMESPACE}:{key}.objectLockDays: needs pgBackRest {LOCK_VERSION[0]}.{LOCK_VERSION[1]} or later "
                "(repo-target-time restores from the repository as it was before a deletion), and "
                f"{NAMESPACE}:pgbackrest.version admits older ({pin}): pin '2.55*' (Debian 13) or set objectLockDays "
                "to 0")
    return storage, cluster, schedule, retention, pgbackrest, monitoring, drill


# repo-target-time (pgBackRest 2.54): read a versioned repository as it was at a time.
LOCK_VERSION = (2, 54)


def parse_offsite(raw: Mapping[str, Any], retention: RetentionConfig) -> OffsiteConfig | None:
    """`pgbackup:offsite`, or None when the stack does not set it. It holds repo2, so it needs monthly archives."""
    if raw.get("offsite") is None:
        return None
    offsite: OffsiteConfig = _parse("offsite", raw["offsite"], OffsiteConfig, False)
    if not retention.monthly:
        raise ConfigError(f"{NAMESPACE}:offsite: holds repo2 (the monthly archives): set "
                          f"{NAMESPACE}:retention.monthly above 0, or remove {NAMESPACE}:offsite")
    return offsite


def check_offsite_admin_key(offsite: OffsiteConfig | None, environ: Mapping[str, str] | None = None) -> None:
    """pgbackup:offsite with `create` needs its own administrator's key (PGBACKUP_OFFSITE_*), checked before
    anything is declared. repo1's variables are never used for it: the offsite copy may be in another account."""
    if offsite is None or not offsite.create:
        return
    environ = os.environ if environ is None else environ
    names = admin_env(offsite.provider, offsite=True)
    missing = [name for name in names if not environ.get(name, "").strip()]
    if missing:
        repo1 = admin_env(offsite.provider)
        raise ConfigError(
            f"{NAMESPACE}:offsite: creating the offsite bucket and its key ({offsite.provider}) needs the offsite "
            f"administrator's key in {names[0]} and {names[1]} in the environment of `pulumi` (not set: "
            f"{', '.join(missing)}). It is never read from {repo1[0]} / {repo1[1]} (pgbackup:storage's): the offsite "
            "copy may be in another account; for the same account, set both to the same key")


# A passphrase shorter than this is refused, unless pgbackrest.legacyShortCipherPass says the repository exists
# with it (the generated one has 64 characters).
CIPHER_PASS_MIN = 32


def _secret(config: pulumi.Config, key: str, pgbackrest: PgBackRestConfig | None = None
            ) -> pulumi.Output[str] | None:
    """A secret key's value, checked in plain (never shown) before it is wrapped as a secret Output; cipherPass
    against `pgbackrest` (its legacyShortCipherPass)."""
    value = config.get(key)
    if value is None:
        return None
    try:
        check_text(value, allow="\n" if key == "sshPrivateKey" else "")  # the private key is PEM-like
    except ValueError as err:
        raise ConfigError(f"{NAMESPACE}:{key}: {err}") from None
    if key == "cipherPass":
        if any(char.isspace() for char in value):
            raise ConfigError(
                f"{NAMESPACE}:cipherPass: must not contain whitespace (pgBackRest would read another passphrase; "
                "`openssl rand -base64 48` prints one line)")
        if not is_secret_key(key):
            raise ConfigError(
                f"{NAMESPACE}:cipherPass: must be set as a secret: pulumi config set --secret pgbackup:cipherPass "
                "... (it decrypts every backup; a plain value is stored readable in the stack file)")
        _check_cipher_pass_length(value, pgbackrest or PgBackRestConfig())
    return config.get_secret(key)


def _check_cipher_pass_length(value: str | None, pgbackrest: PgBackRestConfig) -> None:
    """A cipherPass under CIPHER_PASS_MIN characters is refused: the program cannot tell a new repository from an
    existing one, so the stack says which with pgbackrest.legacyShortCipherPass (warned on every run). Its
    length is never shown."""
    legacy = f"{NAMESPACE}:pgbackrest.legacyShortCipherPass"
    if value is None or len(value) >= CIPHER_PASS_MIN:
        if pgbackrest.legacy_short_cipher_pass:
            given = "is generated" if value is None else f"has {CIPHER_PASS_MIN} characters or more"
            raise ConfigError(f"{legacy}: only for a {NAMESPACE}:cipherPass under {CIPHER_PASS_MIN} characters, and "
                              f"this stack's {given}: remove the setting")
        return
    fix = (f"`openssl rand -base64 48` prints 64 on one line, or remove {NAMESPACE}:cipherPass and one of 64 is "
           "generated")
    if not value:
        raise ConfigError(f"{NAMESPACE}:cipherPass: empty: expected a passphrase of {CIPHER_PASS_MIN} characters or "
                          f"more ({fix})")
    if not pgbackrest.legacy_short_cipher_pass:
        raise ConfigError(
            f"{NAMESPACE}:cipherPass: shorter than {CIPHER_PASS_MIN} characters: a new repository needs "
            f"{CIPHER_PASS_MIN} or more ({fix}). Only for a repository that already exists encrypted with this "
            f"passphrase (it cannot change), set {legacy}: true")
    pulumi.log.warn(f"{NAMESPACE}:cipherPass: shorter than {CIPHER_PASS_MIN} characters, accepted by {legacy} for "
                    "a repository that exists with it; move to a new repository (a new storage.repoPath) with a "
                    "passphrase of 64 (`openssl rand -base64 48`)")


def tls_warnings(locations: Iterable[tuple[str, StorageConfig | None]]) -> list[str]:
    """One warning per location (pgbackup:storage, pgbackup:offsite) whose verifyTls is false: its endpoint's
    certificate is not checked, and keys are sent there (the program's and the nodes')."""
    return [
        f"{NAMESPACE}:{key}.verifyTls is false: the TLS certificate of {location.endpoint} (bucket "
        f"{location.bucket}, {location.repo_path}) is NOT checked, by the program nor by pgBackRest on the nodes: "
        "whoever answers there receives the provider's admin key (when the program creates the bucket and key) "
        f"and the repository's key. Give the endpoint's CA in {key}.caCert instead"
        for key, location in locations if location is not None and not location.verify_tls]


def load_settings(config: pulumi.Config | None = None) -> Settings:
    """Read and validate `pgbackup:*`. Raises ConfigError before anything is declared."""
    config = config or pulumi.Config(NAMESPACE)
    check_known_keys(stack_keys())
    raw = {key: _object(config, key) for key in OBJECT_KEYS}
    storage, cluster, schedule, retention, pgbackrest, monitoring, drill = parse_settings(
        raw, stack=pulumi.get_stack())
    if cluster.insecure_skip_host_key_check:
        unpinned = unpinned_nodes(cluster)
        pulumi.log.warn(
            f"{NAMESPACE}:cluster.insecureSkipHostKeyCheck is true: the SSH host keys of "
            f"{', '.join(unpinned) or 'no node (every node has a hostKey: remove the setting)'} are NOT checked; "
            "whoever answers on their SSH port receives the S3 key, the cipher passphrase and the TLS keys. "
            "Pin them with hostKey (ssh-keyscan -t ed25519 <host>)")
    for warning in tls_warnings((("storage", storage), ("offsite", parse_offsite(raw, retention)))):
        pulumi.log.warn(warning)

    ssh_key = _secret(config, "sshPrivateKey")
    if ssh_key is None:
        raise ConfigError(
            f"{NAMESPACE}:sshPrivateKey: required (secret): "
            "pulumi config set --secret pgbackup:sshPrivateKey < ~/.ssh/id_ed25519"
        )
    access_key_id, secret_access_key = _given_key(config, "storage", storage, "accessKeyId", "secretAccessKey")
    offsite = parse_offsite(raw, retention)
    check_offsite_admin_key(offsite)
    offsite_key_id, offsite_secret = _given_key(config, "offsite", offsite, "offsiteAccessKeyId",
                                                "offsiteSecretAccessKey")
    cipher_pass = _secret(config, "cipherPass", pgbackrest)
    if cipher_pass is None:
        _check_cipher_pass_length(None, pgbackrest)  # generated: RandomPassword(length=64) in components/cluster.py
    return Settings(
        storage=storage,
        cluster=cluster,
        schedule=schedule,
        retention=retention,
        pgbackrest=pgbackrest,
        monitoring=monitoring,
        drill=drill,
        ssh_private_key=ssh_key,
        cipher_pass=cipher_pass,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        offsite=offsite,
        offsite_access_key_id=offsite_key_id,
        offsite_secret_access_key=offsite_secret,
    )


def _given_key(config: pulumi.Config, obj: str, location: StorageConfig | None, id_key: str, secret_key: str
               ) -> tuple[pulumi.Output[str] | None, pulumi.Output[str] | None]:
    """The existing key of a location with `create: false` (two secrets); refused with `create` true."""
    key_id, secret = _secret(config, id_key), _secret(config, secret_key)
    keys = f"{NAMESPACE}:{id_key} / {NAMESPACE}:{secret_key}"
    if location is not None and not location.create and (key_id is None or secret is None):
        raise ConfigError(f"{keys}: required (secrets) when {NAMESPACE}:{obj}.create is false")
    if location is not None and not location.create and location.key_generation:
        raise ConfigError(
            f"{NAMESPACE}:{obj}.keyGeneration: rotates the key the program creates; with {obj}.create false "
            f"the key is yours: set the new one in {keys} instead")
    if (location is None or location.create) and (key_id is not None or secret is not None):
        raise ConfigError(f"{keys}: only used with {obj}.create false; remove them, or set {obj}.create to false to "
                          "use that key")
    return key_id, secret
