"""Lab benchmark: both lab releases side by side, from one run. Prints a table; it is not a test. Needs root;
it builds a fresh lab of each release in turn (lab/down.sh, then lab/up.sh with LAB_RELEASE) and stops it.

Each release is applied as the design's stack would be: `pgbackup:pgbackrest.version` pinned to the release's
pgBackRest ("2.55*" on Debian 13, "2.45*" on Debian 12), so pgBackRest 2.55 runs with block incremental and
backup-standby=prefer, 2.45 without. Measured, in this order:

1. From booted, empty nodes to the first verified backup: `lab/up.sh` boots three nodes with PostgreSQL and
   Patroni only; the driver then applies the program (installs pgBackRest, configures, stanza, archiving,
   check, first full backup into repo1 and repo2).
2. RPO: a steady write load on the leader (one committed row every 50 ms), then the leader's power is cut.
   The repository's archive of the old timeline is restored into a scratch directory on a surviving node;
   RPO = the time of the cut minus the newest row the archive holds.
3. A pgbench database (scale 70: about 1.05 GB), a full backup (the scheduled unit), then the same change on
   both releases (every 5000th row of pgbench_accounts updated: rows spread over the whole table) and an
   incremental backup: its size in the repository (what it stored), and how that compares between releases.
4. A restore of the newest backup into a scratch directory on a replica: MB/s of database restored.
   Then the same database restored and started to a ready copy by hand (restore, start, end of recovery) and
   by the restore drill (pgbackup-drill.service on the replica it chooses): the drill's RTO beside it.
5. RTO of docs/restoring.md's point-in-time recovery of the whole cluster (`pgbackup recover`).

Usage: .venv/bin/python -m lab.bench [--release trixie|bookworm] [--scale 70] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from lab.control import FACTS, PG_BIN, ROOT, Lab, start_lab, stop_lab

RELEASES = ("trixie", "bookworm")
# The change both releases back up incrementally: rows spread over every page range of the table.
CHANGE = ("WITH u AS (UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 5000 = 0 RETURNING 1) "
          "SELECT count(*) FROM u")


def measure(scale: int, keep: bool) -> dict[str, Any]:
    """One release (LAB_RELEASE of this process, read by lab.control when imported): its figures."""
    started = time.monotonic()
    lab_stack = _pinned_stack(FACTS["pgbackrest"])
    lab = start_lab(fresh=True, stack=lab_stack)
    figures: dict[str, Any] = {"release": FACTS["release"], "pg": FACTS["pg_version"],
                               "pgbackrest": lab.first_apply["outputs"]["pgbackrestVersion"],
                               "boot_s": time.monotonic() - started - lab.first_apply_seconds,
                               "deploy_s": lab.first_apply_seconds}
    try:
        _progress(figures)
        figures["rpo_s"], figures["rpo_victim"] = _rpo(lab)
        _progress(figures)
        figures.update(_backups(lab, scale))
        _progress(figures)
        figures.update(_restore(lab, figures["db_mb"]))
        _progress(figures)
        figures["plain_s"], figures["drill_s"], figures["drill_rto_s"] = _drill_beside_plain_restore(lab)
        figures["drill_ratio"] = figures["drill_s"] / figures["plain_s"]
        _progress(figures)
        took = _cluster_pitr(lab)
        figures["pitr_s"], figures["pitr_steps"] = sum(took.values()), took
        _progress(figures)
    finally:
        if not keep:
            stop_lab()
    return figures


def _pinned_stack(version: str) -> dict[str, Any]:
    stack: dict[str, Any] = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]
    stack["pgbackup:pgbackrest"] = {**stack.get("pgbackup:pgbackrest", {}), "version": f"{version}*"}
    return stack


def _progress(figures: dict[str, Any]) -> None:
    print(f"lab.bench {figures['release']}: " + json.dumps({k: v for k, v in figures.items() if k != "pitr_steps"},
                                                          default=str), file=sys.stderr, flush=True)


def _rpo(lab: Lab) -> tuple[float, str]:
    leader = lab.leader()
    timeline = int(lab.sql(leader, "SELECT timeline_id FROM pg_control_checkpoint()"))
    lab.sql(leader, "CREATE TABLE IF NOT EXISTS rpo (at timestamptz NOT NULL)")
    writer = ("(while true; do echo 'INSERT INTO rpo VALUES (clock_timestamp());'; sleep 0.05; done) | "
              "runuser -u postgres -- psql -XAtq -h /var/run/postgresql >/dev/null 2>&1")
    # A transient unit on the node's own systemd: detached from the SSH session, gone with the node.
    lab.ssh(leader, f"systemd-run --quiet --unit=pgbackup-bench-writer --collect bash -c {shlex.quote(writer)}")
    time.sleep(75)  # past at least one archive_timeout (60 s) under load
    cut = float(lab.ssh(leader, "date +%s.%N").stdout)
    lab.kill_node(leader)
    deadline = time.monotonic() + 120
    while not [m for m in lab.members() if m.get("Role") == "Leader" and m["Member"] != leader
               and m.get("State") == "running"]:
        if time.monotonic() > deadline:
            raise RuntimeError("no new leader")
        time.sleep(2)
    survivor = lab.leader()
    newest = float(lab.restored_copy_says(survivor, f"--type=default --target-timeline={timeline}",
                                          "SELECT extract(epoch FROM max(at)) FROM rpo"))
    lab.restart_lab()
    lab.wait_healthy(timeout=300)
    return cut - newest, leader


def _backup(lab: Lab, leader: str, unit: str, kind: str) -> tuple[float, dict[str, Any]]:
    """Runs a scheduled backup unit on the leader; its seconds and its `pgbackrest info` entry."""
    before = len(lab.info().get("backup", []))
    started = time.monotonic()
    lab.ssh(leader, f"systemctl start {unit}", timeout=3600)
    took = time.monotonic() - started
    result = lab.ssh(leader, f"systemctl show -p Result --value {unit}").stdout.strip()
    backups = lab.info().get("backup", [])
    if result != "success" or len(backups) != before + 1 or backups[-1]["type"] != kind:
        raise RuntimeError(f"{unit} did not make a {kind} backup on {leader}: Result={result}")
    entry: dict[str, Any] = backups[-1]
    return took, entry


def _backups(lab: Lab, scale: int) -> dict[str, float]:
    leader = lab.leader()
    lab.ssh(leader, f"cd /tmp && runuser -u postgres -- {PG_BIN}/pgbench -i -q -s {scale} -h /var/run/postgresql "
                    "postgres", timeout=1800)
    db_mb = int(lab.sql(leader, "SELECT sum(pg_database_size(oid)) FROM pg_database")) / 1e6
    full_s, full = _backup(lab, leader, "pgbackup-backup-full.service", "full")
    changed = lab.sql(leader, CHANGE)
    lab.sql(leader, "CHECKPOINT")
    incr_s, incr = _backup(lab, leader, "pgbackup-backup-incr.service", "incr")
    return {"db_mb": db_mb, "full_s": full_s, "full_repo_mb": _stored_mb(full), "changed_rows": int(changed),
            "incr_s": incr_s, "incr_repo_mb": _stored_mb(incr), "incr_db_mb": incr["info"]["delta"] / 1e6}


def _stored_mb(backup: dict[str, Any]) -> float:
    """What a backup added to the repository (`info`'s repository delta, with its block map when there is
    one: block incremental stores a map of the blocks beside the file parts)."""
    repository = backup["info"]["repository"]
    return float(repository["delta"] + repository.get("delta-map", 0)) / 1e6


def _restore(lab: Lab, db_mb: float) -> dict[str, float]:
    replica, scratch = lab.replicas()[0], "/var/tmp/bench-restore"  # noqa: S108 -- inside a lab node
    started = time.monotonic()
    lab.ssh(replica, f"rm -rf {scratch} && install -d -o postgres -m 0700 {scratch}")
    lab.pgbackrest(replica, f"--pg1-path={scratch} --archive-mode=off --log-level-console=warn restore",
                   timeout=3600)
    restore_s = time.monotonic() - started
    lab.ssh(replica, f"rm -rf {scratch}")
    return {"restore_s": restore_s, "restore_mb_s": db_mb / restore_s}


def _drill_beside_plain_restore(lab: Lab) -> tuple[float, float, float]:
    """Seconds to restore the newest backup, start it, wait for the end of recovery, query, stop and delete
    it: by hand (docs/restoring.md's drill steps, lab.control), then by pgbackup-drill.service (the sum of its
    phases); and the drill's RTO (restore plus replay to a ready copy)."""
    node = sorted(m["Member"] for m in lab.members() if m.get("Role") != "Leader")[0]
    started = time.monotonic()
    lab.restored_copy_says(node, "--type=default", "SELECT 1")
    plain_s = time.monotonic() - started
    lab.ssh(node, "systemctl start pgbackup-drill.service", timeout=3600)
    state = json.loads(lab.ssh(node, "cat /var/lib/pgbackrest/pgbackup-drill.json").stdout)
    if not state["ok"]:
        raise RuntimeError(f"the drill failed on {node}: {state['reason']}")
    return plain_s, sum(state["phases"].values()), float(state["rtoSeconds"])


def _cluster_pitr(lab: Lab) -> dict[str, float]:
    """docs/restoring.md's cluster recovery to a point between two batches of rows: the later gone everywhere."""
    target = lab.rows_around_a_target(lab.leader(), "bench_pitr")
    took: dict[str, float] = lab.recover_cluster_to(target)
    for node in lab.nodes:
        if lab.sql(node, "SELECT count(*) FROM bench_pitr WHERE batch = 'after'") != "0":
            raise RuntimeError(f"{node} still has rows written after the target")
    lab.pgbackup("recover", "--cleanup", "--yes-delete-old-data")
    return took


ROWS: list[tuple[str, str]] = [
    ("PostgreSQL, pgBackRest (pinned to the release's)", "{pg}, {pgbackrest}"),
    ("lab boot (up.sh: three nodes, etcd, S3)", "{boot_s:.1f} s"),
    ("booted empty nodes -> first verified backups (apply)", "{deploy_s:.1f} s"),
    ("RPO after a power cut of the leader (archive_timeout 60 s)", "{rpo_s:.1f} s"),
    ("database (pgbench)", "{db_mb:.0f} MB"),
    ("full backup (from a standby, zst 3)", "{full_s:.1f} s, {full_repo_mb:.0f} MB stored"),
    ("incremental after the same change ({changed_rows} rows)", "{incr_s:.1f} s, {incr_repo_mb:.1f} MB stored"),
    ("restore of the newest backup (scratch directory)", "{restore_s:.1f} s ({restore_mb_s:.0f} MB/s)"),
    ("restore, start, ready, query, stop, delete: by hand", "{plain_s:.1f} s"),
    ("the same by the restore drill (pgbackup-drill.service)", "{drill_s:.1f} s ({drill_ratio:.2f}x)"),
    ("  the drill's RTO (restore + replay to a ready copy)", "{drill_rto_s:.1f} s"),
    ("RTO: point-in-time recovery of the whole cluster", "{pitr_s:.1f} s"),
]


def table(results: list[dict[str, Any]]) -> str:
    """The figures as a table: one column per release."""
    width = max(len(label.format(**results[0])) for label, _ in ROWS) + 2
    lines = [f"{'LAB_RELEASE':<{width}}" + "".join(f"{r['release']:<32}" for r in results)]
    for label, value in ROWS:
        lines.append(f"{label.format(**results[0]):<{width}}" + "".join(f"{value.format(**r):<32}" for r in results))
    for step in results[0]["pitr_steps"]:
        lines.append(f"{'  step ' + step:<{width}}" + "".join(f"{r['pitr_steps'][step]:.1f} s".ljust(32)
                                                             for r in results))
    by_release = {r["release"]: r for r in results}
    if set(by_release) == set(RELEASES):
        new, old = by_release["trixie"], by_release["bookworm"]
        lines.append(f"incremental stored: {new['incr_repo_mb']:.1f} MB with pgBackRest {new['pgbackrest']} "
                     f"(block incremental) against {old['incr_repo_mb']:.1f} MB with {old['pgbackrest']}: "
                     f"{old['incr_repo_mb'] / new['incr_repo_mb']:.1f} times smaller")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", choices=RELEASES, help="only this release (default: both, in turn)")
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 is about 1.05 GB)")
    parser.add_argument("--keep", action="store_true", help="leave the (last) lab running")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one release, in a process of its own
    options = parser.parse_args()
    if options.measure:
        options.measure.write_text(json.dumps(measure(options.scale, options.keep)))
        return
    results, took = [], {}
    for release in [options.release] if options.release else list(RELEASES):
        # A process per release: the lab's facts (paths, versions) are read once, from LAB_RELEASE.
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "figures.json"
            started = time.monotonic()
            command = [sys.executable, "-m", "lab.bench", "--scale", str(options.scale), "--measure", str(out)]
            subprocess.run(command + (["--keep"] if options.keep else []), check=True,
                           env={**os.environ, "LAB_RELEASE": release})
            took[release] = time.monotonic() - started
            results.append(json.loads(out.read_text()))
    print(table(results))
    print("bench time: " + ", ".join(f"{r} {s / 60:.1f} min" for r, s in took.items()))


if __name__ == "__main__":
    main()
