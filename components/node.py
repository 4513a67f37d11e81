"""A node's pgBackRest set-up: the package, its files (configuration, certificates, units), and Patroni's
local replica-creation settings. Three remote steps, run on every node in parallel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_command import remote

from components.config import NodeConfig, Settings, url_host
from components.layout import (
    ARCHIVE_WORKERS,
    BACKUPS,
    CONSUL_RELOAD,
    DAEMON_RELOAD,
    DIRECTORIES,
    METRICS_CALENDAR,
    METRICS_TIMER,
    METRICS_UNIT,
    PATHS,
    TLS_RESTART,
    TLS_SERVER_UNIT,
    TMPFILES,
    Backup,
    Directory,
)
from components.monitoring import check_script, consul_service_json
from components.remote import MANIFEST_MAGIC, NodeFile, manifest, remote_step
from components.render import render, sha256


@dataclass(frozen=True)
class RepositorySecrets:
    """What pgBackRest needs to reach and decrypt the repository. All secret."""

    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]
    cipher_pass: pulumi.Output[str]


@dataclass(frozen=True)
class NodeTls:
    """This node's TLS material for pgBackRest's server and client."""

    ca_cert_pem: pulumi.Output[str]
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]


def primary_url(settings: Settings, node: NodeConfig) -> str:
    """Patroni's REST API answers 200 here only on the leader. An IPv6 address is bracketed (RFC 3986)."""
    return f"http://{url_host(node.host)}:{settings.cluster.patroni_api_port}/primary"


def scheduled_backups(settings: Settings) -> dict[str, Backup]:
    """The backups this configuration schedules, by their pgbackup:schedule key: full and incremental into
    repo1, and with retention.monthly the monthly archive into repo2."""
    return {key: b for key, b in BACKUPS.items() if b.repo == 1 or settings.retention.monthly > 0}


def repositories(settings: Settings) -> list[dict[str, Any]]:
    """pgBackRest's repositories: repo1 (weekly fulls, incrementals, continuous WAL) and, with
    retention.monthly, repo2 (monthly fulls; continuous WAL only from its newest full on)."""
    repos: list[dict[str, Any]] = [{"index": 1, "path": settings.storage.repo_path,
                                    "retention_full": settings.retention.full,
                                    "retention_full_type": settings.retention.full_type, "retention_archive": 0}]
    if settings.retention.monthly:
        repos.append({"index": 2, "path": settings.storage.monthly_repo_path,
                      "retention_full": settings.retention.monthly, "retention_full_type": "count",
                      "retention_archive": 1})
    return repos


def template_context(settings: Settings, node: NodeConfig, step: str = "") -> dict[str, Any]:
    """What every template of a node sees (no secrets)."""
    peers = [peer for peer in settings.cluster.nodes if peer.name != node.name]
    return {
        "step": step,
        "repos": repositories(settings),
        "node": node,
        "peers": peers if settings.pgbackrest.backup_standby else [],
        "tls_clients": [n.name for n in settings.cluster.nodes],
        "storage": settings.storage,
        "cluster": settings.cluster,
        "retention": settings.retention,
        "pgbackrest": settings.pgbackrest,
        # 2.54: backup-standby=prefer (a standby that is down no longer fails check or a backup); block
        # incremental (repo-block, which needs repo-bundle) for smaller incrementals.
        "since_2_54": settings.pgbackrest.feature_version >= (2, 54),
        "paths": PATHS,
        "primary_url": primary_url(settings, node),
    }


def archive_command(stanza: str) -> str:
    return f"pgbackrest --stanza={stanza} archive-push %p"


def restore_command(stanza: str) -> str:
    return f'pgbackrest --stanza={stanza} archive-get %f "%p"'


def replica_method(stanza: str) -> dict[str, Any]:
    """Patroni's pgbackrest replica-creation method (--delta reuses what the data directory holds)."""
    return {"command": f"/usr/bin/pgbackrest --stanza={stanza} --delta restore", "keep_data": True, "no_params": True}


def unit_files(settings: Settings, node: NodeConfig) -> list[NodeFile]:
    """The systemd units, tmpfiles entry, metrics collector, check commands and, with monitoring.consul, the
    Consul service definition: identical content on every node but for the node's own REST API address."""
    ctx = template_context(settings, node)
    unit = (DAEMON_RELOAD,)
    files = []
    for key, backup in scheduled_backups(settings).items():
        files.append(NodeFile(f"{PATHS.unit_dir}/{backup.unit}.service", "0644", "root", "root",
                              render("systemd/pgbackup-backup.service.j2", **ctx, backup=backup), actions=unit))
        files.append(NodeFile(f"{PATHS.unit_dir}/{backup.unit}.timer", "0644", "root", "root",
                              render("systemd/pgbackup-backup.timer.j2", **ctx, backup=backup,
                                     calendar=getattr(settings.schedule, key),
                                     randomized_delay_sec=settings.schedule.randomized_delay_sec), actions=unit))
    files.append(NodeFile(f"{PATHS.unit_dir}/{METRICS_UNIT}", "0644", "root", "root",
                          render("systemd/pgbackup-metrics.service.j2", **ctx), actions=unit))
    files.append(NodeFile(f"{PATHS.unit_dir}/{METRICS_TIMER}", "0644", "root", "root",
                          render("systemd/pgbackup-metrics.timer.j2", **ctx, calendar=METRICS_CALENDAR),
                          actions=unit))
    files.append(NodeFile(PATHS.metrics_script, "0755", "root", "root",
                          render("monitoring/pgbackup-metrics.py.j2", **ctx)))
    files.append(NodeFile(PATHS.check_script, "0755", "root", "root", check_script(settings, ctx)))
    if settings.monitoring.consul:
        files.append(NodeFile(PATHS.consul_service, "0644", "root", "root", consul_service_json(settings),
                              actions=(CONSUL_RELOAD,)))
    files.append(NodeFile(PATHS.tmpfiles, "0644", "root", "root", render("systemd/pgbackup.tmpfiles.j2", **ctx),
                          actions=(TMPFILES,)))
    if settings.pgbackrest.backup_standby:
        files.append(NodeFile(f"{PATHS.unit_dir}/{TLS_SERVER_UNIT}", "0644", "root", "root",
                              render("systemd/pgbackup-tls-server.service.j2", **ctx),
                              actions=(DAEMON_RELOAD, TLS_RESTART)))
    return files


# The follow-up actions by name, for the files step's template.
FILE_ACTIONS = {"daemon_reload": DAEMON_RELOAD, "tmpfiles": TMPFILES, "tls_restart": TLS_RESTART,
                "archive_workers": ARCHIVE_WORKERS, "consul_reload": CONSUL_RELOAD}


def directories_of(files: list[NodeFile]) -> list[Directory]:
    """The root-owned directories (layout.DIRECTORIES) the files land in, parents first."""
    wanted = {f.path.rsplit("/", 1)[0] for f in files}
    unknown = wanted - DIRECTORIES.keys()
    if unknown:
        raise ValueError(f"no owner and mode in layout.DIRECTORIES for {sorted(unknown)}")
    return [DIRECTORIES[path] for path in sorted(wanted)]


def timers(settings: Settings) -> list[str]:
    """The timers the schedule step enables."""
    return [f"{b.unit}.timer" for b in scheduled_backups(settings).values()] + [METRICS_TIMER]


def retired_units(settings: Settings) -> list[str]:
    """Units of backups this configuration no longer schedules (the monthly archive once retention.monthly
    is 0): the schedule step disables and removes them. Their backups stay in the repository."""
    scheduled = scheduled_backups(settings).values()
    return [f"{b.unit}.{suffix}" for b in BACKUPS.values() if b not in scheduled for suffix in ("timer", "service")]


def render_config(settings: Settings, node: NodeConfig, secrets: RepositorySecrets) -> pulumi.Output[str]:
    """This node's pgbackrest.conf. Secret: it holds the S3 key and the cipher passphrase."""
    ctx = template_context(settings, node)

    def _render(values: list[str]) -> str:
        access_key_id, secret_access_key, cipher_pass = values
        return render(
            "pgbackrest/pgbackrest.conf.j2",
            **ctx,
            secrets={"access_key_id": access_key_id, "secret_access_key": secret_access_key,
                     "cipher_pass": cipher_pass},
        )

    return pulumi.Output.secret(
        pulumi.Output.all(secrets.access_key_id, secrets.secret_access_key, secrets.cipher_pass).apply(_render)
    )


@dataclass
class PgBackRestNodeArgs:
    node: NodeConfig
    """The node to set up."""
    settings: Settings
    """The whole validated configuration (the node's peers come from it)."""
    secrets: RepositorySecrets
    """Repository credentials and the cipher passphrase."""
    connection: remote.ConnectionArgs
    """How Pulumi reaches the node over SSH."""
    tls: NodeTls | None = None
    """TLS material, with backupStandby."""


class PgBackRestNode(pulumi.ComponentResource):
    """pgBackRest installed and configured on one Patroni node."""

    config_digest: pulumi.Output[str]
    """sha256 of the node's pgbackrest.conf (secret); cluster steps re-run when it changes."""

    def __init__(self, name: str, args: PgBackRestNodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgbackup:node:PgBackRestNode", name, None, opts)
        settings, node = args.settings, args.node

        def ctx(step: str) -> dict[str, Any]:
            return template_context(settings, node, step)

        directories = [
            {"path": PATHS.config_dir, "owner": "root", "group": "postgres", "mode": "0750"},
            {"path": PATHS.log, "owner": "postgres", "group": "postgres", "mode": "0750"},
            {"path": PATHS.spool, "owner": "postgres", "group": "postgres", "mode": "0750"},
            {"path": PATHS.lock, "owner": "postgres", "group": "postgres", "mode": "0750"},
            {"path": PATHS.home, "owner": "postgres", "group": "postgres", "mode": "0750"},
        ]
        self.install = remote_step(
            f"{name}-install",
            step="install",
            conn=args.connection,
            script=render("scripts/install.sh.j2", **ctx("install"), directories=directories),
            parent=self,
        )

        config = render_config(settings, node, args.secrets)
        files = [NodeFile(PATHS.config, "0640", "root", "postgres", config, secret=True,
                          actions=(TLS_RESTART, ARCHIVE_WORKERS))]
        if settings.storage.ca_cert:
            files.append(NodeFile(PATHS.storage_ca, "0644", "root", "root", settings.storage.ca_cert,
                                  actions=(TLS_RESTART, ARCHIVE_WORKERS)))
        if args.tls is not None:
            files += [
                NodeFile(PATHS.tls_ca, "0644", "root", "root", args.tls.ca_cert_pem, actions=(TLS_RESTART,)),
                NodeFile(PATHS.tls_cert, "0644", "root", "root", args.tls.cert_pem, actions=(TLS_RESTART,)),
                NodeFile(PATHS.tls_key, "0640", "root", "postgres", args.tls.key_pem, secret=True,
                         actions=(TLS_RESTART,)),
            ]
        files += unit_files(settings, node)
        self.files = remote_step(
            f"{name}-files",
            step="files",
            conn=args.connection,
            script=render("scripts/files.sh.j2", **ctx("files"), tls_server=args.tls is not None,
                          directories=directories_of(files), manifest_magic=MANIFEST_MAGIC,
                          tls_unit=TLS_SERVER_UNIT, actions=FILE_ACTIONS),
            stdin=manifest(files),
            parent=self,
            depends_on=[self.install],
        )

        stanza = settings.cluster.stanza
        self.patroni = remote_step(
            f"{name}-patroni",
            step="patroni-local",
            conn=args.connection,
            script=render(
                "scripts/patroni-local.sh.j2",
                **ctx("patroni-local"),
                methods=["pgbackrest", "basebackup"],
                method=replica_method(stanza),
            ),
            parent=self,
            depends_on=[self.files],
        )
        self.config_digest = pulumi.Output.secret(config.apply(sha256))
        self.units_digest = sha256(*(f"{f.path}\n{f.content}" for f in unit_files(settings, node)))
        self.register_outputs({"config_digest": self.config_digest, "units_digest": self.units_digest})


def dynamic_config(settings: Settings) -> str:
    """Patroni's dynamic configuration for archiving, rendered from templates/patroni/dynamic.yaml.j2."""
    stanza = settings.cluster.stanza
    return render(
        "patroni/dynamic.yaml.j2",
        archive_command=archive_command(stanza),
        restore_command=restore_command(stanza),
        archive_timeout=settings.pgbackrest.archive_timeout,
    )
