"""The Grafana dashboard (components/dashboard.py, stack output grafanaDashboard): every query parses (promtool),
every series it queries is one the node programs write (the collector run for real, the verification's and
the drill's metrics from their own code), it loads back into grafana-foundation-sdk's types without loss, and
the program exports it, the same in two evaluations. tests/lab/test_drill.py and test_verify.py look for its
series in a node's real metrics files."""

from __future__ import annotations

import dataclasses
import http.server
import json
import subprocess
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus, stat

from components.context import node_context
from components.dashboard import build, dashboard_uid, grafana_dashboard, to_json
from components.render import render
from pgbackup_testkit import promql
from tests.harness import node_files, run_program, stack_config
from tests.test_hostile import valid_settings

MONTHLY = stack_config(retention={"full": 4, "monthly": 12}, drill={"rtoBudgetSeconds": 900})
DRILL = "/usr/local/lib/pgbackup/pgbackup-drill"
VERIFY = "/usr/local/lib/pgbackup/pgbackup-verify"
INFO = [{"name": "main", "status": {"code": 0}, "archive": [], "backup": [
    {"type": kind, "timestamp": {"start": stop - 600, "stop": stop}, "database": {"id": 1, "repo-key": repo},
     "info": {"size": 123456789, "delta": stored * 3,
              "repository": {"size": 23456789, "delta": stored, "delta-map": 96, "size-map": 96}}}
    for kind, repo, stop, stored in (("full", 1, 1795660000, 23456789), ("diff", 1, 1795700000, 345678),
                                     ("incr", 1, 1795740000, 123456), ("full", 2, 1795600000, 23456789))]}]


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(grafana_dashboard(valid_settings(MONTHLY)))
    return parsed


def module_of(script: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(script, name, "exec"), module.__dict__)  # noqa: S102 - our own rendered template
    return module


class Primary(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def patroni() -> Iterator[str]:
    """Patroni's /primary answering 200: the collector's node is the leader (it writes the archiver's metrics)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), Primary)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/primary"
    server.shutdown()


def collector_run(tmp: Path, primary_url: str) -> str:
    """The metrics file pgbackup-metrics writes on a leader: the rendered collector run by python3 as root, with
    stand-ins for runuser, pgbackrest (INFO) and psql (pg_stat_archiver's row) first on PATH, and two WAL
    segments waiting."""
    settings = valid_settings(MONTHLY)
    pg_data = tmp / "pgdata"
    (pg_data / "pg_wal" / "archive_status").mkdir(parents=True)
    for segment in ("000000010000000000000007", "000000010000000000000008"):
        (pg_data / "pg_wal" / "archive_status" / f"{segment}.ready").touch()
    context = node_context(settings, settings.cluster.nodes[0])
    context = dataclasses.replace(
        context, primary_url=primary_url, cluster=settings.cluster.model_copy(update={"pg_data": str(pg_data)}),
        paths=dataclasses.replace(context.paths, metrics_file=str(tmp / "exporter" / "pgbackrest.prom")))
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    stubs = {"runuser": '#!/bin/bash\nwhile [[ $# -gt 0 && $1 != -- ]]; do shift; done\nshift\nexec "$@"\n',
             "pgbackrest": f"#!/bin/bash\ncat <<'JSON'\n{json.dumps(INFO)}\nJSON\n",
             "psql": "#!/bin/bash\necho '1795740100 3 0'\n",
             "collector": render("monitoring/pgbackup-metrics.py.j2", context)}
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    result = subprocess.run(["/usr/bin/python3", str(bin_dir / "collector")], capture_output=True, text=True,
                            env={"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return (tmp / "exporter" / "pgbackrest.prom").read_text()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, patroni: str) -> dict[str, str]:
    """The samples Prometheus would hold from a three-node cluster's metrics files: pg1 the leader (collector,
    verification of both repositories), pg2 the drill node (both repositories drilled), each as its own
    program writes them."""
    files = node_files(run_program(MONTHLY), "pg2")
    verify = module_of(files[VERIFY]["content"], "pgbackup_verify")
    drill = module_of(files[DRILL]["content"], "pgbackup_drill")
    clean = {"checksum": 0, "missing_wal": 0, "other": 0}
    window = {"pieces": [{"from": 1_795_600_000, "to": 1_795_660_000}], "pieceCount": 1, "damaged": [],
              "promisedFrom": 1_795_600_000, "missingSeconds": 0, "endLagSeconds": 0}
    state = {"time": "2026-11-26T05:00:00Z", "ok": True, "node": "pg1", "errors": clean,
             "repos": {"1": {"errors": clean, "window": window}, "2": {"errors": clean, "window": window}}}
    verified = verify.metrics_of(state) + verify.window_metrics(state)
    drilled = drill.prom_text({str(repo): {
        "ok": True, "refused": None, "repo": repo, "epoch": 1_795_750_000 + repo, "lastSuccessEpoch": 1_795_750_000,
        "rtoSeconds": 42.5, "restoredBytes": 123456789, "shortfallBytes": 0,
        "phases": {"restore": 30.0, "replay": 12.5, "checks": 1.0, "cleanup": 0.5}} for repo in (1, 2)})
    collected = collector_run(tmp_path_factory.mktemp("collector"), patroni)
    assert 'pgbackrest_archive_failed_total{stanza="main"} 3' in collected  # the leader's part was written
    return {"pg1": collected + verified, "pg2": drilled}


@pytest.fixture(scope="module")
def written(files: dict[str, str]) -> list[dict[str, str]]:
    return [sample for node, text in files.items() for sample in promql.samples(text, node)]


def rules_file(expressions: list[str]) -> str:
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"pgbackup:dashboard_query_{i}", "expr": expr} for i, expr in enumerate(expressions)]}]})


def promtool_rules(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(text)
    return subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)


def test_every_query_parses_with_promtool(board: dict[str, Any], tmp_path: Path) -> None:
    """Each query as Grafana sends it ($stanza chosen, every node), wrapped as a recording rule for promtool."""
    expressions = [promql.concrete(e, "main") for e in promql.expressions(board)]
    assert len(expressions) >= 20
    result = promtool_rules(rules_file(expressions), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout


def test_promtool_refuses_a_query_that_does_not_parse(board: dict[str, Any], tmp_path: Path) -> None:
    broken = promql.concrete(promql.expressions(board)[0], "main").replace(")", "", 1)
    result = promtool_rules(rules_file([broken]), tmp_path)
    assert result.returncode != 0
    assert "could not parse expression" in result.stdout + result.stderr


def test_every_series_the_dashboard_queries_is_one_the_nodes_write(board: dict[str, Any],
                                                                   written: list[dict[str, str]]) -> None:
    queries = [*promql.expressions(board), *promql.variable_selectors(board)]
    problems = {q: promql.unmet(promql.concrete(q, "main"), written) for q in queries}
    assert {q: p for q, p in problems.items() if p} == {}
    queried = {name for q in queries for name, _ in promql.selectors(q)}
    # Every program's metrics are on the dashboard: the collector's, the verification's, the drill's.
    assert {"pgbackrest_last_backup_timestamp_seconds", "pgbackrest_wal_ready_count",
            "pgbackrest_archive_failed_total", "pgbackup_verify_errors", "pgbackup_drill_duration_seconds",
            "pgbackup_drill_restored_bytes", "pgbackrest_last_backup_size_bytes",
            "pgbackrest_last_backup_repository_bytes", "pgbackrest_last_backup_duration_seconds",
            "pgbackrest_repository_backup_bytes"} <= queried


def test_the_series_judge_names_what_no_node_writes(written: list[dict[str, str]]) -> None:
    assert promql.unmet('max(pgbackrest_backup_size_bytes{stanza="main"})', written) == [
        "no series pgbackrest_backup_size_bytes{stanza='main'}"]
    assert promql.unmet('max(pgbackrest_last_backup_timestamp_seconds{stanza="main",repo="3"})', written) == [
        "no series pgbackrest_last_backup_timestamp_seconds{stanza='main',repo='3'}"]
    assert promql.unmet('max by (tier) (pgbackup_drill_success{stanza="main"})', written) == [
        "no label 'tier' on the series of 'max by (tier) (pgbackup_drill_success{stanza=\"main\"})'"]
    assert promql.unmet('max(pgbackup_drill_success{stanza="other"})', written) != []
    with pytest.raises(AssertionError, match="a bare metric"):
        promql.selectors("max(pgbackup_drill_success)")


def test_it_loads_back_into_the_librarys_types_without_loss(board: dict[str, Any]) -> None:
    text = grafana_dashboard(valid_settings(MONTHLY))
    plugins.register_default_plugins()
    loaded = model.Dashboard.from_json(json.loads(text))
    assert to_json(loaded) == text
    assert loaded.panels is not None
    panels = [p for p in loaded.panels if isinstance(p, model.Panel)]
    assert len(panels) == len([p for p in board["panels"] if p["type"] != "row"])
    # Decoded as the library's own models, not as plain dictionaries.
    assert any(isinstance(p.options, stat.Options) for p in panels)
    assert all(isinstance(t, prometheus.Dataquery) for p in panels for t in p.targets or [])
    assert len({p.id_val for p in loaded.panels}) == len(loaded.panels)


def test_thresholds_and_the_rto_budget_come_from_the_settings(board: dict[str, Any]) -> None:
    panels = {p["title"]: p for p in board["panels"]}
    rto = panels["Drill RTO against its budget"]
    assert [t["expr"] for t in rto["targets"]][1] == "vector(900)"
    assert rto["fieldConfig"]["defaults"]["thresholds"]["steps"][1] == {"color": "red", "value": 900}
    assert panels["Last drill's RTO, by repository"]["fieldConfig"]["defaults"]["thresholds"]["steps"][1][
        "value"] == 900
    backups = panels["Newest backup's age, by repository and type"]["fieldConfig"]
    assert backups["defaults"]["thresholds"]["steps"][1]["value"] == 26 * 3600  # schedule.maxBackupAgeHours
    assert backups["overrides"][0]["properties"][0]["value"]["steps"][1]["value"] == 36 * 86400  # repo2
    without = json.loads(grafana_dashboard(valid_settings(stack_config())))
    plain = {p["title"]: p for p in without["panels"]}
    assert plain["Newest backup's age, by repository and type"]["fieldConfig"]["overrides"] == []
    assert plain["Drill RTO against its budget"]["targets"][1]["expr"] == "vector(1800)"


def test_stanza_variable_defaults_to_the_stacks_stanza_and_the_uid_fits_grafana() -> None:
    settings = valid_settings(stack_config(cluster={**stack_config()["cluster"], "stanza": "Main_db.v2"}))
    board = build(settings)
    assert board.templating.list_val is not None
    stanza = next(v for v in board.templating.list_val if v.name == "stanza")
    assert stanza.current is not None
    assert stanza.current.value == "Main_db.v2"
    assert dashboard_uid("main") == "pgbackup-main"
    for name in ("Main_db.v2", "x" * 64, "a-b_c"):
        uid = dashboard_uid(name)
        assert len(uid) <= 40, uid
        assert uid.replace("-", "").replace("_", "").isalnum(), uid
    assert dashboard_uid("x" * 64) != dashboard_uid("x" * 63)


def test_the_program_exports_it_the_same_in_two_evaluations() -> None:
    first, second = run_program(MONTHLY), run_program(MONTHLY)
    text = first.outputs["grafanaDashboard"]
    assert text == second.outputs["grafanaDashboard"] == grafana_dashboard(valid_settings(MONTHLY))
    assert "grafanaDashboard" not in first.secret_outputs
    assert json.loads(text)["uid"] == "pgbackup-main"


def test_the_lab_tests_judge_covers_every_query_once(board: dict[str, Any], files: dict[str, str]) -> None:
    """tests/lab/test_drill.py checks the queries without the verification's series, tests/lab/test_verify.py
    those with them: together, every query; and the judge finds the verification's series missing from a
    drill node's files alone."""
    verify = promql.unmet_in_files(board, "main", {}, prefix="pgbackup_verify_")
    rest = promql.unmet_in_files(board, "main", {}, without="pgbackup_verify_")
    selecting = {q for q in promql.queries(board) if promql.selectors(q)}  # all but vector(<the RTO budget>)
    assert len(verify) + len(rest) == len(selecting) == len(set(promql.queries(board))) - 1
    assert set(verify) | set(rest) == selecting
    assert promql.unmet_in_files(board, "main", files, prefix="pgbackup_verify_") == {}
    assert promql.unmet_in_files(board, "main", files, without="pgbackup_verify_") == {}
    text = files["pg2"]
    assert promql.unmet_in_files(board, "main", {"pg2": text}, without="pgbackup_verify_")  # no collector run
    assert promql.unmet_in_files(board, "main", {"pg2": text}, prefix="pgbackup_verify_")
