"""What the templates see: one typed context per kind of template, built from the validated settings.

Every template is rendered from exactly one of these frozen dataclasses (components.render.render); a field
a template uses but its context lacks is a type error here, and an error at rendering (StrictUndefined).
Nothing in a context is secret but `ConfigContext.secrets`, which is only built inside the secret Output
that renders pgbackrest.conf.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Self, TypeVar

from components.config import (
    ClusterConfig,
    NodeConfig,
    PgBackRestConfig,
    RetentionConfig,
    Settings,
    StorageConfig,
    url_host,
)
from components.layout import NAMES, PATHS, Backup, Directory, Names, Paths
from components.providers import PROVIDERS, Price
from components.render import Context


@dataclass(frozen=True)
class Repository:
    """One of pgBackRest's repositories as pgbackrest.conf declares it."""

    index: int
    path: str
    retention_full: int
    retention_full_type: str
    retention_archive: int
    storage: StorageConfig
    """Where it lives: pgbackup:storage, or pgbackup:offsite for repo2 when that is set."""
    offsite: bool = False
    """It lives at pgbackup:offsite, with that location's own key and CA file."""

    @property
    def setting(self) -> str:
        return "offsite" if self.offsite else "storage"

    @property
    def ca_file(self) -> str:
        """The file of its endpoint's private CA on the nodes ("" without one)."""
        if not self.storage.ca_cert:
            return ""
        return PATHS.offsite_ca if self.offsite else PATHS.storage_ca


def repositories(settings: Settings) -> tuple[Repository, ...]:
    """pgBackRest's repositories: repo1 (weekly fulls, incrementals, continuous WAL) and, with
    retention.monthly, repo2 (monthly fulls; continuous WAL only from its newest full on), nested in repo1's
    bucket or at pgbackup:offsite."""
    repos = [Repository(1, settings.storage.repo_path, settings.retention.full, settings.retention.full_type, 0,
                        settings.storage)]
    if settings.retention.monthly:
        monthly = settings.monthly_storage
        repos.append(Repository(2, monthly.monthly_repo_path, settings.retention.monthly, "count", 1, monthly,
                                offsite=settings.offsite is not None))
    return tuple(repos)


def repository_prices(settings: Settings) -> dict[int, tuple[str, Price]]:
    """Each repository's provider and storage price (pgbackup:<storage or offsite>.pricePerTbMonth, or the
    provider's list price): what the storageCost output multiplies its bytes by."""
    prices: dict[int, tuple[str, Price]] = {}
    for repo in repositories(settings):
        storage = repo.storage
        price = PROVIDERS[storage.provider].price
        if storage.price_per_tb_month is not None:
            price = Price(storage.price_per_tb_month, f"configured (pgbackup:{repo.setting}.pricePerTbMonth)")
        prices[repo.index] = (storage.provider, price)
    return prices


def primary_url(settings: Settings, node: NodeConfig) -> str:
    """Patroni's REST API answers 200 here only on the leader. An IPv6 address is bracketed (RFC 3986)."""
    return f"http://{url_host(node.host)}:{settings.cluster.patroni_api_port}/primary"


@dataclass(frozen=True)
class NodeContext(Context):
    """What every template of a node sees (no secrets)."""

    step: str
    """The remote step the script is for ("" in a file)."""
    repos: tuple[Repository, ...]
    node: NodeConfig
    peers: tuple[NodeConfig, ...]
    """The other nodes, with backupStandby (pgBackRest's pg2..pgN); none without."""
    tls_clients: tuple[str, ...]
    storage: StorageConfig
    cluster: ClusterConfig
    retention: RetentionConfig
    pgbackrest: PgBackRestConfig
    since_2_54: bool
    """2.54: backup-standby=prefer (a standby that is down no longer fails check or a backup); block
    incremental (repo-block, which needs repo-bundle) for smaller incrementals."""
    paths: Paths
    names: Names
    primary_url: str

    def for_step(self, step: str) -> Self:
        """The same context for the script of `step`."""
        return replace(self, step=step)


def node_context(settings: Settings, node: NodeConfig, step: str = "") -> NodeContext:
    peers = tuple(peer for peer in settings.cluster.nodes if peer.name != node.name)
    return NodeContext(
        step=step,
        repos=repositories(settings),
        node=node,
        peers=peers if settings.pgbackrest.backup_standby else (),
        tls_clients=tuple(n.name for n in settings.cluster.nodes),
        storage=settings.storage,
        cluster=settings.cluster,
        retention=settings.retention,
        pgbackrest=settings.pgbackrest,
        since_2_54=settings.pgbackrest.feature_version >= (2, 54),
        paths=PATHS,
        names=NAMES,
        primary_url=primary_url(settings, node),
    )


T = TypeVar("T", bound=NodeContext)


def extend(cls: type[T], base: NodeContext, **fields: Any) -> T:
    """A template's own context: `base`'s fields and the template's."""
    return cls(**base.values(), **fields)


@dataclass(frozen=True)
class InstallContext(NodeContext):
    """templates/scripts/install.sh.j2: the directories pgBackRest writes in."""

    directories: tuple[Directory, ...]


@dataclass(frozen=True)
class FilesContext(NodeContext):
    """templates/scripts/files.sh.j2: what the files step creates, refuses and does after a change."""

    tls_server: bool
    directories: tuple[Directory, ...]
    manifest_magic: str
    actions: Mapping[str, str]


@dataclass(frozen=True)
class PatroniLocalContext(NodeContext):
    """templates/scripts/patroni-local.sh.j2: Patroni's replica-creation methods, pgbackrest first."""

    methods: list[str]
    method: dict[str, Any]


@dataclass(frozen=True)
class ArchivingContext(NodeContext):
    """templates/scripts/archiving.sh.j2: the dynamic configuration it writes through patronictl."""

    dynamic_config: str


@dataclass(frozen=True)
class ScheduleContext(NodeContext):
    """templates/scripts/schedule.sh.j2 and, on `pulumi destroy`, unschedule.sh.j2: the timers to enable, the
    units to retire, what the units hash to; the units to stop and remove."""

    timers: list[str]
    retired: list[str]
    units_digest: str
    units: list[str]


@dataclass(frozen=True)
class UnitContext(NodeContext):
    """templates/systemd/*.service.j2 and *.timer.j2: a scheduled backup's service and timer (`backup`), the
    metrics collector's timer (no backup); a timer's calendar and randomized delay."""

    backup: Backup | None
    calendar: str
    randomized_delay_sec: int


@dataclass(frozen=True)
class BackupProgramContext(NodeContext):
    """templates/monitoring/pgbackup-backup.py.j2: the standbys pgbackrest.conf declares, by member name."""

    peers_hosts: Mapping[str, str]


@dataclass(frozen=True)
class RepositorySecretValues:
    """The repository key and the passphrase, as plain strings: only ever inside a secret Output."""

    access_key_id: str
    secret_access_key: str
    cipher_pass: str
    offsite_access_key_id: str = ""
    """repo2's key when it lives at pgbackup:offsite."""
    offsite_secret_access_key: str = ""


@dataclass(frozen=True)
class ConfigContext(NodeContext):
    """templates/pgbackrest/pgbackrest.conf.j2: built only inside the secret Output that renders it."""

    secrets: RepositorySecretValues


@dataclass(frozen=True)
class DynamicConfigContext(Context):
    """templates/patroni/dynamic.yaml.j2: archiving, in Patroni's dynamic configuration."""

    archive_command: str
    restore_command: str
    archive_timeout: int

