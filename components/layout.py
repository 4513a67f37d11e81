"""Where pgbackup puts things on a node, and the names of its systemd units. One place, used everywhere."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paths:
    config_dir: str = "/etc/pgbackrest"
    config: str = "/etc/pgbackrest/pgbackrest.conf"
    storage_ca: str = "/etc/pgbackrest/storage-ca.pem"
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
    metrics_script: str = "/usr/local/lib/pgbackup/pgbackup-metrics"
    metrics_file: str = "/var/lib/prometheus/node-exporter/pgbackrest.prom"
    unit_dir: str = "/etc/systemd/system"


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

TLS_SERVER_UNIT = "pgbackup-tls-server.service"
METRICS_UNIT = "pgbackup-metrics.service"
METRICS_TIMER = "pgbackup-metrics.timer"
METRICS_CALENDAR = "*:0/5"

