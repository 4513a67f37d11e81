"""Monitoring over the metrics every node writes (templates/monitoring/): the Prometheus alert rules (stack
output `alertRules`, judged by promtool in the tests), the Nagios-style check commands on every node, and the
Consul service that runs them. The thresholds of the rules and of the checks come from `thresholds()` only."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from components.calendar import longest_gap_days
from components.config import ClusterConfig, Settings
from components.context import NodeContext, extend
from components.layout import HEALTH_CHECKS, PATHS
from components.render import Context, promql_string, render

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4, "pb": 1000**5,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "pib": 1024**5}

SERVICE_NAME = "pgbackrest"
CHECK_TIMEOUT = "10s"


def size_bytes(size: str) -> int:
    """pgBackRest's size syntax (4GiB, 512MB, 1024) in bytes."""
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", size)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {size!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


@dataclass(frozen=True)
class Thresholds:
    """Where the alert rules fire and the checks leave OK. Ages in seconds, sizes in bytes."""

    backup_max_age: int
    """repo1's newest backup older than this: critical."""
    monthly_max_age: int
    """repo2's newest monthly archive older than this: warning (0: no monthly archives)."""
    archive_max_age: int
    """WAL waiting and nothing archived for this long: critical (stalled)."""
    queue_alert: int
    """WAL backlog past this (half of archive-push-queue-max, beyond which WAL is dropped): critical (0: none)."""
    metrics_max_age: int
    """Metrics older than this: the collector is stale (alert: warning; checks: UNKNOWN)."""
    wal_ready_max_age: int
    """The oldest WAL segment waiting for archiving older than this: critical (archiving is stuck)."""
    verify_max_age: int
    """The newest verification older than this: a run was missed (warning)."""
    drill_max_age: int
    """The newest drill of repo1 older than this: a run was missed (warning)."""
    monthly_drill_max_age: int
    """The newest drill of repo2 older than this: a run was missed (warning; 0: no monthly archives)."""
    rto_budget: int
    """The newest drill took longer than this from restore to ready (warning)."""
    stranded_after: int
    """A member stranded for longer than this (since the first collection that found it so): warning."""


# How much longer than its schedule's longest gap a verification or drill may be: a day, for a run that is
# slow, delayed (RandomizedDelaySec) or run late after the node was down (Persistent=true).
MISSED_RUN_GRACE = 86400
# A healthy pgBackRest archives a segment within seconds of it being complete. The margin beyond
# archive_timeout also spans the collector's interval (it runs every 5 minutes).
WAL_READY_MARGIN = 120
# A replica is on the old timeline for a few seconds after every failover: a stranded member is reported once
# two collections (5 minutes apart) have found it so, and 2 minutes more for a late collection.
STRANDED_AFTER = 420


def thresholds(settings: Settings) -> Thresholds:
    queue_max = settings.pgbackrest.archive_push_queue_max
    return Thresholds(
        backup_max_age=settings.schedule.max_backup_age_hours * 3600,
        # First Sundays are four or five weeks apart; a day more for a slow or retried backup.
        monthly_max_age=36 * 86400 if settings.retention.monthly else 0,
        archive_max_age=max(300, 5 * settings.pgbackrest.archive_timeout),
        queue_alert=size_bytes(queue_max) // 2 if queue_max else 0,
        metrics_max_age=1800,
        wal_ready_max_age=settings.pgbackrest.archive_timeout + WAL_READY_MARGIN,
        verify_max_age=longest_gap_days(settings.drill.verify_schedule) * 86400 + MISSED_RUN_GRACE,
        drill_max_age=longest_gap_days(settings.drill.schedule) * 86400 + MISSED_RUN_GRACE,
        monthly_drill_max_age=(longest_gap_days(settings.drill.monthly_schedule) * 86400 + MISSED_RUN_GRACE
                               if settings.retention.monthly else 0),
        rto_budget=settings.drill.rto_budget_seconds,
        stranded_after=STRANDED_AFTER,
    )


@dataclass(frozen=True)
class RulesContext(Context):
    """templates/monitoring/pgbackrest.rules.yml.j2 (the stack output alertRules)."""

    cluster: ClusterConfig
    limits: Thresholds
    drill_stanza: str
    """A PromQL string: the drill's metrics' stanza label (optional_stanza_label)."""


@dataclass(frozen=True)
class CheckContext(NodeContext):
    """templates/monitoring/pgbackup-check.py.j2: the thresholds the checks share with the rules."""

    limits: Thresholds
    queue_max: str | None


def optional_stanza_label(stanza: str) -> str:
    """A PromQL regex (Go RE2, anchored) for a `stanza` label equal to the stanza or absent: the drill's
    metrics are matched whether or not their writer labels them with the stanza."""
    return promql_string(f"({re.escape(stanza)})?")


def alert_rules(settings: Settings) -> str:
    return render("monitoring/pgbackrest.rules.yml.j2", RulesContext(
        cluster=settings.cluster, limits=thresholds(settings),
        drill_stanza=optional_stanza_label(settings.cluster.stanza)))


def check_script(settings: Settings, context: NodeContext) -> str:
    """The check commands of a node (templates/monitoring/pgbackup-check.py.j2)."""
    return render("monitoring/pgbackup-check.py.j2", extend(
        CheckContext, context, limits=thresholds(settings), queue_max=settings.pgbackrest.archive_push_queue_max))


def consul_service(settings: Settings) -> dict[str, Any]:
    """The Consul service definition: the checks as `args` (Consul dropped `script`), the design's intervals.
    Consul runs them only where its agent has enable_local_script_checks (docs/operating.md "Monitoring")."""
    service: dict[str, Any] = {
        "name": SERVICE_NAME,
        "tags": ["backup", "postgresql"],
        "meta": {"stanza": settings.cluster.stanza},
        "checks": [
            {"id": check.consul_id, "name": check.title, "args": [PATHS.check_script, check.command],
             "interval": check.interval, "timeout": CHECK_TIMEOUT}
            for check in HEALTH_CHECKS
        ],
    }
    if settings.pgbackrest.backup_standby:
        service["port"] = settings.pgbackrest.tls_server_port  # pgBackRest's TLS server on this node
    return {"service": service}


def consul_service_json(settings: Settings) -> str:
    return json.dumps(consul_service(settings), indent=2, sort_keys=True) + "\n"
