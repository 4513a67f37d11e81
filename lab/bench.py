"""Lab benchmark: prints a table; it is not a test. Needs root and the lab (it builds a fresh one).

1. From booted, empty nodes to the first verified backup: `lab/up.sh` boots three nodes with PostgreSQL and
   Patroni only; the driver then applies the program (installs pgBackRest, configures, stanza, archiving,
   check, first full backup). Both times are printed.
2. RPO: a steady write load on the leader (one committed row every 50 ms), then the leader's power is cut.
   The repository's archive of the old timeline is restored into a scratch directory on a surviving node;
   RPO = the time of the cut minus the newest row the archive holds.
3. Restore throughput: a pgbench database of at least 1 GB, a full backup, then a restore of it into a
   scratch directory on a replica: MB/s of database restored (and of the backup, for comparison).
   Then the same database restored and started to a ready copy by hand (restore, start, end of recovery) and
   by the restore drill (pgbackup-drill.service on the replica it chooses): the drill's RTO beside it.
4. RTO of the README's point-in-time recovery of the whole cluster (`pgbackup recover`) on
   that database: from stopping Patroni to three healthy members on the new timeline, step by step.

Usage: .venv/bin/python -m lab.bench [--scale 70]
"""

from __future__ import annotations

import argparse
import json
import shlex
import time

from lab.control import PG_BIN, Lab, start_lab, stop_lab


def rpo(lab: Lab) -> tuple[float, str]:
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


def restore_throughput(lab: Lab, scale: int) -> tuple[float, float, float, float]:
    leader = lab.leader()
    lab.ssh(leader, f"cd /tmp && runuser -u postgres -- {PG_BIN}/pgbench -i -q -s {scale} -h /var/run/postgresql "
                    "postgres", timeout=1800)
    size_mb = int(lab.sql(leader, "SELECT sum(pg_database_size(oid)) FROM pg_database")) / 1e6
    before = len(lab.info().get("backup", []))
    started = time.monotonic()
    lab.ssh(leader, "systemctl start pgbackup-backup-full.service", timeout=3600)
    backup_s = time.monotonic() - started
    result = lab.ssh(leader, "systemctl show -p Result --value pgbackup-backup-full.service").stdout.strip()
    newest = lab.info().get("backup", [])
    if result != "success" or len(newest) != before + 1 or newest[-1]["type"] != "full":
        raise RuntimeError(f"the full backup did not run on {leader}: Result={result}")
    replica, scratch = lab.replicas()[0], "/var/tmp/bench-restore"  # noqa: S108 -- inside a lab node
    started = time.monotonic()
    lab.ssh(replica, f"rm -rf {scratch} && install -d -o postgres -m 0700 {scratch}")
    lab.pgbackrest(replica, f"--pg1-path={scratch} --archive-mode=off --log-level-console=warn restore",
                   timeout=3600)
    restore_s = time.monotonic() - started
    lab.ssh(replica, f"rm -rf {scratch}")
    return size_mb, backup_s, restore_s, size_mb / restore_s


def drill_beside_plain_restore(lab: Lab) -> tuple[float, float, float]:
    """Seconds to restore the newest backup, start it, wait for the end of recovery, query, stop and delete
    it: by hand (the README's drill steps, lab.control), then by pgbackup-drill.service (the sum of its
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


def cluster_pitr(lab: Lab) -> dict[str, float]:
    """The README's cluster recovery to a point between two batches of rows: the later must be gone everywhere."""
    target = lab.rows_around_a_target(lab.leader(), "bench_pitr")
    took = lab.recover_cluster_to(target)
    for node in lab.nodes:
        if lab.sql(node, "SELECT count(*) FROM bench_pitr WHERE batch = 'after'") != "0":
            raise RuntimeError(f"{node} still has rows written after the target")
    lab.pgbackup("recover", "--cleanup")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 is about 1.05 GB)")
    parser.add_argument("--keep", action="store_true", help="leave the lab running")
    options = parser.parse_args()
    started = time.monotonic()
    lab = start_lab(fresh=True)
    boot_s = time.monotonic() - started - lab.first_apply_seconds
    try:
        rows = [
            ("lab boot (up.sh: three nodes, etcd, S3)", f"{boot_s:.1f} s"),
            ("booted empty nodes -> first verified backup (driver apply)", f"{lab.first_apply_seconds:.1f} s"),
        ]
        print(*(f"{k:<64} {v}" for k, v in rows), sep="\n", flush=True)
        lost, victim = rpo(lab)
        print(f"{'RPO: committed data missing from the archive after a power cut':<64} {lost:.1f} s "
              f"(leader {victim}, archive_timeout 60 s)", flush=True)
        size_mb, backup_s, restore_s, rate = restore_throughput(lab, options.scale)
        print(f"{'database size (pgbench scale ' + str(options.scale) + ')':<64} {size_mb:.0f} MB")
        print(f"{'full backup (from a standby, zst level 3, process-max 2)':<64} {backup_s:.1f} s "
              f"({size_mb / backup_s:.1f} MB/s)")
        print(f"{'restore into a scratch directory':<64} {restore_s:.1f} s ({rate:.1f} MB/s)", flush=True)
        plain_s, drill_s, rto_s = drill_beside_plain_restore(lab)
        print(f"{'restore, start, end of recovery, query, stop, delete: by hand':<64} {plain_s:.1f} s")
        print(f"{'the same by the restore drill (pgbackup-drill.service)':<64} {drill_s:.1f} s "
              f"({drill_s / plain_s:.2f}x; its RTO, restore + replay: {rto_s:.1f} s)", flush=True)
        took = cluster_pitr(lab)
        print(f"{'RTO: point-in-time recovery of the whole cluster (README)':<64} {sum(took.values()):.1f} s")
        for name, seconds in took.items():
            print(f"{'  step ' + name:<64} {seconds:.1f} s")
    finally:
        if not options.keep:
            stop_lab()


if __name__ == "__main__":
    main()
