"""Prometheus alert rules over the metrics every node writes (templates/monitoring/). Exported as the
stack output `alertRules` for the monitoring stack to load; judged by promtool in the tests."""

from __future__ import annotations

import re

from components.config import Settings
from components.render import render

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4, "pb": 1000**5,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "pib": 1024**5}


def size_bytes(size: str) -> int:
    """pgBackRest's size syntax (4GiB, 512MB, 1024) in bytes."""
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", size)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {size!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def alert_rules(settings: Settings) -> str:
    queue_max = settings.pgbackrest.archive_push_queue_max
    return render(
        "monitoring/pgbackrest.rules.yml.j2",
        cluster=settings.cluster,
        backup_max_age_hours=settings.schedule.max_backup_age_hours,
        backup_max_age_seconds=settings.schedule.max_backup_age_hours * 3600,
        archive_timeout=settings.pgbackrest.archive_timeout,
        archive_max_age_seconds=max(300, 5 * settings.pgbackrest.archive_timeout),
        queue_max_bytes=size_bytes(queue_max) if queue_max else 0,
        monthly=settings.retention.monthly > 0,
        # First Sundays are four or five weeks apart; a day more for a slow or retried backup.
        monthly_max_age_days=36,
    )
