"""The pure parts of `lab.bench --peers`: its options parsed, its figures as a table with the ratios, the
documentation's performance section regenerated from them, the straight-line extrapolation. Nothing here
touches the lab (checked in the fast suite, tests/test_bench.py)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The markers the performance section's generated part lies between (docs/performance.md, or README.md).
BEGIN = "<!-- BEGIN lab.bench figures: run `python -m lab.bench --peers --markdown` -->"
END = "<!-- END lab.bench figures -->"
PGBACKUP = "pgbackup"  # the tool name of pgBackRest as pgbackup configures it (the scheduled units)
BARMAN = "barman-cloud"  # tool names of Barman's cloud tools start with this ("barman-cloud gzip")
RTO_DESIGN_S = 30 * 60  # the design's whole-cluster RTO


def parse_list(text: str, kind: type[int] | type[float], what: str, minimum: float = 0) -> list[Any]:
    """A comma list ("70,280,560"): each item of `kind`, above `minimum`, ascending, no repeats. One clear
    error naming `what` otherwise."""
    items = [item.strip() for item in text.split(",")]
    try:
        values = [kind(item) for item in items]
    except ValueError:
        raise ValueError(f"{what}: expected a comma list of {kind.__name__}s such as 70,280,560, got {text!r}"
                         ) from None
    if not values or any(value <= minimum for value in values):
        raise ValueError(f"{what}: every value must be above {minimum}, got {text!r}")
    if values != sorted(set(values)):
        raise ValueError(f"{what}: values must be ascending without repeats, got {text!r}")
    return values


def parse_scales(text: str) -> list[int]:
    """--scale: pgbench scales, e.g. "70,280,560" (70 is about 1.05 GB)."""
    return list(parse_list(text, int, "--scale"))


def per_gb(seconds: float, db_mb: float) -> float:
    """Seconds per GB of database."""
    return seconds / (db_mb / 1000)


def line_through(points: Sequence[tuple[float, float]], at: float) -> float:
    """The least-squares straight line through (x, y) points, evaluated at x = `at` (one point: through the
    origin)."""
    if not points:
        raise ValueError("no points to extrapolate from")
    if len({x for x, _ in points}) == 1:
        x, y = points[0]
        return y / x * at
    n = len(points)
    mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in points)
             / sum((x - mean_x) ** 2 for x, _ in points))
    return mean_y + slope * (at - mean_x)


def best_barman(tools: dict[str, dict[str, Any]], figure: str) -> tuple[str, float] | None:
    """Barman's best (smallest) value of `figure` over its compressions, with the tool's name."""
    found = [(name, float(t[figure])) for name, t in tools.items() if name.startswith(BARMAN) and figure in t]
    return min(found, key=lambda item: item[1]) if found else None


def ratio(barman_s: float, pgbackup_s: float) -> float:
    """How many times faster pgbackup is than Barman (> 1: faster; the issue's target is 1.5)."""
    return barman_s / pgbackup_s


# (figure, heading, format) of the peers table's columns.
COLUMNS: list[tuple[str, str, str]] = [
    ("full_s", "full s", "{:.1f}"),
    ("full_mb_s", "full MB/s", "{:.0f}"),
    ("full_stored_mb", "stored MB", "{:.1f}"),
    ("full_cpu_s", "full CPU s", "{:.1f}"),
    ("incr_s", "incr s", "{:.1f}"),
    ("incr_stored_mb", "incr MB", "{:.1f}"),
    ("incr_cpu_s", "incr CPU s", "{:.1f}"),
    ("restore_s", "restore s", "{:.1f}"),
    ("restore_mb_s", "restore MB/s", "{:.0f}"),
    ("restore_cpu_s", "restore CPU s", "{:.1f}"),
]


def _cell(tool: dict[str, Any], figure: str, form: str) -> str:
    if figure not in tool:
        return "-"
    text = form.format(tool[figure])
    if figure.startswith("incr") and not tool.get("incremental", True):
        text += " (full)"
    return text


def tool_rows(tools: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per tool (its name, then COLUMNS), then the ratios pgbackup against Barman's best."""
    rows = [[name] + [_cell(tool, figure, form) for figure, _, form in COLUMNS] for name, tool in tools.items()]
    if PGBACKUP in tools:
        cells = []
        for figure, _, _ in COLUMNS:
            best = best_barman(tools, figure)
            ours = tools[PGBACKUP].get(figure)
            if best is None or ours is None or figure.endswith("mb_s") or ours <= 0:
                cells.append("-")
            else:
                cells.append(f"{ratio(best[1], float(ours)):.2f}x")
        rows.append([f"Barman's best / {PGBACKUP}", *cells])
    return rows


def peers_table(scale: dict[str, Any]) -> str:
    """A fixed-width table of one database size's figures (one row per tool), for the terminal."""
    headings = ["tool"] + [heading for _, heading, _ in COLUMNS]
    rows = [headings, *tool_rows(scale["tools"])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headings))]
    title = f"pgbench scale {scale['scale']}: {scale['db_mb']:.0f} MB"
    return "\n".join([title] + ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                                for row in rows])


def markdown_table(headings: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def growth_rows(figures: dict[str, Any]) -> list[list[str]]:
    """Seconds per GB of each tool's full backup and restore at each size, and the cluster recovery."""
    rows = []
    for scale in figures["scales"]:
        cells = [str(scale["scale"]), f"{scale['db_mb']:.0f}"]
        for name in (PGBACKUP, "pg_basebackup"):
            tool = scale["tools"].get(name, {})
            cells += [f"{per_gb(tool[f], scale['db_mb']):.1f}" if f in tool else "-" for f in ("full_s", "restore_s")]
        best = best_barman(scale["tools"], "full_s")
        cells.append(f"{per_gb(best[1], scale['db_mb']):.1f}" if best else "-")
        cells.append(f"{scale['pitr_s']:.1f}" if "pitr_s" in scale else "-")
        rows.append(cells)
    return rows


GROWTH_HEADINGS = ["scale", "MB", "pgbackup full s/GB", "pgbackup restore s/GB", "pg_basebackup full s/GB",
                   "pg_basebackup restore s/GB", "Barman's best full s/GB", "cluster recovery s"]


def extrapolation(figures: dict[str, Any], at_gb: float = 100) -> dict[str, float] | None:
    """The whole-cluster recovery's straight line (seconds against GB) at `at_gb`."""
    points = [(s["db_mb"] / 1000, float(s["pitr_s"])) for s in figures["scales"] if "pitr_s" in s]
    if not points:
        return None
    return {"gb": at_gb, "pitr_s": line_through(points, at_gb)}


def archiving_rows(figures: dict[str, Any]) -> list[list[str]]:
    return [[name, f"{a['seconds']:.0f}", f"{a['wal_mb_s']:.1f}", f"{a['archived_per_s']:.2f}",
             f"{a['generated_per_s']:.2f}", str(a["max_ready"]), f"{a['rpo_s']:.1f}"]
            for name, a in figures.get("archiving", {}).items()]


ARCHIVING_HEADINGS = ["archive_command", "load s", "WAL MB/s", "segments archived/s", "segments written/s",
                      "most segments waiting", "RPO after a power cut s"]


def machine() -> dict[str, Any]:
    """The machine the figures come from: processors, memory, CPU model."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {"nproc": os.cpu_count() or 0, "memory_gb": round(memory_kb / 1024 / 1024, 1), "cpu": model}


def markdown(figures: dict[str, Any]) -> str:
    """The performance section's generated part, from one run's figures."""
    m = figures["machine"]
    out = [f"One run of `python -m lab.bench {figures['command']}` on {figures['date']}: Debian "
           f"{figures['release']}, PostgreSQL {figures['pg']}, pgBackRest {figures['pgbackrest']}, Barman "
           f"{figures['barman']}; {m['nproc']} processors, {m['memory_gb']} GB of memory, {m['cpu']}. The lab's "
           "three nodes, S3 (moto behind nginx) and the runs all share this machine. CPU seconds: the three "
           "nodes' cgroups together while the command ran. Barman's cloud backups and pg_basebackup are full "
           "only: their \"incr\" columns are a second full backup after the same change \"(full)\". The last row "
           "of each table: Barman's best (over its compressions) divided by pgbackup's; above 1, pgbackup is "
           "faster, stores less or uses less CPU (the target for backup and restore: 1.5).", ""]
    for scale in figures["scales"]:
        rows = tool_rows(scale["tools"])
        out += [f"pgbench scale {scale['scale']}, {scale['db_mb']:.0f} MB:", "",
                markdown_table(["tool"] + [heading for _, heading, _ in COLUMNS], rows), ""]
    if figures.get("archiving"):
        out += ["Archiving under load (pgbench at the highest rate, then the leader's power cut):", "",
                markdown_table(ARCHIVING_HEADINGS, archiving_rows(figures)), ""]
    if figures.get("drill"):
        out += ["The restore drill's RTO against the WAL to replay since the full backup:", "",
                markdown_table(["WAL GB", "drill RTO s"],
                               [[f"{d['wal_gb']:.2f}", f"{d['rto_s']:.1f}"] for d in figures["drill"]]), ""]
    if len(figures["scales"]) > 1 or any("pitr_s" in s for s in figures["scales"]):
        out += ["Growth:", "", markdown_table(GROWTH_HEADINGS, growth_rows(figures)), ""]
        line = extrapolation(figures)
        if line:
            verdict = "within" if line["pitr_s"] <= RTO_DESIGN_S else "past"
            out += [f"Straight line through the cluster recoveries: {line['pitr_s'] / 60:.1f} min at "
                    f"{line['gb']:.0f} GB, {verdict} the design's {RTO_DESIGN_S // 60}-minute RTO.", ""]
    return "\n".join(out).rstrip() + "\n"


def regenerate(document: Path, generated: str) -> None:
    """Replaces what lies between BEGIN and END in `document` with `generated` (the rest stays)."""
    text = document.read_text()
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{document}: expected one pair of markers {BEGIN!r} ... {END!r}")
    document.write_text(pattern.sub(lambda _: f"{BEGIN}\n{generated}{END}", text))


def performance_document(root: Path) -> Path:
    """docs/performance.md where the documentation has moved there, else README.md."""
    docs = root / "docs" / "performance.md"
    return docs if docs.exists() else root / "README.md"


def summary(figures: dict[str, Any]) -> str:
    """Everything for the terminal: a table per size, archiving, the drill, growth and the extrapolation."""
    out = [peers_table(scale) for scale in figures["scales"]]
    if figures.get("archiving"):
        rows = [ARCHIVING_HEADINGS, *archiving_rows(figures)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(ARCHIVING_HEADINGS))]
        out.append("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows))
    for drill in figures.get("drill", []):
        out.append(f"drill RTO with {drill['wal_gb']:.2f} GB of WAL to replay: {drill['rto_s']:.1f} s")
    if len(figures["scales"]) > 1:
        rows = [GROWTH_HEADINGS, *growth_rows(figures)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(GROWTH_HEADINGS))]
        out.append("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows))
    line = extrapolation(figures)
    if line:
        out.append(f"cluster recovery, straight line at {line['gb']:.0f} GB: {line['pitr_s'] / 60:.1f} min "
                   f"(design RTO {RTO_DESIGN_S // 60} min)")
    return "\n\n".join(out)


SEGMENT_NAME = re.compile(r"(?:^|/)([0-9A-F]{24})(?:-[0-9a-f]{40})?(?:\.(?:gz|bz2|zst|lz4|xz|snappy))?$")


def archived_end(keys: Sequence[str], timeline: int, segment_size: int) -> int:
    """The WAL position (bytes) where the newest segment of `timeline` among an archive's object keys ends:
    pgBackRest's "<segment>-<sha1>.<ext>" and Barman's "<segment>[.<ext>]" (history, backup labels and partial
    segments are not segments). 0 when the archive holds none."""
    per_log = 0x100000000 // segment_size
    names = [match.group(1) for key in keys if (match := SEGMENT_NAME.search(key))]
    ends = [(int(name[8:16], 16) * per_log + int(name[16:24], 16) + 1) * segment_size
            for name in names if int(name[:8], 16) == timeline]
    return max(ends, default=0)


def time_at_lsn(samples: Sequence[tuple[float, int]], lsn: int) -> float:
    """When the WAL reached `lsn`, from (time, position) samples in order: interpolated between the two
    samples around it; the first sample's time if it was reached before it, the last's if after the last."""
    if not samples:
        raise ValueError("no samples")
    if lsn <= samples[0][1]:
        return samples[0][0]
    for (t0, l0), (t1, l1) in itertools.pairwise(samples):
        if l0 < lsn <= l1:
            return t0 + (t1 - t0) * (lsn - l0) / (l1 - l0)
    return samples[-1][0]
