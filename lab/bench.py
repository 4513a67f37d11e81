"""Lab benchmark: prints a table; it is not a test. Needs root and the lab (it builds a fresh one).

1. From booted, empty nodes to the first verified backup: `lab/up.sh` boots three nodes with PostgreSQL and
   Patroni only; the driver then applies the program (installs pgBackRest, configures, stanza, archiving,
   check, first full backup). Both times are printed.
2. RPO: a steady write load on the leader (one committed row every 50 ms), then the leader's power is cut.
   The repository's archive of the old timeline is restored into a scratch directory on a surviving node;
   RPO = the time of the cut minus the newest row the archive holds.
3. Restore throughput: a pgbench database of at least 1 GB, a full backup, then a restore of it into a
   scratch directory on a replica: MB/s of database restored (and of the backup, for comparison).
4. RTO of the README's point-in-time recovery of the whole cluster (lab.control.Lab.recover_cluster_to) on
   that database: from stopping Patroni to three healthy members on the new timeline, step by step.

Usage: .venv/bin/python -m lab.bench [--scale 70]
"""

from __future__ import annotations

import argparse
import shlex
import time

from lab.control import PG_BIN, PG_DATA, Lab, start_lab, stop_lab

SCRATCH, SOCK = "/var/tmp/bench-restore", "/var/tmp/bench-sock"  # noqa: S108 -- inside a lab node


def restore_and_start(lab: Lab, node: str, options: str) -> None:
    lab.ssh(node, f"rm -rf {SCRATCH} {SOCK} && install -d -o postgres -m 0700 {SCRATCH} && "
                  f"install -d -o postgres {SOCK}")
    lab.pgbackrest(node, f"--pg1-path={SCRATCH} --archive-mode=off --log-level-console=warn {options} restore")
    settings = f"-c port=5499 -c listen_addresses='' -c unix_socket_directories={SOCK} -c archive_mode=off"
    lab.ssh(node, f"cd /tmp && runuser -u postgres -- {PG_BIN}/pg_ctl -D {SCRATCH} -l /var/tmp/bench.log "
                  f"-o \"{settings}\" -w -t 600 start")
    deadline = time.monotonic() + 600
    while lab.sql(node, "SELECT pg_is_in_recovery()", port=5499, socket=SOCK) == "t":
        if time.monotonic() > deadline:
            raise RuntimeError("the restored copy did not finish recovery")
        time.sleep(1)


def drop_scratch(lab: Lab, node: str) -> None:
    lab.ssh(node, f"cd /tmp && runuser -u postgres -- {PG_BIN}/pg_ctl -D {SCRATCH} -m immediate stop; "
                  f"rm -rf {SCRATCH} {SOCK}", check=False)


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
    restore_and_start(lab, survivor, f"--type=default --target-timeline={timeline}")
    try:
        newest = float(lab.sql(survivor, "SELECT extract(epoch FROM max(at)) FROM rpo", port=5499, socket=SOCK))
    finally:
        drop_scratch(lab, survivor)
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
    replica = lab.replicas()[0]
    started = time.monotonic()
    lab.ssh(replica, f"rm -rf {SCRATCH} && install -d -o postgres -m 0700 {SCRATCH}")
    lab.pgbackrest(replica, f"--pg1-path={SCRATCH} --archive-mode=off --log-level-console=warn restore")
    restore_s = time.monotonic() - started
    drop_scratch(lab, replica)
    return size_mb, backup_s, restore_s, size_mb / restore_s


def cluster_pitr(lab: Lab) -> dict[str, float]:
    """The README's cluster recovery to a point just before a row that must then be gone everywhere."""
    leader = lab.leader()
    lab.sql(leader, "CREATE TABLE bench_pitr (n int)")
    lab.wait_archived(lab.switch_wal(leader))
    time.sleep(1.5)
    target = lab.sql(leader, "SELECT now()")
    time.sleep(1.5)
    lab.sql(leader, "INSERT INTO bench_pitr VALUES (1)")
    lab.wait_archived(lab.switch_wal(leader))
    took = lab.recover_cluster_to(target)
    for node in lab.nodes:
        if lab.sql(node, "SELECT count(*) FROM bench_pitr") != "0":
            raise RuntimeError(f"{node} still has the row written after the target")
        lab.ssh(node, f"rm -rf {PG_DATA}.before-pitr")
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
        took = cluster_pitr(lab)
        print(f"{'RTO: point-in-time recovery of the whole cluster (README)':<64} {sum(took.values()):.1f} s")
        for name, seconds in took.items():
            print(f"{'  step ' + name:<64} {seconds:.1f} s")
    finally:
        if not options.keep:
            stop_lab()


if __name__ == "__main__":
    main()
