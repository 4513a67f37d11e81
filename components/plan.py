"""What pgbackup puts on each node and runs there, computed once from the settings: a pure, typed plan.

`plan_cluster(settings)` gives a `NodePlan` per node (its files with their follow-up actions, each step's
script) and the stage table the cluster runs them in. No Pulumi resource is created here and nothing here
is secret: the files whose content is only known at apply time (pgbackrest.conf, which holds the S3 key and
the passphrase; the TLS material) name their `Source`, and the components (node.py, cluster.py) wire them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from components.config import NodeConfig, Settings
from components.context import (
    ArchivingContext,
    BackupProgramContext,
    ConfigContext,
    DynamicConfigContext,
    FilesContext,
    InstallContext,
    NodeContext,
    PatroniLocalContext,
    RepositorySecretValues,
    ScheduleContext,
    UnitContext,
    extend,
    node_context,
)
from components.drill import drill_files, drill_timers, retired_drill_units
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
    VERIFY_TIMER,
    VERIFY_UNIT,
    Backup,
    Directory,
)
from components.monitoring import check_script, consul_service_json
from components.proofs import verify_context
from components.remote import MANIFEST_MAGIC
from components.render import render, sha256


class Source(enum.Enum):
    """Where a file's content comes from when it is only known at apply time."""

    CONFIG = "pgbackrest.conf, rendered with the repository key and passphrase"
    TLS_CA = "the cluster's CA certificate"
    TLS_CERT = "the node's certificate"
    TLS_KEY = "the node's private key"


@dataclass(frozen=True)
class PlannedFile:
    """A file that lands on a node (see components.remote.NodeFile): its content, or its Source."""

    path: str
    mode: str
    owner: str
    group: str
    content: str | Source
    secret: bool = False
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Script:
    """A remote step's bash script, and the script run when the step's resource is deleted."""

    step: str
    create: str
    delete: str | None = None


# The follow-up actions by name, for the files step's template.
FILE_ACTIONS = {"daemon_reload": DAEMON_RELOAD, "tmpfiles": TMPFILES, "tls_restart": TLS_RESTART,
                "archive_workers": ARCHIVE_WORKERS, "consul_reload": CONSUL_RELOAD}

# The directories the install step creates (pgBackRest's own, written by postgres).
INSTALL_DIRECTORIES = (
    Directory(PATHS.config_dir, "root", "postgres", "0750"),
    Directory(PATHS.log, "postgres", "postgres", "0750"),
    Directory(PATHS.spool, "postgres", "postgres", "0750"),
    Directory(PATHS.lock, "postgres", "postgres", "0750"),
    Directory(PATHS.home, "postgres", "postgres", "0750"),
)

REPLICA_METHODS = ["pgbackrest", "basebackup"]


@dataclass(frozen=True)
class Barrier:
    """A point the next stage waits for: `<cluster>-<name>`, after the named steps of every node."""

    name: str
    after: tuple[str, ...]


@dataclass(frozen=True)
class Stage:
    """A cluster-wide step, run on every node (it acts where Patroni says the node is the leader, or on
    every node for `schedule`): `<cluster>-<node>-<step>`, after the barrier `after` and, per node, after
    that node's own `after_own` steps; re-run when any node's pgbackrest.conf changes if `on_config`."""

    step: str
    after: str
    on_config: bool = False
    after_own: tuple[str, ...] = ()


# The node component's steps, in order: install -> files -> patroni-local (resource <node>-<suffix>).
NODE_STEPS = {"install": "install", "files": "files", "patroni-local": "patroni"}

# The cluster's stages: every node's files -> stanza (leader) -> archiving (leader, with every node's
# Patroni edit) -> verify and first backup (leader) -> every node's schedule. Between stages, one barrier.
BARRIERS = (
    Barrier("files-ready", ("files",)),
    Barrier("stanza-ready", ("stanza", "patroni-local")),
    Barrier("archiving-ready", ("archiving",)),
    Barrier("verified", ("verify",)),
)
STAGES = (
    Stage("stanza", after="files-ready", on_config=True),
    Stage("archiving", after="stanza-ready"),
    Stage("verify", after="archiving-ready", on_config=True),
    Stage("schedule", after="verified", after_own=("files",)),
)


def scheduled_backups(settings: Settings) -> dict[str, Backup]:
    """The backups this configuration schedules, by their pgbackup:schedule key: full and incremental into
    repo1, and with retention.monthly the monthly archive into repo2."""
    return {key: b for key, b in BACKUPS.items() if b.repo == 1 or settings.retention.monthly > 0}


def timers(settings: Settings) -> list[str]:
    """The timers the schedule step enables."""
    return [f"{b.unit}.timer" for b in scheduled_backups(settings).values()] + [
        METRICS_TIMER, VERIFY_TIMER, *drill_timers(settings)]


def retired_units(settings: Settings) -> list[str]:
    """Units of backups this configuration no longer schedules (the monthly archive once retention.monthly
    is 0): the schedule step disables and removes them. Their backups stay in the repository."""
    scheduled = scheduled_backups(settings).values()
    return [f"{b.unit}.{suffix}" for b in BACKUPS.values() if b not in scheduled
            for suffix in ("timer", "service")] + retired_drill_units(settings)


def archive_command(stanza: str) -> str:
    return f"pgbackrest --stanza={stanza} archive-push %p"


def restore_command(stanza: str) -> str:
    return f'pgbackrest --stanza={stanza} archive-get %f "%p"'


def replica_method(stanza: str) -> dict[str, Any]:
    """Patroni's pgbackrest replica-creation method (--delta reuses what the data directory holds)."""
    return {"command": f"/usr/bin/pgbackrest --stanza={stanza} --delta restore", "keep_data": True, "no_params": True}


def dynamic_config(settings: Settings) -> str:
    """Patroni's dynamic configuration for archiving, rendered from templates/patroni/dynamic.yaml.j2."""
    stanza = settings.cluster.stanza
    return render("patroni/dynamic.yaml.j2", DynamicConfigContext(
        archive_command=archive_command(stanza),
        restore_command=restore_command(stanza),
        archive_timeout=settings.pgbackrest.archive_timeout,
    ))


def unit_files(settings: Settings, ctx: NodeContext) -> list[PlannedFile]:
    """The systemd units, tmpfiles entry, metrics collector, check commands and, with monitoring.consul, the
    Consul service definition: identical content on every node but for the node's own REST API address."""
    unit = (DAEMON_RELOAD,)
    files = []
    for key, backup in scheduled_backups(settings).items():
        backup_ctx = extend(UnitContext, ctx, backup=backup, calendar=getattr(settings.schedule, key),
                            randomized_delay_sec=settings.schedule.randomized_delay_sec)
        for suffix in ("service", "timer"):
            files.append(PlannedFile(f"{PATHS.unit_dir}/{backup.unit}.{suffix}", "0644", "root", "root",
                                     render(f"systemd/pgbackup-backup.{suffix}.j2", backup_ctx), actions=unit))
    files.append(PlannedFile(f"{PATHS.unit_dir}/{METRICS_UNIT}", "0644", "root", "root",
                             render("systemd/pgbackup-metrics.service.j2", ctx), actions=unit))
    files.append(PlannedFile(f"{PATHS.unit_dir}/{METRICS_TIMER}", "0644", "root", "root",
                             render("systemd/pgbackup-metrics.timer.j2", extend(
                                 UnitContext, ctx, backup=None, calendar=METRICS_CALENDAR, randomized_delay_sec=0)),
                             actions=unit))
    files.append(PlannedFile(PATHS.metrics_script, "0755", "root", "root",
                             render("monitoring/pgbackup-metrics.py.j2", ctx)))
    files.append(PlannedFile(PATHS.check_script, "0755", "root", "root", check_script(settings, ctx)))
    files.append(PlannedFile(PATHS.backup_script, "0755", "root", "root", render(
        "monitoring/pgbackup-backup.py.j2",
        extend(BackupProgramContext, ctx, peers_hosts={peer.name: peer.host for peer in ctx.peers}))))
    verify = verify_context(settings, ctx)
    for path, template in ((f"{PATHS.unit_dir}/{VERIFY_UNIT}", "systemd/pgbackup-verify.service.j2"),
                           (f"{PATHS.unit_dir}/{VERIFY_TIMER}", "systemd/pgbackup-verify.timer.j2")):
        files.append(PlannedFile(path, "0644", "root", "root", render(template, verify), actions=unit))
    files.append(PlannedFile(PATHS.verify_script, "0755", "root", "root",
                             render("monitoring/pgbackup-verify.py.j2", verify)))
    if settings.monitoring.consul:
        files.append(PlannedFile(PATHS.consul_service, "0644", "root", "root", consul_service_json(settings),
                                 actions=(CONSUL_RELOAD,)))
    files.append(PlannedFile(PATHS.tmpfiles, "0644", "root", "root", render("systemd/pgbackup.tmpfiles.j2", ctx),
                             actions=(TMPFILES,)))
    files += [PlannedFile(path, "0644", "root", "root", content, actions=unit) if path.startswith(PATHS.unit_dir)
              else PlannedFile(path, "0755", "root", "root", content) for path, content in drill_files(settings, ctx)]
    if settings.pgbackrest.backup_standby:
        files.append(PlannedFile(f"{PATHS.unit_dir}/{TLS_SERVER_UNIT}", "0644", "root", "root",
                                 render("systemd/pgbackup-tls-server.service.j2", ctx),
                                 actions=(DAEMON_RELOAD, TLS_RESTART)))
    return files


def directories_of(files: list[PlannedFile]) -> list[Directory]:
    """The root-owned directories (layout.DIRECTORIES) the files land in, parents first."""
    wanted = {f.path.rsplit("/", 1)[0] for f in files}
    unknown = wanted - DIRECTORIES.keys()
    if unknown:
        raise ValueError(f"no owner and mode in layout.DIRECTORIES for {sorted(unknown)}")
    return [DIRECTORIES[path] for path in sorted(wanted)]


@dataclass(frozen=True)
class NodePlan:
    """Everything pgbackup does on one node."""

    node: NodeConfig
    context: NodeContext
    files: tuple[PlannedFile, ...]
    scripts: dict[str, Script]
    """Each step's script by step name: NODE_STEPS, then each of STAGES."""
    units_digest: str
    """sha256 of the units and other non-secret files: the schedule step re-runs when they change."""

    def render_config(self, secrets: RepositorySecretValues) -> str:
        """This node's pgbackrest.conf (secret: it holds the S3 key and the cipher passphrase)."""
        return render("pgbackrest/pgbackrest.conf.j2", extend(ConfigContext, self.context, secrets=secrets))


def plan_node(settings: Settings, node: NodeConfig) -> NodePlan:
    ctx = node_context(settings, node)
    tls_server = settings.pgbackrest.backup_standby
    stanza = settings.cluster.stanza
    both = (TLS_RESTART, ARCHIVE_WORKERS)
    files = [PlannedFile(PATHS.config, "0640", "root", "postgres", Source.CONFIG, secret=True, actions=both)]
    if settings.storage.ca_cert:
        files.append(PlannedFile(PATHS.storage_ca, "0644", "root", "root", settings.storage.ca_cert, actions=both))
    if settings.offsite is not None and settings.offsite.ca_cert:
        files.append(PlannedFile(PATHS.offsite_ca, "0644", "root", "root", settings.offsite.ca_cert, actions=both))
    if tls_server:
        files += [
            PlannedFile(PATHS.tls_ca, "0644", "root", "root", Source.TLS_CA, actions=(TLS_RESTART,)),
            PlannedFile(PATHS.tls_cert, "0644", "root", "root", Source.TLS_CERT, actions=(TLS_RESTART,)),
            PlannedFile(PATHS.tls_key, "0640", "root", "postgres", Source.TLS_KEY, secret=True,
                        actions=(TLS_RESTART,)),
        ]
    units = unit_files(settings, ctx)
    files += units
    units_digest = sha256(*(f"{f.path}\n{f.content}" for f in units))
    unschedule_units = [*timers(settings), METRICS_UNIT] + ([TLS_SERVER_UNIT] if tls_server else [])
    schedule = extend(ScheduleContext, ctx, timers=timers(settings), retired=retired_units(settings),
                      units_digest=units_digest, units=unschedule_units)
    scripts = [
        Script("install", render("scripts/install.sh.j2", extend(
            InstallContext, ctx.for_step("install"), directories=INSTALL_DIRECTORIES))),
        Script("files", render("scripts/files.sh.j2", extend(
            FilesContext, ctx.for_step("files"), tls_server=tls_server, directories=tuple(directories_of(files)),
            manifest_magic=MANIFEST_MAGIC, actions=FILE_ACTIONS))),
        Script("patroni-local", render("scripts/patroni-local.sh.j2", extend(
            PatroniLocalContext, ctx.for_step("patroni-local"), methods=REPLICA_METHODS,
            method=replica_method(stanza)))),
        Script("stanza", render("scripts/stanza.sh.j2", ctx.for_step("stanza"))),
        Script("archiving", render("scripts/archiving.sh.j2", extend(
            ArchivingContext, ctx.for_step("archiving"), dynamic_config=dynamic_config(settings).rstrip("\n")))),
        Script("verify", render("scripts/verify.sh.j2", ctx.for_step("verify"))),
        Script("schedule", render("scripts/schedule.sh.j2", schedule.for_step("schedule")),
               delete=render("scripts/unschedule.sh.j2", schedule.for_step("unschedule"))),
    ]
    return NodePlan(node=node, context=ctx, files=tuple(files), scripts={s.step: s for s in scripts},
                    units_digest=units_digest)


def plan_cluster(settings: Settings) -> dict[str, NodePlan]:
    """Every node's plan, by node name, in the configuration's order."""
    return {node.name: plan_node(settings, node) for node in settings.cluster.nodes}
