"""The pure parts of `python -m lab.bench --peers` (lab/benchfmt.py): the scale parser, the table and its ratios
against Barman, the straight-line extrapolation, the RPO's arithmetic from an archive listing, and the
regeneration of the performance section between its markers. The measurements themselves need the lab
(tests/lab/test_bench.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab import benchfmt

ROOT = Path(__file__).resolve().parent.parent
SEGMENT = 16 * 1024 * 1024


def test_scales_parse_as_an_ascending_comma_list() -> None:
    assert benchfmt.parse_scales("70,280,560") == [70, 280, 560]
    assert benchfmt.parse_scales(" 1 ") == [1]
    assert benchfmt.parse_list("0.5,2", float, "--wal-gb") == [0.5, 2.0]


@pytest.mark.parametrize("text", ["70,x", "0", "-5", "280,70", "70,70", "", "70,,280", "1.5"])
def test_a_bad_scale_is_one_error_naming_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="--scale"):
        benchfmt.parse_scales(text)


def figures_of_one_size() -> dict[str, Any]:
    def tool(full: float, stored: float, incr: float, restore: float, incremental: bool = True) -> dict[str, Any]:
        return {"incremental": incremental, "full_s": full, "full_mb_s": 1000 / full, "full_stored_mb": stored,
                "full_cpu_s": full * 2, "incr_s": incr, "incr_stored_mb": stored / 10, "incr_cpu_s": incr,
                "restore_s": restore, "restore_mb_s": 1000 / restore, "restore_cpu_s": restore}

    return {"scale": 70, "db_mb": 1000.0, "changed_rows": 1400, "tools": {
        "pg_basebackup": tool(5, 1000, 5, 2, incremental=False),
        "barman-cloud gzip": tool(40, 60, 40, 30, incremental=False),
        "barman-cloud bzip2": tool(30, 50, 30, 24, incremental=False),
        "pgbackup": tool(10, 52, 4, 8),
        "pgbackrest pm4": tool(8, 52, 3, 6)}}


def test_the_ratios_are_barmans_best_over_pgbackups() -> None:
    rows = benchfmt.tool_rows(figures_of_one_size()["tools"])
    assert [row[0] for row in rows][-1] == "Barman's best / pgbackup"
    ratios = dict(zip([figure for figure, _, _ in benchfmt.COLUMNS], rows[-1][1:], strict=True))
    # full: Barman's best is bzip2's 30 s against pgbackup's 10 s; restore 24 s against 8 s; stored 50 MB / 52 MB.
    assert ratios["full_s"] == "3.00x"
    assert ratios["restore_s"] == "3.00x"
    assert ratios["incr_s"] == "7.50x"
    assert ratios["full_stored_mb"] == "0.96x"
    assert ratios["full_mb_s"] == "-"
    assert ratios["restore_mb_s"] == "-"


def test_a_full_only_tools_second_backup_says_full() -> None:
    rows = {row[0]: row for row in benchfmt.tool_rows(figures_of_one_size()["tools"])}
    incr = 1 + [figure for figure, _, _ in benchfmt.COLUMNS].index("incr_s")
    assert rows["barman-cloud gzip"][incr] == "40.0 (full)"
    assert rows["pgbackup"][incr] == "4.0"


def test_no_ratio_row_without_pgbackup_or_barman() -> None:
    tools = figures_of_one_size()["tools"]
    assert benchfmt.tool_rows({"pg_basebackup": tools["pg_basebackup"]})[-1][0] == "pg_basebackup"
    row = benchfmt.tool_rows({"pgbackup": tools["pgbackup"]})[-1]
    assert row[0] == "Barman's best / pgbackup"
    assert set(row[1:]) == {"-"}


def test_the_terminal_table_lines_up() -> None:
    lines = benchfmt.peers_table(figures_of_one_size()).splitlines()
    assert lines[0] == "pgbench scale 70: 1000 MB"
    heading, basebackup, ratios = lines[1], lines[2], lines[-1]
    assert basebackup.startswith("pg_basebackup ")
    assert ratios.startswith("Barman's best / pgbackup ")
    assert heading.index("full s") == basebackup.index("5.0") == ratios.index("3.00x")
    assert heading.index("restore s") == basebackup.index("2.0 ")


def test_the_straight_line_through_the_recoveries() -> None:
    assert benchfmt.line_through([(1, 5), (4, 11), (8, 19)], 100) == pytest.approx(203)  # y = 2x + 3
    assert benchfmt.line_through([(1.1, 34)], 100) == pytest.approx(34 / 1.1 * 100)
    with pytest.raises(ValueError, match="no points"):
        benchfmt.line_through([], 100)
    figures = {"scales": [{"db_mb": 1000, "pitr_s": 30}, {"db_mb": 4000, "pitr_s": 90}, {"db_mb": 8000}]}
    assert benchfmt.extrapolation(figures) == {"gb": 100, "pitr_s": pytest.approx(2010)}
    assert benchfmt.per_gb(12, 1500) == pytest.approx(8)


def test_the_archives_newest_segment_of_the_timeline() -> None:
    keys = [
        # pgBackRest: <segment>-<sha1>.<ext>; history and backup labels are not segments.
        "lab/archive/lab/17-1/0000000100000000/000000010000000000000003-" + "a" * 40 + ".zst",
        "lab/archive/lab/17-1/0000000100000001/000000010000000100000002-" + "b" * 40 + ".zst",
        "lab/archive/lab/17-1/00000002.history",
        "lab/archive/lab/17-1/0000000200000001/000000020000000100000009-" + "c" * 40 + ".zst",
        "lab/archive/lab/17-1/0000000100000001/000000010000000100000005.00000028.backup",
        "lab/archive/lab/17-1/0000000100000001/000000010000000100000007.partial-" + "d" * 40 + ".zst",
    ]
    # 0/1/2 is log 1, segment 2: it ends where segment 3 of log 1 begins.
    assert benchfmt.archived_end(keys, 1, SEGMENT) == (1 << 32) + 3 * SEGMENT
    assert benchfmt.archived_end(keys, 2, SEGMENT) == (1 << 32) + 10 * SEGMENT
    barman = ["barman-bench/lab/wals/0000000100000000/00000001000000000000000A.gz",
              "barman-bench/lab/wals/0000000100000000/00000001000000000000000B.00000028.backup.gz",
              "barman-bench/lab/wals/0000000100000000/000000010000000000000009.zst"]
    assert benchfmt.archived_end(barman, 1, SEGMENT) == 11 * SEGMENT
    assert benchfmt.archived_end([], 1, SEGMENT) == 0


def test_when_the_wal_reached_a_position() -> None:
    samples = [(100.0, 1000), (101.0, 3000), (102.0, 3000), (103.0, 7000)]
    assert benchfmt.time_at_lsn(samples, 2000) == pytest.approx(100.5)
    assert benchfmt.time_at_lsn(samples, 5000) == pytest.approx(102.5)
    assert benchfmt.time_at_lsn(samples, 500) == 100.0  # archived before the first sample: the first
    assert benchfmt.time_at_lsn(samples, 9000) == 103.0  # everything sampled is archived: the last


def full_figures() -> dict[str, Any]:
    small = figures_of_one_size()
    large = {**figures_of_one_size(), "scale": 280, "db_mb": 4000.0}
    small["pitr_s"], large["pitr_s"] = 34.0, 100.0
    return {"command": "--peers --scale 70,280", "date": "2026-12-06", "release": "13 (trixie)", "pg": "17",
            "pgbackrest": "2.55.1", "barman": "3.13.3",
            "machine": {"nproc": 2, "memory_gb": 7.8, "cpu": "AMD EPYC"}, "scales": [small, large],
            "archiving": {"pgbackup": {"seconds": 60, "wal_mb_s": 20.5, "archived_per_s": 1.2,
                                       "generated_per_s": 1.22, "max_ready": 3, "rpo_s": 1.5}},
            "drill": [{"wal_gb": 0.5, "rto_s": 40.0}]}


def test_the_markdown_names_the_machine_and_has_well_formed_tables() -> None:
    text = benchfmt.markdown(full_figures())
    assert "on 2026-12-06" in text
    assert "2 processors, 7.8 GB of memory, AMD EPYC" in text
    assert "Barman 3.13.3" in text
    assert "3.00x" in text
    tables = [block for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) == 5  # two sizes, archiving, drill, growth
    for table in tables:
        widths = {line.count("|") for line in table.splitlines()}
        assert len(widths) == 1, table
    assert "min at 100 GB" in text
    cmark = shutil.which("cmark-gfm")
    if cmark:  # GitHub's renderer: every table renders as one
        html = subprocess.run([cmark, "-e", "table"], input=text, capture_output=True, text=True, check=True).stdout
        assert html.count("<table>") == 5


def test_regeneration_replaces_only_between_the_markers(tmp_path: Path) -> None:
    document = tmp_path / "performance.md"
    document.write_text(f"# Performance\n\nhand-written\n\n{benchfmt.BEGIN}\nold figures\n{benchfmt.END}\n\nafter\n")
    benchfmt.regenerate(document, "new figures\n")
    assert document.read_text() == (f"# Performance\n\nhand-written\n\n{benchfmt.BEGIN}\nnew figures\n"
                                    f"{benchfmt.END}\n\nafter\n")
    benchfmt.regenerate(document, "new figures\n")  # the same twice: the same file
    assert document.read_text().count("new figures") == 1
    document.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        benchfmt.regenerate(document, "x\n")


def test_the_performance_section_is_in_docs_when_they_exist_else_readme(tmp_path: Path) -> None:
    assert benchfmt.performance_document(tmp_path) == tmp_path / "README.md"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "performance.md").write_text("")
    assert benchfmt.performance_document(tmp_path) == tmp_path / "docs" / "performance.md"


def test_this_repositorys_performance_section_can_be_regenerated(tmp_path: Path) -> None:
    document = benchfmt.performance_document(ROOT)
    copy = tmp_path / document.name
    copy.write_text(document.read_text())
    benchfmt.regenerate(copy, benchfmt.markdown(full_figures()))
    assert "AMD EPYC" in copy.read_text()


def test_bad_peers_options_stop_before_the_lab_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    """One clear error naming the option, and no lab started."""
    from lab import bench

    def no_lab(**_: object) -> None:
        raise AssertionError("the lab was started")

    monkeypatch.setattr(bench, "start_lab", no_lab)
    for args, expected in ((["--scale", "70,x"], "--scale"), (["--wal-gb", "2,0.5"], "--wal-gb"),
                           (["--variants", "pm9"], "--variants"), (["--barman", "gzip,snappy"], "--barman")):
        monkeypatch.setattr(sys, "argv", ["lab.bench", "--peers", *args])
        with pytest.raises(SystemExit, match=f"lab.bench: {expected}"):
            bench.main()


def test_pgbackrest_takes_every_variants_options(tmp_path: Path) -> None:
    """pgBackRest's own option parser (this host's) on each variant's backup and restore command lines, as the
    lab runs them: it refuses a backup-only option on restore's ("[031]: option 'compress-level' not valid for
    command 'restore'"), and repo1-block without repo1-bundle."""
    from lab import bench

    class Lab:
        def stack(self) -> dict[str, Any]:
            return {"pgbackup:storage": {"bucket": "b", "repoPath": "/lab"}}

    lab: Any = Lab()
    pgbackrest = shutil.which("pgbackrest")
    assert pgbackrest, "pgbackrest (make setup) parses the variants' options"
    version = subprocess.run([pgbackrest, "version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    # What the nodes' configuration sets that the variants override (bundle and block from 2.54 on, where
    # tools_for offers "nobundle"; before, block incremental is a beta option).
    since_2_54 = version >= "2.54"
    config = tmp_path / "pgbackrest.conf"
    config.write_text("[global]\nprocess-max=2\ncompress-type=zst\n"
                      + ("repo1-bundle=y\nrepo1-block=y\n" if since_2_54 else ""))
    for variant in [v for v in bench.VARIANTS if v != "nobundle" or since_2_54]:
        tool = bench.PgBackRest(variant)
        for command, options in (("backup", f"{tool._options(lab)} --no-archive-check --type=incr"),
                                 ("restore", tool._options(lab, "restore"))):
            argv = [pgbackrest, f"--config={config}", "--stanza=x", f"--lock-path={tmp_path}",
                    f"--log-path={tmp_path}", "--repo1-type=posix", f"--pg1-path={tmp_path / 'pg'}",
                    "--log-level-console=error", *options.split(), command]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            assert "[031]" not in result.stdout + result.stderr, (variant, command, result.stdout + result.stderr)
            assert "stanza" in (result.stdout + result.stderr).lower() or "backup.info" in result.stdout + result.stderr
    assert bench.PgBackRest("pm4")._options(lab, "restore") == "--repo=1 --repo1-path=/lab/bench-pm4 --process-max=4"
