"""The Grafana dashboard over the metrics the nodes write (output `grafanaDashboard`, docs/operating.md "Monitoring"),
built with Grafana's own dashboards-as-code library (grafana-foundation-sdk), never written as JSON by hand.

A pure function of the settings: the same settings give the same JSON, byte for byte. Its panels query only
the series that the node programs write (templates/monitoring/pgbackup-metrics.py.j2, pgbackup-verify.py.j2,
templates/drill/pgbackup-drill.py.j2); their thresholds are the alert rules' (components/monitoring.thresholds),
so a panel turns red where an alert fires. The series with no `instance` filter are the cluster's (the newest
backup, the leader's archiving, the newest verification and drill across the nodes); `$instance` narrows the
per-node ones (WAL waiting, the collector's runs, pgbackrest info's status, the leader).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from components.config import Settings
from components.monitoring import Thresholds, thresholds

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
STANZA = 'stanza="$stanza"'
NODE = 'stanza="$stanza",instance=~"$instance"'
HEIGHT = 7

# The newest drill and verification of each repository across the nodes (as the alert rules judge them): a
# former drill node's older result is not shown beside the newest one.
_DRILL_RUN = f"pgbackup_drill_last_run_timestamp_seconds{{{STANZA}}}"
NEWEST_DRILL = f"on (instance, repo) ({_DRILL_RUN} == on (repo) group_left max by (repo) ({_DRILL_RUN}))"
_VERIFY_RUN = f"pgbackup_verify_last_run_timestamp_seconds{{{STANZA}}}"
NEWEST_VERIFY = f"on (instance, repo) ({_VERIFY_RUN} == on (repo) group_left max by (repo) ({_VERIFY_RUN}))"


def dashboard_uid(stanza: str) -> str:
    """Grafana's uid (at most 40 letters, digits, '-' and '_'): `pgbackup-<stanza>`, or a shortened stanza and
    a hash of it where the stanza has a '.' or is long."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,31}", stanza):
        return f"pgbackup-{stanza}"
    digest = hashlib.sha256(stanza.encode()).hexdigest()[:8]
    return f"pgbackup-{re.sub(r'[^A-Za-z0-9_-]', '-', stanza)[:22]}-{digest}"


def _query(expr: str, legend: str, ref: str = "A", instant: bool = False) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
    return query.instant() if instant else query.range()


def _steps(*steps: tuple[float | None, str]) -> builders.ThresholdsConfig:
    return builders.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(
        [model.Threshold(value=value, color=color) for value, color in steps])


def _limit(limit: int) -> builders.ThresholdsConfig:
    """Green, and red from `limit` on (the alert's threshold)."""
    return _steps((None, "green"), (limit, "red"))


def _limit_override(limit: int) -> list[model.DynamicConfigValue]:
    return [model.DynamicConfigValue(id_val="thresholds", value=model.ThresholdsConfig(
        mode=model.ThresholdsMode.ABSOLUTE,
        steps=[model.Threshold(value=None, color="green"), model.Threshold(value=limit, color="red")]))]


def _states(*states: tuple[str, str, str]) -> list[model.ValueMapping]:
    """Value mappings: (value, text, colour)."""
    return [model.ValueMap(options={value: model.ValueMappingResult(text=text, color=color, index=index)
                                    for index, (value, text, color) in enumerate(states)})]


def _stat(title: str, description: str, queries: Sequence[prometheus.Dataquery], unit: str,
          steps: builders.ThresholdsConfig, width: int = 6) -> stat.Panel:
    panel = (stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit).thresholds(steps)
             .graph_mode(common.BigValueGraphMode.NONE).color_mode(common.BigValueColorMode.BACKGROUND)
             .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
             .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .height(HEIGHT).span(width))
    for query in queries:
        panel.with_target(query)
    return panel


def _series(title: str, description: str, queries: Sequence[prometheus.Dataquery], unit: str,
            steps: builders.ThresholdsConfig | None = None, width: int = 12) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
             .line_interpolation(common.LineInterpolation.STEP_AFTER).fill_opacity(10).span_nulls(True)
             .legend(common_builders.VizLegendOptions().show_legend(True)
                     .display_mode(common.LegendDisplayMode.TABLE).placement(common.LegendPlacement.BOTTOM)
                     .calcs(["lastNotNull", "max"]))
             .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                      .sort(common.SortOrder.DESCENDING))
             .height(HEIGHT + 1).span(width))
    if steps is not None:
        panel.thresholds(steps).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE))
    for query in queries:
        panel.with_target(query)
    return panel


def _backups(limits: Thresholds, monthly: bool) -> list[stat.Panel | timeseries.Panel]:
    age = f"time() - max by (repo, type) (pgbackrest_last_backup_timestamp_seconds{{{STANZA}}})"
    newest = _stat(
        "Newest backup's age, by repository and type",
        "Seconds since the newest backup of each type (full, diff, incr) in each repository stopped, as pgBackRest "
        "info reports it on the nodes. Red past the alert PgBackRestBackupTooOld (schedule.maxBackupAgeHours)"
        + (" for repo1 and PgBackRestMonthlyArchiveTooOld for repo2 (the monthly archives)." if monthly else "."),
        [_query(age, "repo{{repo}} {{type}}", instant=True)], "s", _limit(limits.backup_max_age), width=12)
    if monthly:
        newest.override_by_regexp("repo2 .*", _limit_override(limits.monthly_max_age))
    return [
        newest,
        _stat("Backups in the repositories", "Backups pgBackRest info lists for the stanza (red: none).",
              [_query(f"max(pgbackrest_backup_count{{{STANZA}}})", "backups", instant=True)], "none",
              _steps((None, "red"), (1, "green"))),
        _stat("pgbackrest info, by node", "pgBackRest info's status code on each node: 0 ok, 99 info failed "
              "(alert PgBackRestStanzaError).",
              [_query(f"max by (instance) (pgbackrest_stanza_status{{{NODE}}})", "{{instance}}", instant=True)],
              "none", _limit(1)).mappings(_states(("0", "ok", "green"), ("99", "info failed", "red"))),
        _series("Backups over time: the newest backup's age (each drop is a new backup)",
                "The age of the newest backup of each type in each repository over time: a backup that stops "
                "resets its line to zero, so the drops are the backups and their spacing the schedule.",
                [_query(age, "repo{{repo}} {{type}}")], "s", _limit(limits.backup_max_age)),
        _series("Database size in the newest backup, by repository (as the last drill restored it)",
                "The bytes the newest restore drill of each repository restored: the database as its newest "
                "backup holds it.",
                [_query(f"max by (repo) (pgbackup_drill_restored_bytes{{{STANZA}}} and {NEWEST_DRILL})",
                        "repo{{repo}}")], "bytes"),
        _series("Backups over time: size, by repository and type",
                "For the newest backup of each type in each repository (a step is a new backup): the database it "
                "was taken of (pgBackRest info's size) and what it stored in the repository (its repository "
                "delta, compressed; a full backup stores everything, diff and incr the changed files).",
                [_query(f"max by (repo, type) (pgbackrest_last_backup_size_bytes{{{STANZA}}})",
                        "repo{{repo}} {{type}} database"),
                 _query(f"max by (repo, type) (pgbackrest_last_backup_repository_bytes{{{STANZA}}})",
                        "repo{{repo}} {{type}} stored", ref="B")], "bytes"),
        _series("Backups over time: duration, by repository and type",
                "How long the newest backup of each type in each repository took, from its start to its stop.",
                [_query(f"max by (repo, type) (pgbackrest_last_backup_duration_seconds{{{STANZA}}})",
                        "repo{{repo}} {{type}}")], "s"),
        _stat("Storage, by repository",
              "Bytes the backups each repository holds take there now (the sum of what each stored). Archived "
              "WAL is not counted.",
              [_query(f"max by (repo) (pgbackrest_repository_backup_bytes{{{STANZA}}})", "repo{{repo}}",
                      instant=True)], "bytes", _steps((None, "blue"))),
        _series("Storage over time, by repository",
                "Bytes the backups each repository holds take there (the sum of pgBackRest info's repository "
                "delta over its backups; archived WAL not counted): it grows with each backup and drops when "
                "retention expires old ones.",
                [_query(f"max by (repo) (pgbackrest_repository_backup_bytes{{{STANZA}}})", "repo{{repo}}")],
                "bytes", width=18),
    ]


def _archiving(limits: Thresholds) -> list[stat.Panel | timeseries.Panel]:
    panels: list[stat.Panel | timeseries.Panel] = [
        _stat("Last WAL archived, age",
              "Seconds since the leader last archived a WAL segment (pg_stat_archiver). An idle cluster archives "
              "every archive_timeout; the alert PgBackRestWalArchiveStalled fires past the red line only while WAL "
              "waits.",
              [_query(f"time() - max(pgbackrest_archive_last_archived_timestamp_seconds{{{STANZA}}})", "age",
                      instant=True)], "s", _limit(limits.archive_max_age)),
        _stat("WAL archiving", "The leader's last archive attempt: failing or ok (alert PgBackRestWalArchiveFailing).",
              [_query(f"max(pgbackrest_archive_check_failed{{{STANZA}}})", "archiving", instant=True)], "none",
              _limit(1)).mappings(_states(("0", "ok", "green"), ("1", "failing", "red"))),
        _stat("Leader", "1 on the Patroni leader, where backups and archiving run.",
              [_query(f"max by (instance) (pgbackrest_is_leader{{{NODE}}})", "{{instance}}", instant=True)],
              "none", _steps((None, "blue"))).mappings(_states(("1", "leader", "green"), ("0", "replica", "blue"))),
        _stat("Metrics collected, age, by node", "Seconds since pgbackup-metrics last ran on each node (alert "
              "PgBackRestMetricsStale).",
              [_query(f"time() - max by (instance) (pgbackrest_metrics_collected_timestamp_seconds{{{NODE}}})",
                      "{{instance}}", instant=True)], "s", _limit(limits.metrics_max_age)),
        _series("WAL archive failures",
                "Segments archive_command failed on in the past hour, on the leader (pg_stat_archiver's "
                "failed_count).",
                [_query(f"sum(increase(pgbackrest_archive_failed_total{{{STANZA}}}[1h]))", "failures per hour")],
                "none", _limit(1), width=8),
        _series("WAL segments waiting for archiving, by node",
                "Complete WAL segments not yet archived (archive_status/*.ready).",
                [_query(f"max by (instance) (pgbackrest_wal_ready_count{{{NODE}}})", "{{instance}}")],
                "none", width=8),
        _series("Oldest waiting segment's age, by node",
                "How long the oldest segment waiting for archiving has waited (alert PgBackRestWalWaitingTooLong "
                "past the red line).",
                [_query(f"max by (instance) (pgbackrest_wal_ready_oldest_age_seconds{{{NODE}}})", "{{instance}}")],
                "s", _limit(limits.wal_ready_max_age), width=8),
    ]
    backlog = _series("WAL backlog, by node",
                      "Bytes of WAL waiting for archive-push"
                      + (" (alert PgBackRestArchiveQueueNearLimit past the red line: half of "
                         "archive-push-queue-max, beyond which WAL is dropped)." if limits.queue_alert else "."),
                      [_query(f"max by (instance) (pgbackrest_archive_queue_bytes{{{NODE}}})", "{{instance}}")],
                      "bytes", _limit(limits.queue_alert) if limits.queue_alert else None, width=24)
    return [*panels, backlog]


def _proofs(limits: Thresholds, monthly: bool) -> list[stat.Panel | timeseries.Panel | bargauge.Panel]:
    budget = limits.rto_budget
    rto = f"max by (repo) (pgbackup_drill_duration_seconds{{{STANZA}}} and {NEWEST_DRILL})"
    drill_age = _stat(
        "Last drill's age, by repository", "Seconds since the newest restore drill of each repository ended "
        "(alert PgBackupDrillTooOld past drill.schedule" + (" or drill.monthlySchedule)." if monthly else ")."),
        [_query(f"time() - max by (repo) ({_DRILL_RUN})", "repo{{repo}}", instant=True)], "s",
        _limit(limits.drill_max_age))
    if monthly:
        drill_age.override_by_regexp("repo2", _limit_override(limits.monthly_drill_max_age))
    return [
        _stat("Last verification's errors, by repository and kind",
              "Problems the newest pgbackup-verify run found (checksum, missing_wal, other; alert "
              "PgBackupVerifyFoundErrors).",
              [_query(f"max by (repo, kind) (pgbackup_verify_errors{{{STANZA}}} and {NEWEST_VERIFY})",
                      "repo{{repo}} {{kind}}", instant=True)], "none", _limit(1), width=12),
        _stat("Last verification's age, by repository",
              "Seconds since the newest verification of each repository (alert PgBackupVerifyTooOld).",
              [_query(f"time() - max by (repo) ({_VERIFY_RUN})", "repo{{repo}}", instant=True)], "s",
              _limit(limits.verify_max_age)),
        drill_age,
        _stat("Last restore drill, by repository", "The newest drill's result (alert PgBackupDrillFailed).",
              [_query(f"min by (repo) (pgbackup_drill_success{{{STANZA}}} and {NEWEST_DRILL})", "repo{{repo}}",
                      instant=True)], "none", _steps((None, "red"), (1, "green"))).mappings(
            _states(("1", "success", "green"), ("0", "failed", "red"))),
        _stat("Last drill's RTO, by repository",
              f"The newest drill's restore-to-ready time; red from the RTO budget on ({budget} s, "
              "drill.rtoBudgetSeconds; alert PgBackupDrillOverRtoBudget).",
              [_query(rto, "repo{{repo}}", instant=True)], "s", _limit(budget)),
        _stat("Drill refused, by repository and reason", "1 where the newest drill refused to start, by reason "
              "(none: it started).",
              [_query(f"max by (repo, reason) (pgbackup_drill_refused{{{STANZA}}} and {NEWEST_DRILL}) > 0",
                      "repo{{repo}} {{reason}}", instant=True)], "none", _limit(1)).no_value("none"),
        _stat("WAL the last drill did not replay, by repository",
              "Bytes of archived WAL the newest drill's copy did not replay (0: it reached the archive's end).",
              [_query(f"max by (repo) (pgbackup_drill_replay_shortfall_bytes{{{STANZA}}} and {NEWEST_DRILL})",
                      "repo{{repo}}", instant=True)], "bytes", _limit(1)),
        _series("Drill RTO against its budget",
                f"Each drill's restore-to-ready time (restore and replay), against the RTO budget of {budget} s "
                "(drill.rtoBudgetSeconds: the red line).",
                [_query(rto, "repo{{repo}} RTO"), _query(f"vector({budget})", "RTO budget", ref="B")], "s",
                _limit(budget)),
        (bargauge.Panel().title("Last drill's phases, by repository")
         .description("Seconds each phase of the newest drill of each repository took.").datasource(DATASOURCE)
         .unit("s").thresholds(_steps((None, "blue"))).display_mode(common.BarGaugeDisplayMode.BASIC)
         .orientation(common.VizOrientation.HORIZONTAL)
         .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
         .with_target(_query(f"max by (repo, phase) (pgbackup_drill_phase_duration_seconds{{{STANZA}}} and "
                             f"{NEWEST_DRILL})", "repo{{repo}} {{phase}}", instant=True))
         .height(HEIGHT + 1).span(12)),
    ]


def _window() -> list[stat.Panel]:
    """The recoverable window (pgbackup-verify's recovery_window), as the newest verification computed it."""
    def newest(metric: str) -> str:
        return f"max by (repo) (pgbackup_recovery_window_{metric}{{{STANZA}}} and {NEWEST_VERIFY})"

    return [
        _stat("Recoverable window, by repository",
              "The earliest and the latest time each repository can recover to, as the newest verification found "
              "them (`pgbackup status` lists each piece where a WAL gap splits the window).",
              [_query(f"{newest('start_timestamp_seconds')} * 1000", "repo{{repo}} from", instant=True),
               _query(f"{newest('end_timestamp_seconds')} * 1000", "repo{{repo}} to", ref="B", instant=True)],
              "dateTimeAsIso", _steps((None, "blue")), width=12),
        _stat("Time the window misses, by repository",
              "Seconds of what retention keeps that no piece of the window covers: a WAL gap, a damaged backup "
              "set, an expired chain (alert PgBackupRecoveryWindowShort).",
              [_query(newest("missing_seconds"), "repo{{repo}}", instant=True)], "s", _limit(1)),
        _stat("Window pieces, by repository",
              "Pieces of the recoverable window: more than one where a WAL gap no backup bridges splits it.",
              [_query(newest("pieces"), "repo{{repo}}", instant=True)], "none", _steps((None, "green"), (2, "red"))),
    ]


def build(settings: Settings) -> model.Dashboard:
    """The dashboard, as the library's types."""
    limits = thresholds(settings)
    monthly = bool(settings.retention.monthly)
    stanza = settings.cluster.stanza
    board = (
        builders.Dashboard(f"pgBackRest backups: {stanza}").uid(dashboard_uid(stanza))
        .description("pgbackup: the backups, WAL archiving, verification and restore drills of a Patroni cluster "
                     "(node metrics of pgbackup-metrics, pgbackup-verify and pgbackup-drill).")
        .tags(["pgbackup", "pgbackrest", "postgresql"]).time("now-7d", "now").refresh("5m").timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(builders.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            builders.QueryVariable("stanza").label("Stanza").datasource(DATASOURCE)
            .query("label_values(pgbackrest_stanza_status, stanza)")
            .current(model.VariableOption(selected=True, text=stanza, value=stanza))
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC))
        .with_variable(
            builders.QueryVariable("instance").label("Node").datasource(DATASOURCE)
            .description("Narrows the per-node panels; the cluster's (backups, archiving, proofs) show every node.")
            .query('label_values(pgbackrest_metrics_collected_timestamp_seconds{stanza="$stanza"}, instance)')
            .current(model.VariableOption(selected=True, text="All", value="$__all"))
            .multi(True).include_all(True).all_value(".*")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC))
    )
    sections: list[tuple[str, Sequence[stat.Panel | timeseries.Panel | bargauge.Panel]]] = [
        ("Backups", _backups(limits, monthly)),
        ("WAL archiving", _archiving(limits)),
        ("Verification and restore drills", _proofs(limits, monthly)),
        ("Recoverable window", _window()),
    ]
    panel_id = 0
    for title, panels in sections:
        panel_id += 1
        board.with_row(builders.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board.with_panel(panel.id(panel_id))
    return board.build()


def to_json(board: model.Dashboard) -> str:
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def grafana_dashboard(settings: Settings) -> str:
    """The stack output `grafanaDashboard`: the dashboard's JSON, for Grafana's import or its Pulumi provider."""
    return to_json(build(settings))
