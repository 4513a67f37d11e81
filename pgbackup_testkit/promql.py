"""What the dashboard's PromQL asks of the metrics, judged against metrics files (the tests: files the node
programs wrote under test; the lab: a node's real /var/lib/prometheus/node-exporter/*.prom).

Reads the subset of PromQL components/dashboard.py writes: selectors `name{label op "value", ...}` (every
metric named with its braces), `by (...)` and `on (...)` lists, Grafana's $stanza and $instance."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")
METRIC_NAME = re.compile(r"\b(?:pgbackrest|pgbackup)_[A-Za-z0-9_]+")
SAMPLE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+\S+")
LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Labels that Prometheus adds when it scrapes (node_exporter's textfile collector writes none of them).
SCRAPE_LABELS = {"instance", "job"}


def expressions(board: Mapping[str, Any]) -> list[str]:
    """Every query of the dashboard's panels (rows' own panels too), in order."""
    found = []
    for panel in board.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            found += [target["expr"] for target in inner.get("targets", []) if "expr" in target]
    return found


def variable_selectors(board: Mapping[str, Any]) -> list[str]:
    """The series selectors inside the query variables' label_values(SELECTOR, label)."""
    found = []
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query") if variable.get("type") == "query" else None
        match = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_]+\)", query or "")
        assert query is None or match, f"variable {variable.get('name')}: not label_values(): {query!r}"
        if match:
            found.append(match[1] if "{" in match[1] else match[1] + "{}")
    return found


def concrete(expr: str, stanza: str) -> str:
    """The query as Grafana sends it with the stanza chosen and every node selected ($instance: all, `.*`)."""
    return expr.replace("$stanza", stanza).replace("$instance", ".*")


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, [(label, operator, value)]) of each selector; a pgbackrest_/pgbackup_ name without braces is
    refused, so that no series is queried unseen."""
    found = []
    for name, body in SELECTOR.findall(expr):
        matchers = MATCHER.findall(body)
        assert "".join(m.group(0) for m in MATCHER.finditer(body)).strip() == body.strip(), f"cannot read {body!r}"
        found.append((name, matchers))
    named = METRIC_NAME.findall(expr)
    assert sorted(named) == sorted(n for n, _ in found if METRIC_NAME.fullmatch(n)), f"a bare metric in {expr!r}"
    return found


def samples(text: str, instance: str) -> list[dict[str, str]]:
    """The samples of a Prometheus text file as Prometheus stores them when it scrapes `instance`."""
    found = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = SAMPLE.fullmatch(line.strip())
        assert match, f"not a sample: {line!r}"
        found.append({"__name__": match[1], **dict(LABEL.findall(match[2] or "")), "instance": instance})
    return found


def _matches(sample: Mapping[str, str], name: str, matchers: Iterable[tuple[str, str, str]]) -> bool:
    if sample["__name__"] != name:
        return False
    for label, op, value in matchers:
        have = sample.get(label, "")
        equal = re.fullmatch(value, have) is not None if "~" in op else have == value
        if equal != (op in ("=", "=~")):
            return False
    return True


def unmet(expr: str, found: list[dict[str, str]]) -> list[str]:
    """What `expr` asks for that no sample has: a selector no sample matches, or a grouping label that none of
    the samples its selectors match carries. Empty: every series it queries exists."""
    problems = []
    matched: list[dict[str, str]] = []
    for name, matchers in selectors(expr):
        hits = [s for s in found if _matches(s, name, matchers)]
        if not hits:
            problems.append(f"no series {name}{{{','.join(f'{k}{op}{v!r}' for k, op, v in matchers)}}}")
        matched += hits
    labels = {label for sample in matched for label in sample} | SCRAPE_LABELS
    for group in GROUPING.findall(expr):
        problems += [f"no label {label!r} on the series of {expr!r}" for label in
                     (part.strip() for part in group.split(",")) if label and label not in labels]
    return problems


def queries(board: Mapping[str, Any]) -> list[str]:
    """The panels' queries and the variables' selectors."""
    return [*expressions(board), *variable_selectors(board)]


def unmet_in_files(board: Mapping[str, Any], stanza: str, files: Mapping[str, str], prefix: str = "",
                   without: str = "") -> dict[str, list[str]]:
    """{query: what it asks that no file has} for the dashboard's queries over metrics files {instance: text};
    only the queries that select a metric starting with `prefix` and none starting with `without` (if given)."""
    found = [sample for instance, text in files.items() for sample in samples(text, instance)]
    chosen = [q for q in queries(board)
              if any(n.startswith(prefix) for n, _ in selectors(q))
              and not (without and any(n.startswith(without) for n, _ in selectors(q)))]
    assert chosen, f"no query selects {prefix}*"
    return {q: problems for q in chosen if (problems := unmet(concrete(q, stanza), found))}
