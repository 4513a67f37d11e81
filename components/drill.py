"""The restore drill's files on a node: its script and its units (pgbackup-drill.{service,timer} for repo1 and,
with retention.monthly, pgbackup-drill-monthly.{service,timer} for repo2). Every node gets them; the script
decides at run time whether this node is the one that drills."""

from __future__ import annotations

from dataclasses import dataclass

from components.config import DrillConfig, NodeConfig, Settings, url_host
from components.context import NodeContext, extend
from components.layout import PATHS
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


@dataclass(frozen=True)
class DrillContext(NodeContext):
    """templates/drill/pgbackup-drill.py.j2 and templates/systemd/pgbackup-drill.{service,timer}.j2: the drill's
    settings, Patroni's member list URL, and for a unit its drill, calendar, delay and time limit."""

    drill: DrillConfig
    cluster_url: str
    run: Drill | None
    calendar: str
    randomized_delay_sec: int
    timeout_sec: int


def scheduled_drills(settings: Settings) -> list[Drill]:
    """repo1's drill, and repo2's with retention.monthly."""
    return [d for d in DRILLS if d.repo == 1 or settings.retention.monthly > 0]


def cluster_url(settings: Settings, node: NodeConfig) -> str:
    """Patroni's member list, from the node's own REST API."""
    return f"http://{url_host(node.host)}:{settings.cluster.patroni_api_port}/cluster"


def drill_context(settings: Settings, ctx: NodeContext, run: Drill | None = None) -> DrillContext:
    return extend(DrillContext, ctx, drill=settings.drill, cluster_url=cluster_url(settings, ctx.node), run=run,
                  calendar=getattr(settings.drill, run.schedule_key) if run else "",
                  randomized_delay_sec=settings.schedule.randomized_delay_sec,
                  timeout_sec=max(6 * 3600, 4 * settings.drill.rto_budget_seconds))


def drill_files(settings: Settings, ctx: NodeContext) -> list[tuple[str, str]]:
    """(path, content) of the drill's script (0755) and units (0644, daemon-reload) for this node."""
    files = [(PATHS.drill_script, render("drill/pgbackup-drill.py.j2", drill_context(settings, ctx)))]
    for run in scheduled_drills(settings):
        for suffix in ("service", "timer"):
            files.append((f"{PATHS.unit_dir}/{run.unit}.{suffix}",
                          render(f"systemd/pgbackup-drill.{suffix}.j2", drill_context(settings, ctx, run))))
    return files


def drill_timers(settings: Settings) -> list[str]:
    return [f"{d.unit}.timer" for d in scheduled_drills(settings)]


def retired_drill_units(settings: Settings) -> list[str]:
    """The monthly drill's units once retention.monthly is 0."""
    scheduled = scheduled_drills(settings)
    return [f"{d.unit}.{suffix}" for d in DRILLS if d not in scheduled for suffix in ("timer", "service")]
