"""The restore drill's files on a node: its script, its units (pgbackup-drill.{service,timer} for repo1 and,
with retention.monthly, pgbackup-drill-monthly.{service,timer} for repo2) and its tmpfiles.d entries. Every
node gets them; the script decides at run time whether this node is the one that drills."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.config import NodeConfig, Settings, url_host
from components.layout import DAEMON_RELOAD, PATHS
from components.remote import NodeFile
from components.render import render


@dataclass(frozen=True)
class Drill:
    """One scheduled drill: its systemd unit, the repository it restores from, and its calendar's key in
    pgbackup:drill."""

    unit: str
    repo: int
    schedule_key: str


WEEKLY = Drill("pgbackup-drill", 1, "schedule")
MONTHLY = Drill("pgbackup-drill-monthly", 2, "monthly_schedule")
DRILLS = (WEEKLY, MONTHLY)


def scheduled_drills(settings: Settings) -> list[Drill]:
    """repo1's drill, and repo2's with retention.monthly."""
    return [d for d in DRILLS if d.repo == 1 or settings.retention.monthly > 0]


def cluster_url(settings: Settings, node: NodeConfig) -> str:
    """Patroni's member list, from the node's own REST API."""
    return f"http://{url_host(node.host)}:{settings.cluster.patroni_api_port}/cluster"


def drill_files(settings: Settings, node: NodeConfig, ctx: dict[str, Any]) -> list[NodeFile]:
    """The drill's script and units for this node (`ctx`: the node's template context)."""
    ctx = {**ctx, "drill": settings.drill, "cluster_url": cluster_url(settings, node)}
    timeout = max(6 * 3600, 4 * settings.drill.rto_budget_seconds)
    files = [NodeFile(PATHS.drill_script, "0755", "root", "root", render("drill/pgbackup-drill.py.j2", **ctx))]
    for drill in scheduled_drills(settings):
        files.append(NodeFile(f"{PATHS.unit_dir}/{drill.unit}.service", "0644", "root", "root",
                              render("systemd/pgbackup-drill.service.j2", **ctx, run=drill, timeout_sec=timeout),
                              actions=(DAEMON_RELOAD,)))
        files.append(NodeFile(f"{PATHS.unit_dir}/{drill.unit}.timer", "0644", "root", "root",
                              render("systemd/pgbackup-drill.timer.j2", **ctx, run=drill,
                                     calendar=getattr(settings.drill, drill.schedule_key),
                                     randomized_delay_sec=settings.schedule.randomized_delay_sec),
                              actions=(DAEMON_RELOAD,)))
    return files


def drill_timers(settings: Settings) -> list[str]:
    return [f"{d.unit}.timer" for d in scheduled_drills(settings)]


def retired_drill_units(settings: Settings) -> list[str]:
    """The monthly drill's units once retention.monthly is 0."""
    scheduled = scheduled_drills(settings)
    return [f"{d.unit}.{suffix}" for d in DRILLS if d not in scheduled for suffix in ("timer", "service")]
