"""A smoke of `python -m lab.bench --peers` (a benchmark, not a test: this only keeps it from rotting): its
measurement functions at pgbench scale 1 on the module's lab, with one Barman compression and one pgBackRest
variant. Every figure must be there and positive, and nothing of the run may stay behind (Barman's profile
holds the lab's S3 key)."""

from __future__ import annotations

import pytest

from lab import bench, benchfmt
from lab.control import Lab


@pytest.mark.releases("trixie")
def test_the_peer_benchmark_measures_every_figure(lab: Lab) -> None:
    bench.prepare_nodes(lab)
    try:
        figures = bench.peers(lab, 1, compressions=["gzip"], variants=["pm1"])
    finally:
        bench.forget_nodes(lab)
    tools = figures["tools"]
    assert set(tools) == {"pg_basebackup", "barman-cloud gzip", "pgbackup", "pgbackrest pm1"}
    assert figures["db_mb"] > 10
    assert figures["changed_rows"] == 20  # scale 1: 100000 accounts, every 5000th
    for name, tool in tools.items():
        for figure, _, _ in benchfmt.COLUMNS:
            assert tool[figure] > 0, (name, figure, tool)
    assert tools["pgbackup"]["incremental"]
    assert not tools["barman-cloud gzip"]["incremental"]
    # An incremental after 20 changed rows stores less than the full it follows.
    assert tools["pgbackup"]["incr_stored_mb"] < tools["pgbackup"]["full_stored_mb"]
    assert "Barman's best / pgbackup" in benchfmt.peers_table(figures)
    for node in lab.nodes:
        lab.ssh(node, f"test ! -e {bench.BENCH_DIR} && test ! -e {bench.SCRATCH} && test ! -e {bench.BASEBACKUP}")
    _, prefix = bench.bucket_and_prefix(lab)
    assert bench.s3_objects(lab, f"{bench.BARMAN_PREFIX}/") == {}
    assert bench.s3_objects(lab, f"{prefix}/bench-pm1/") == {}
    # pgbackup's own repository and archiving are as they were: the cluster still checks.
    lab.pgbackrest(lab.leader(), "check")
