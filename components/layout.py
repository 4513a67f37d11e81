"""Where pgbackup puts things on a node, and the names of its systemd units. One place, used everywhere."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paths:
    config_dir: str = "/etc/pgbackrest"
    config: str = "/etc/pgbackrest/pgbackrest.conf"
    storage_ca: str = "/etc/pgbackrest/storage-ca.pem"
    offsite_ca: str = "/etc/pgbackrest/offsite-ca.pem"
    tls_dir: str = "/etc/pgbackrest/tls"
    tls_ca: str = "/etc/pgbackrest/tls/ca.pem"
    tls_cert: str = "/etc/pgbackrest/tls/node.crt"
    tls_key: str = "/etc/pgbackrest/tls/node.key"
    log: str = "/var/log/pgbackrest"
    spool: str = "/var/spool/pgbackrest"
    lock: str = "/run/pgbackrest"
    backup_lock: str = "/var/lib/pgbackrest/pgbackup-backup.lock"
    home: str = "/var/lib/pgbackrest"
    tmpfiles: str = "/etc/tmpfiles.d/pgbackup.conf"
    metrics_script: str = "/usr/local/lib/pgbackup/pgbackup-metrics"  # in metrics_dir
    metrics_file: str = "/var/lib/prometheus/node-exporter/pgbackrest.prom"
    check_script: str = "/usr/local/lib/pgbackup/pgbackup-check"  # in metrics_dir
    verify_script: str = "/usr/local/lib/pgbackup/pgbackup-verify"  # in metrics_dir
    # What the backup services run (as postgres): pgBackRest, from a standby that follows the leader.
    backup_script: str = "/usr/local/lib/pgbackup/pgbackup-backup"  # in metrics_dir
    # The collector's memory of since when each member is stranded (root's own, in state_dir).
    stranded_state: str = "/var/lib/pgbackup/stranded.json"
    # Written by the verification service as postgres (untrusted: read defensively), and its metrics (root).
    verify_state: str = "/var/lib/pgbackrest/pgbackup-verify.json"
    verify_metrics: str = "/var/lib/prometheus/node-exporter/pgbackup-verify.prom"
    consul_dir: str = "/etc/consul.d"
    consul_service: str = "/etc/consul.d/pgbackrest.json"  # in consul_dir
    unit_dir: str = "/etc/systemd/system"
    metrics_dir: str = "/usr/local/lib/pgbackup"
    # The restore drill (components/drill.py): its script, and what it writes as postgres.
    drill_script: str = "/usr/local/lib/pgbackup/pgbackup-drill"  # in metrics_dir
    drill_state: str = "/var/lib/pgbackrest/pgbackup-drill.json"  # in home
    drill_lock: str = "/var/lib/pgbackrest/pgbackup-drill.lock"  # in home
    drill_metrics: str = "/var/lib/prometheus/node-exporter/pgbackup-drill.prom"  # beside metrics_file
    # Root's own: the files step's list of what it installed, staged manifests and pending follow-up actions.
    state_dir: str = "/var/lib/pgbackup"


PATHS = Paths()


@dataclass(frozen=True)
class Backup:
    """One scheduled backup: its systemd unit, pgBackRest's --type and --repo, and its calendar's key in
    pgbackup:schedule."""

    kind: str
    pg_type: str
    repo: int

    @property
    def unit(self) -> str:
        return f"pgbackup-backup-{self.kind}"


FULL = Backup("full", "full", 1)
INCREMENTAL = Backup("incr", "incr", 1)
MONTHLY = Backup("monthly", "full", 2)
# The schedule keys (pgbackup:schedule.<key>) of each backup.
BACKUPS = {"full": FULL, "incremental": INCREMENTAL, "monthly": MONTHLY}

@dataclass(frozen=True)
class Directory:
    """A directory the files step writes into as root: it is root-owned, so that no other user (postgres
    above all) can plant a link or race a rename in it."""

    path: str
    owner: str
    group: str
    mode: str


# Every directory a managed file may land in; the files step creates or corrects each (never following a
# link). /etc/pgbackrest is group postgres: pgBackRest, run as postgres, reads its files.
DIRECTORIES = {
    d.path: d
    for d in (
        Directory(PATHS.config_dir, "root", "postgres", "0750"),
        Directory(PATHS.tls_dir, "root", "postgres", "0750"),
        Directory(PATHS.unit_dir, "root", "root", "0755"),
        Directory(PATHS.tmpfiles.rsplit("/", 1)[0], "root", "root", "0755"),
        Directory(PATHS.metrics_dir, "root", "root", "0755"),
        # Consul's configuration directory (pgbackup:monitoring.consul): the agent only reads it.
        Directory(PATHS.consul_dir, "root", "root", "0755"),
    )
}

# What the files step does after it changed (or removed) a file, once per run, in this order. A pending
# action survives an interrupted run (a marker in PATHS.state_dir) and is done by the next one.
DAEMON_RELOAD = "daemon-reload"  # the file is a systemd unit: reload; disabled and stopped when removed
TMPFILES = "tmpfiles"  # a tmpfiles.d entry: systemd-tmpfiles --create
TLS_RESTART = "tls-restart"  # read by pgBackRest's TLS server: restart it when it runs
ARCHIVE_WORKERS = "archive-workers"  # pgBackRest's configuration: running async archive workers finish or end
CONSUL_RELOAD = "consul-reload"  # the Consul service definition: reload the local agent (a warning without one)



@dataclass(frozen=True)
class Names:
    """The names of pgbackup's own units and other fixed values the templates write (templates see them as
    `names.<field>`)."""

    tls_server_unit: str = "pgbackup-tls-server.service"
    metrics_unit: str = "pgbackup-metrics.service"
    metrics_timer: str = "pgbackup-metrics.timer"
    metrics_calendar: str = "*:0/5"
    verify_unit: str = "pgbackup-verify.service"
    verify_timer: str = "pgbackup-verify.timer"
    state_max_bytes: int = 65536
    """The verification's and the drill's state files are read up to this size (they hold a few kilobytes)."""
    backup_lock_wait: int = 6 * 3600
    """Seconds a backup waits for another one (the backup lock, PATHS.backup_lock) before it fails."""
    standby_max_lag_bytes: int = 64 * 1024**2
    """A standby further behind the leader than this (Patroni's lag) is not used for a backup: pgBackRest
    waits archive-timeout for it to replay up to the backup's start."""
    endpoint_connect_timeout: int = 10
    """Seconds the files step gives each repository's endpoint to accept a TCP connection from the node."""
    archive_worker_pattern: str = "pgbackrest .*archive-(push|get):async"
    """pgBackRest's asynchronous archive workers (`pgrep -f`), run as postgres."""
    archive_worker_grace: int = 30
    """Seconds the files step lets a running asynchronous archive worker finish its run after pgBackRest's
    configuration changed, before it ends it (its archive_command then waits out archive-timeout, 60 s, and
    fails once)."""


NAMES = Names()
TLS_SERVER_UNIT = NAMES.tls_server_unit
METRICS_UNIT = NAMES.metrics_unit
METRICS_TIMER = NAMES.metrics_timer
METRICS_CALENDAR = NAMES.metrics_calendar
VERIFY_UNIT = NAMES.verify_unit
VERIFY_TIMER = NAMES.verify_timer


@dataclass(frozen=True)
class HealthCheck:
    """One command of the check script (`pgbackup-check <command>`, Nagios exit codes) and the interval the
    design gives it in Consul."""

    command: str
    consul_id: str
    title: str
    interval: str


HEALTH_CHECKS = (
    HealthCheck("backup-age", "pgbackrest-backup-age", "pgBackRest backup age", "1h"),
    HealthCheck("wal-archive", "pgbackrest-wal-archive", "pgBackRest WAL archive", "10m"),
    HealthCheck("standby", "pgbackrest-standby", "pgBackRest standbys (stranded members)", "5m"),
)

