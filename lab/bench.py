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

`--peers` (issue 23; one release, LAB_RELEASE's, on one lab: a fresh one, or the running one with --reuse):
pgbackup against the tools a team would pick instead, same database, same S3, one run, at each --scale
(a comma list, e.g. 70,280,560):
- pg_basebackup of a standby onto its own disk (-Fp -Xs, uncompressed); restore: a copy of that directory;
- Barman's cloud tools (barman-cloud-backup/-restore into s3://<bucket>/barman-bench, each compression its
  --help offers; its profile in /etc/pgbackup-bench on the nodes, 0600 postgres, gone at the end);
- pgBackRest as pgbackup configures it (the scheduled units, from a standby), and the VARIANTS below on the
  command line into repository paths of their own.
For each: a full backup, the same CHANGE, a second backup (incremental where the tool has one: Barman's cloud
backups and pg_basebackup are full only, their second is another full), a restore of the newest into a scratch
directory on a replica; seconds, MB/s of database, MB stored, the nodes' CPU seconds (their cgroups). Then the
whole-cluster recovery at each size; archiving under pgbench -N for --load-seconds with pgbackup's
archive_command, then with barman-cloud-wal-archive's (Patroni's dynamic configuration, put back after), each
ended by the leader's power cut (RPO); the drill's RTO after --wal-gb of WAL. The figures go to --out (JSON)
and the terminal; --markdown rewrites the performance section between its markers.

  LAB_RELEASE=trixie .venv/bin/python -m lab.bench --peers --scale 70,280,560 --markdown
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
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config as BotoConfig

from lab import benchfmt
from lab.benchfmt import BARMAN, PGBACKUP
from lab.control import FACTS, LAB_DIR, PG_BIN, PG_DATA, RELEASE, ROOT, STANZA, Lab, start_lab, stop_lab
from pgbackup_cli import recover

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
        figures["pitr_s"], figures["pitr_steps"] = rto_of(took), took
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


def rto_of(took: dict[str, float]) -> float:
    """The recovery's RTO from its steps' seconds ("<n> <step>"): every step up to the cluster whole again
    (recover.RTO_STEP); the full backup after it is not part of it."""
    names = [name for name, _ in recover.STEPS]
    last = names.index(recover.RTO_STEP)
    return sum(seconds for step, seconds in took.items() if names.index(step.split(" ", 1)[1]) <= last)


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
    parser.add_argument("--scale", default="70",
                        help="pgbench scale (70 is about 1.05 GB); with --peers a comma list such as 70,280,560")
    parser.add_argument("--keep", action="store_true", help="leave the (last) lab running")
    parser.add_argument("--peers", action="store_true",
                        help="pgbackup against pg_basebackup and Barman's cloud tools on one lab (LAB_RELEASE's)")
    parser.add_argument("--reuse", action="store_true", help="--peers: on the running lab (default: a fresh one)")
    parser.add_argument("--barman", help="--peers: Barman's compressions, e.g. gzip,zstd (default: all it offers)")
    parser.add_argument("--variants", help=f"--peers: pgBackRest variants of {','.join(VARIANTS)} (default: all)")
    parser.add_argument("--load-seconds", type=float, default=60,
                        help="--peers: seconds of pgbench write load per archive_command (0: skip archiving)")
    parser.add_argument("--wal-gb", default="0.5,2", help="--peers: GB of WAL for the drill's RTO (\"\": skip)")
    parser.add_argument("--no-pitr", action="store_true", help="--peers: no whole-cluster recovery per size")
    parser.add_argument("--out", type=Path, default=Path("/var/tmp/pgbackup-bench.json"),  # noqa: S108
                        help="--peers: the figures as JSON (default /var/tmp/pgbackup-bench.json)")
    parser.add_argument("--markdown", action="store_true",
                        help="--peers: regenerate the performance section (docs/performance.md, else README.md)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # one release, in a process of its own
    options = parser.parse_args()
    if options.peers:
        peers_main(options, sys.argv[1:])
        return
    scale = int(options.scale)
    if options.measure:
        options.measure.write_text(json.dumps(measure(scale, options.keep)))
        return
    results, took = [], {}
    for release in [options.release] if options.release else list(RELEASES):
        # A process per release: the lab's facts (paths, versions) are read once, from LAB_RELEASE.
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "figures.json"
            started = time.monotonic()
            command = [sys.executable, "-m", "lab.bench", "--scale", str(scale), "--measure", str(out)]
            subprocess.run(command + (["--keep"] if options.keep else []), check=True,
                           env={**os.environ, "LAB_RELEASE": release})
            took[release] = time.monotonic() - started
            results.append(json.loads(out.read_text()))
    print(table(results))
    print("bench time: " + ", ".join(f"{r} {s / 60:.1f} min" for r, s in took.items()))


def peers_main(options: argparse.Namespace, argv: list[str]) -> None:
    """--peers: every option checked before the lab is touched; the figures to --out, the table printed."""
    if options.release and options.release != RELEASE:
        raise SystemExit(f"--peers runs on LAB_RELEASE's lab ({RELEASE}): set LAB_RELEASE={options.release}")
    try:
        scales = benchfmt.parse_scales(options.scale)
        wal_gbs = benchfmt.parse_list(options.wal_gb, float, "--wal-gb") if options.wal_gb else []
        compressions = options.barman.split(",") if options.barman else None
        if compressions and any(c not in (*BARMAN_COMPRESSIONS, "none") for c in compressions):
            raise ValueError(f"--barman: known ones are none,{','.join(BARMAN_COMPRESSIONS)}, got {options.barman!r}")
        variants = options.variants.split(",") if options.variants is not None else None
        variants = [v for v in variants if v] if variants is not None else None
        if variants and any(v not in VARIANTS for v in variants):
            raise ValueError(f"--variants: known ones are {','.join(VARIANTS)}, got {options.variants!r}")
    except ValueError as error:
        raise SystemExit(f"lab.bench: {error}") from None
    started = time.monotonic()
    lab = start_lab(fresh=not options.reuse)
    try:
        figures = peers_run(lab, scales, compressions, variants, options.load_seconds, wal_gbs, not options.no_pitr)
    finally:
        if not options.keep:
            stop_lab()
    figures["command"] = shlex.join(argv)
    figures["bench_s"] = time.monotonic() - started
    options.out.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    print(benchfmt.summary(figures))
    print(f"figures: {options.out}; bench time {figures['bench_s'] / 60:.1f} min")
    if options.markdown:
        document = benchfmt.performance_document(ROOT)
        benchfmt.regenerate(document, benchfmt.markdown(figures))
        print(f"regenerated: {document}")




# -- `--peers`: pgbackup against pg_basebackup and Barman's cloud tools, on the running lab (issue 23) --------
# Every function below takes a running Lab and builds none: `main` starts one, the lab smoke
# (tests/lab/test_bench.py) passes the session's.

DEBIAN = {"trixie": "13", "bookworm": "12"}
PGBACKREST_VERSION = "cd /tmp && runuser -u postgres -- pgbackrest version"
SEGMENT = 16 * 1024 * 1024  # wal_segment_size: the lab's PostgreSQL default
BENCH_DIR = "/etc/pgbackup-bench"  # on the nodes: root:postgres 0750, Barman's AWS profile and pg_basebackup's pgpass
SCRATCH = "/var/tmp/bench-restore"  # noqa: S108 -- inside a lab node
BASEBACKUP = "/var/tmp/bench-basebackup"  # noqa: S108 -- inside a lab node
BARMAN_PREFIX = "barman-bench"
PG_SOCKET = "/var/run/postgresql"  # the nodes' PostgreSQL (port 5432)
PATRONI_YML = "/etc/patroni/patroni.yml"  # where pg_basebackup's pgpass takes the replication user from
# pgBackRest settings worth trying beside pgbackup's (processMax 2, zst level 3, bundle and block incremental on
# 2.55), each into a repository path of its own under the repository's prefix (the node's key reaches it).
VARIANTS: dict[str, str] = {
    "pm1": "--process-max=1",
    "pm4": "--process-max=4",
    "lz4": "--compress-type=lz4 --compress-level=1",
    "zst1": "--compress-type=zst --compress-level=1",
    "zst6": "--compress-type=zst --compress-level=6",
    "nobundle": "--no-repo1-bundle --reset-repo1-block",  # 2.55 only: the config sets bundle and block
}
# Barman's compressions of a backup, as barman-cloud-backup --help names them (3.4 and 3.13: gzip, bzip2, snappy;
# its WAL archiving also offers xz, zstd and lz4 in 3.13). snappy is left out: python3-snappy 0.5.3 (Debian 12
# and 13) fails on Python >= 3.10 ("PY_SSIZE_T_CLEAN macro must be defined", seen with 3.4 on Debian 12).
BARMAN_COMPRESSIONS = ("gzip", "bzip2", "lz4", "zstd", "xz")
# Barman's WAL archiving: the first its barman-cloud-wal-archive --help offers.
BARMAN_WAL_COMPRESSIONS = ("zstd", "lz4", "gzip")


def cpu_seconds(lab: Lab) -> float:
    """CPU seconds the lab's nodes have used so far, all processes of all three (their cgroups, read on the
    host): the difference around a command is what it cost wherever it ran (a standby's pgBackRest server too)."""
    total = 0.0
    for node in lab.nodes:
        for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
            stat = Path(base) / "pgbackup-lab" / node / "cpu.stat"
            if stat.exists():
                fields = dict(line.split() for line in stat.read_text().splitlines() if line)
                total += int(fields["usage_usec"]) / 1e6
                break
        else:
            raise RuntimeError(f"no cpu.stat for {node}'s cgroup")
    return total


def timed(lab: Lab, action: Callable[[], Any]) -> tuple[float, float]:
    """Wall seconds and the nodes' CPU seconds of `action`."""
    cpu, started = cpu_seconds(lab), time.monotonic()
    action()
    return time.monotonic() - started, cpu_seconds(lab) - cpu


def s3(lab: Lab) -> Any:
    """The lab's S3, with the lab's keys and CA (from the host)."""
    return boto3.client("s3", endpoint_url=lab.env["LAB_S3_ENDPOINT"], region_name=lab.env["LAB_S3_REGION"],
                        aws_access_key_id=lab.env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=lab.env["AWS_SECRET_ACCESS_KEY"], verify=lab.env["LAB_CA_FILE"],
                        config=BotoConfig(s3={"addressing_style": "path"}))


def bucket_and_prefix(lab: Lab) -> tuple[str, str]:
    storage = lab.stack()["pgbackup:storage"]
    return str(storage["bucket"]), str(storage["repoPath"]).strip("/")


def s3_objects(lab: Lab, prefix: str) -> dict[str, int]:
    """Key -> size of every object under `prefix` in the lab's bucket."""
    bucket, _ = bucket_and_prefix(lab)
    objects: dict[str, int] = {}
    for page in s3(lab).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
    return objects


def stored_mb(lab: Lab, prefix: str) -> float:
    return sum(s3_objects(lab, prefix).values()) / 1e6


def stored_since(lab: Lab, prefix: str, before: dict[str, int]) -> float:
    """MB of the objects under `prefix` that were not there `before` (s3_objects): what a backup stored,
    whatever its expiry removed meanwhile and whatever it rewrote (backup.info)."""
    return sum(size for key, size in s3_objects(lab, prefix).items() if key not in before) / 1e6


def delete_prefix(lab: Lab, prefix: str) -> None:
    bucket, _ = bucket_and_prefix(lab)
    keys = list(s3_objects(lab, prefix))
    for start in range(0, len(keys), 1000):
        s3(lab).delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})


def barman_env() -> str:
    """What Barman's commands on a node run with: the profile files (no secret on a command line) and the CA."""
    return (f"AWS_SHARED_CREDENTIALS_FILE={BENCH_DIR}/credentials AWS_CONFIG_FILE={BENCH_DIR}/config "
            f"AWS_CA_BUNDLE={BENCH_DIR}/ca.pem")


def barman_url(lab: Lab) -> str:
    bucket, _ = bucket_and_prefix(lab)
    return f"s3://{bucket}/{BARMAN_PREFIX}"


def barman_version(lab: Lab) -> str:
    return lab.ssh(lab.leader(), "barman-cloud-backup --version").stdout.split()[-1]


def barman_compressions(lab: Lab) -> list[str]:
    """The compressions this node's barman-cloud-backup offers (its --help), of BARMAN_COMPRESSIONS."""
    helps = lab.ssh(lab.leader(), "barman-cloud-backup --help").stdout
    return [c for c in BARMAN_COMPRESSIONS if f"--{c}" in helps]


def prepare_nodes(lab: Lab) -> None:
    """On every node, in BENCH_DIR (root:postgres 0750: postgres reads, cannot replace): Barman's AWS profile
    (the lab's S3 key, written from the host into the node's file system, 0600 postgres), the lab CA, and a
    pgpass with Patroni's replication user for pg_basebackup (read from patroni.yml on the node itself)."""
    profile = (f"[default]\naws_access_key_id = {lab.env['AWS_ACCESS_KEY_ID']}\n"
               f"aws_secret_access_key = {lab.env['AWS_SECRET_ACCESS_KEY']}\n")
    files = {"credentials": profile, "config": f"[default]\nregion = {lab.env['LAB_S3_REGION']}\n",
             "ca.pem": Path(lab.env["LAB_CA_FILE"]).read_text()}
    pgpass = ("import os, yaml\n"
              f"r = yaml.safe_load(open('{PATRONI_YML}'))['postgresql']['authentication']['replication']\n"
              f"fd = os.open('{BENCH_DIR}/pgpass', os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)\n"
              "os.write(fd, ('*:*:*:%s:%s\\n' % (r['username'], r['password'])).encode())\n")
    for node in lab.nodes:
        lab.ssh(node, f"rm -rf {BENCH_DIR} && install -d -o root -g postgres -m 0750 {BENCH_DIR}")
        inside = LAB_DIR / "nodes" / node / "root" / BENCH_DIR.lstrip("/")
        for name, text in files.items():
            fd = os.open(inside / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
        lab.ssh(node, f"python3 -c {shlex.quote(pgpass)} && cd {BENCH_DIR} && "
                      "chown postgres:postgres credentials config ca.pem pgpass && "
                      "chmod 0600 credentials config pgpass && chmod 0644 ca.pem")


def forget_nodes(lab: Lab) -> None:
    """BENCH_DIR gone from every node (the profile holds the lab's S3 key)."""
    for node in lab.nodes:
        lab.ssh(node, f"rm -rf {BENCH_DIR} {SCRATCH} {BASEBACKUP}", check=False)


def _as_postgres(command: str) -> str:
    return f"cd /tmp && runuser -u postgres -- {command}"


def _fresh_scratch(lab: Lab, node: str) -> None:
    lab.ssh(node, f"rm -rf {SCRATCH} && install -d -o postgres -m 0700 {SCRATCH}")


class Tool:
    """One way of backing up the lab's database: a full backup, one after CHANGE, a restore of the newest."""

    name = ""
    incremental = True  # False: the backup after the change is another full one (the tool has no other)

    def prepare(self, lab: Lab) -> None:
        """Before the first backup (a repository of its own)."""

    def backup(self, lab: Lab, kind: str) -> tuple[float, float, float]:
        """A backup ("full" or "incr"): its seconds, the nodes' CPU seconds, what it stored (MB)."""
        raise NotImplementedError

    def restore(self, lab: Lab) -> tuple[float, float]:
        """The newest backup into a scratch directory on a replica: seconds and CPU seconds."""
        raise NotImplementedError

    def forget(self, lab: Lab) -> None:
        """Its backups gone (the next size starts empty)."""


class PgBaseBackup(Tool):
    """pg_basebackup of a standby onto its own disk, plain and uncompressed (-Fp -Xs): the physical reference
    for reading the data. Restore: a copy of that directory into the scratch directory."""

    name = "pg_basebackup"
    incremental = False

    def backup(self, lab: Lab, kind: str) -> tuple[float, float, float]:
        node = lab.replicas()[0]
        lab.ssh(node, f"rm -rf {BASEBACKUP}")
        command = _as_postgres(f"env PGPASSFILE={BENCH_DIR}/pgpass {PG_BIN}/pg_basebackup -h $(hostname) "
                               f"-U replicator -D {BASEBACKUP} -Fp -Xs -c fast")
        seconds, cpu = timed(lab, lambda: lab.ssh(node, command, timeout=7200))
        stored = int(lab.ssh(node, f"du -sb {BASEBACKUP} | cut -f1").stdout)
        return seconds, cpu, stored / 1e6

    def restore(self, lab: Lab) -> tuple[float, float]:
        node = lab.replicas()[0]
        _fresh_scratch(lab, node)
        return timed(lab, lambda: lab.ssh(node, _as_postgres(f"cp -a {BASEBACKUP}/. {SCRATCH}/"), timeout=7200))

    def forget(self, lab: Lab) -> None:
        lab.ssh(lab.replicas()[0], f"rm -rf {BASEBACKUP} {SCRATCH}")


class Barman(Tool):
    """barman-cloud-backup of the leader (it reads the data directory itself) into s3://<bucket>/barman-bench,
    with one compression; barman-cloud-restore by the backup's name."""

    incremental = False

    def __init__(self, compression: str, scale: int) -> None:
        self.compression, self.scale = compression, scale
        self.name = f"{BARMAN} {compression}"
        self.newest, self.count = "", 0

    def prepare(self, lab: Lab) -> None:
        self.forget(lab)  # what an interrupted run left

    def _url(self, lab: Lab) -> str:
        return f"--endpoint-url {lab.env['LAB_S3_ENDPOINT']} {barman_url(lab)} {STANZA}"

    def backup(self, lab: Lab, kind: str) -> tuple[float, float, float]:
        leader = lab.leader()
        self.count += 1  # a name of its own: barman-cloud-restore refuses a name two backups share
        self.newest = f"bench-{self.scale}-{self.compression}-{self.count}-{time.time():.0f}"
        base = f"{BARMAN_PREFIX}/{STANZA}/base/"
        before = s3_objects(lab, base)
        compress = "" if self.compression == "none" else f"--{self.compression}"
        command = _as_postgres(f"env {barman_env()} barman-cloud-backup {compress} -h {PG_SOCKET} "
                               f"--immediate-checkpoint -n {self.newest} {self._url(lab)}")
        seconds, cpu = timed(lab, lambda: lab.ssh(leader, command, timeout=7200))
        return seconds, cpu, stored_since(lab, base, before)

    def restore(self, lab: Lab) -> tuple[float, float]:
        node = lab.replicas()[0]
        _fresh_scratch(lab, node)
        command = _as_postgres(f"env {barman_env()} barman-cloud-restore {self._url(lab)} {self.newest} "
                               f"{SCRATCH}")
        return timed(lab, lambda: lab.ssh(node, command, timeout=7200))

    def forget(self, lab: Lab) -> None:
        delete_prefix(lab, f"{BARMAN_PREFIX}/{STANZA}/base/")


class PgBackRest(Tool):
    """pgBackRest as pgbackup configures it (variant None: the scheduled units, from a standby), or with a
    variant's options on the command line into a repository path of its own (stanza-create first; no archive
    check: the WAL goes to pgbackup's own path, and a file restore does not need it)."""

    def __init__(self, variant: str | None = None) -> None:
        self.variant = variant
        self.name = PGBACKUP if variant is None else f"pgbackrest {variant}"

    def _path(self, lab: Lab) -> str:
        _, prefix = bucket_and_prefix(lab)
        return f"/{prefix}" if self.variant is None else f"/{prefix}/bench-{self.variant}"

    def _options(self, lab: Lab, command: str = "backup") -> str:
        """The variant's repository and options; for a restore only those it takes (pgBackRest refuses
        --compress-*, --archive-check, --repo1-block on restore's command line): --process-max."""
        assert self.variant is not None
        options = VARIANTS[self.variant].split()
        if command == "restore":
            options = [option for option in options if option.startswith("--process-max=")]
        return " ".join([f"--repo=1 --repo1-path={self._path(lab)}", *options])

    def prepare(self, lab: Lab) -> None:
        if self.variant is not None:  # an earlier size's repository of this variant goes first
            delete_prefix(lab, self._path(lab).lstrip("/") + "/")
            lab.pgbackrest(lab.leader(), f"--repo1-path={self._path(lab)} --log-level-console=warn stanza-create")

    def backup(self, lab: Lab, kind: str) -> tuple[float, float, float]:
        leader = lab.leader()
        prefix = self._path(lab).lstrip("/") + "/backup/"
        before = s3_objects(lab, prefix)
        if self.variant is None:
            unit = f"pgbackup-backup-{kind}.service"
            seconds, cpu = timed(lab, lambda: lab.ssh(leader, f"systemctl start {unit}", timeout=7200))
            result = lab.ssh(leader, f"systemctl show -p Result --value {unit}").stdout.strip()
            if result != "success":
                raise RuntimeError(f"{unit} on {leader}: Result={result}")
        else:
            args = f"{self._options(lab)} --no-archive-check --type={kind} --log-level-console=warn backup"
            seconds, cpu = timed(lab, lambda: lab.pgbackrest(leader, args, timeout=7200))
        return seconds, cpu, stored_since(lab, prefix, before)

    def restore(self, lab: Lab) -> tuple[float, float]:
        node = lab.replicas()[0]
        _fresh_scratch(lab, node)
        repo = "" if self.variant is None else self._options(lab, "restore")
        args = f"{repo} --pg1-path={SCRATCH} --archive-mode=off --log-level-console=warn restore"
        return timed(lab, lambda: lab.pgbackrest(node, args, timeout=7200))

    def forget(self, lab: Lab) -> None:
        if self.variant is not None:
            delete_prefix(lab, self._path(lab).lstrip("/") + "/")


def tools_for(lab: Lab, scale: int, compressions: list[str] | None, variants: list[str] | None) -> list[Tool]:
    """pg_basebackup, Barman with each of `compressions` (default: those its --help offers), pgbackup, and
    pgBackRest with each of `variants` (default: VARIANTS, "nobundle" only on 2.55 where bundling is on)."""
    offered = barman_compressions(lab)
    chosen = offered if compressions is None else compressions
    unknown = [c for c in chosen if c != "none" and c not in offered]
    if unknown:
        raise ValueError(f"--barman: {unknown} not offered by this barman-cloud-backup (it offers {offered})")
    version = lab.ssh(lab.leader(), PGBACKREST_VERSION).stdout.split()[-1]
    if variants is None:
        variants = [v for v in VARIANTS if v != "nobundle" or version >= "2.54"]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: {unknown} unknown; known: {list(VARIANTS)}")
    return [PgBaseBackup(), *(Barman(c, scale) for c in chosen), PgBackRest(), *(PgBackRest(v) for v in variants)]


def load_database(lab: Lab, scale: int) -> float:
    """A pgbench database of `scale` on the leader (replacing the last); its size in MB."""
    leader = lab.leader()
    lab.ssh(leader, _as_postgres(f"{PG_BIN}/pgbench -i -q -s {scale} -h {PG_SOCKET} postgres"),
            timeout=7200)
    lab.sql(leader, "CHECKPOINT")
    return int(lab.sql(leader, "SELECT sum(pg_database_size(oid)) FROM pg_database")) / 1e6


def peers(lab: Lab, scale: int, compressions: list[str] | None = None, variants: list[str] | None = None
          ) -> dict[str, Any]:
    """Every tool's full backup, then the fixed CHANGE, then every tool's second backup (incremental where
    the tool has one), then every tool's restore of its newest: seconds, MB/s of database, stored MB, CPU s."""
    db_mb = load_database(lab, scale)
    tools = tools_for(lab, scale, compressions, variants)
    figures: dict[str, dict[str, Any]] = {t.name: {"incremental": t.incremental} for t in tools}
    changed = 0
    try:
        for tool in tools:
            tool.prepare(lab)
            seconds, cpu, stored = tool.backup(lab, "full")
            figures[tool.name].update(full_s=seconds, full_mb_s=db_mb / seconds, full_cpu_s=cpu,
                                      full_stored_mb=stored)
        changed = int(lab.sql(lab.leader(), CHANGE))
        lab.sql(lab.leader(), "CHECKPOINT")
        for tool in tools:
            seconds, cpu, stored = tool.backup(lab, "incr" if tool.incremental else "full")
            figures[tool.name].update(incr_s=seconds, incr_cpu_s=cpu, incr_stored_mb=stored)
        for tool in tools:
            seconds, cpu = tool.restore(lab)
            figures[tool.name].update(restore_s=seconds, restore_mb_s=db_mb / seconds, restore_cpu_s=cpu)
            lab.ssh(lab.replicas()[0], f"rm -rf {SCRATCH}")
    finally:
        for tool in tools:
            tool.forget(lab)
    return {"scale": scale, "db_mb": db_mb, "changed_rows": changed, "tools": figures}


# -- archiving under load
def patroni_config(lab: Lab, patch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Patroni's dynamic configuration (GET /config on the leader's REST API), or PATCHed with `patch`."""
    url = f"http://{lab.leader()}:8008/config"
    data = None if patch is None else json.dumps(patch).encode()
    request = urllib.request.Request(url, data=data, method="GET" if patch is None else "PATCH",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 -- the lab's loopback REST API
        config: dict[str, Any] = json.loads(response.read())
    return config


def set_archive_command(lab: Lab, command: str, timeout: float = 120) -> None:
    """archive_command through Patroni's dynamic configuration; returns once the leader runs with it."""
    patroni_config(lab, {"postgresql": {"parameters": {"archive_command": command}}})
    deadline = time.monotonic() + timeout
    while lab.sql(lab.leader(), "SHOW archive_command") != command:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the leader's archive_command is not {command!r} after {timeout} s")
        time.sleep(2)


def barman_archive_command(lab: Lab) -> str:
    """barman-cloud-wal-archive as archive_command, with the fastest compression it offers."""
    helps = lab.ssh(lab.leader(), "barman-cloud-wal-archive --help").stdout
    compression = next(c for c in BARMAN_WAL_COMPRESSIONS if f"--{c}" in helps)
    return (f"env {barman_env()} barman-cloud-wal-archive --{compression} --endpoint-url "
            f"{lab.env['LAB_S3_ENDPOINT']} {barman_url(lab)} {STANZA} %p")


def _sample(lab: Lab, leader: str) -> tuple[float, int, int, int]:
    """(the node's time, WAL bytes written so far, segments archived so far, segments waiting)."""
    query = "SELECT pg_current_wal_lsn() - '0/0', archived_count FROM pg_stat_archiver"
    script = (f"date +%s.%N; ls {PG_DATA}/pg_wal/archive_status | grep -c '[.]ready$' || true; " +
              _as_postgres(f"psql -XAtq -F ' ' -h {PG_SOCKET} -c {shlex.quote(query)}"))
    at, ready, row = lab.ssh(leader, script, timeout=30).stdout.split("\n")[:3]
    lsn, archived = row.split()
    return float(at), int(float(lsn)), int(archived), int(ready)


def archiving(lab: Lab, tool: str, seconds: float, clients: int = 4) -> dict[str, Any]:
    """pgbench -N at the highest rate for `seconds` on the leader, its archiving (pgbackup's archive_command, or
    with tool "barman" barman-cloud-wal-archive's, through Patroni's dynamic configuration and put back after)
    sampled each second; then the leader's power is cut under load. RPO: the cut's time minus the time the
    leader's WAL reached the end of the newest segment the archive holds (S3, listed right after the cut)."""
    original = str(patroni_config(lab)["postgresql"]["parameters"]["archive_command"])
    _, prefix = bucket_and_prefix(lab)
    archive = f"{BARMAN_PREFIX}/{STANZA}/wals/" if tool == "barman" else f"{prefix}/archive/{STANZA}/"
    try:
        if tool == "barman":
            set_archive_command(lab, barman_archive_command(lab))
        leader = lab.leader()
        timeline = int(lab.sql(leader, "SELECT timeline_id FROM pg_control_checkpoint()"))
        lab.switch_wal(leader)
        load = _as_postgres(f"{PG_BIN}/pgbench -N -c {clients} -j 2 -T {int(seconds) + 600} -h {PG_SOCKET} "
                            "postgres")
        lab.ssh(leader, f"systemd-run --quiet --unit=pgbackup-bench-load --collect bash -c {shlex.quote(load)}")
        samples = [_sample(lab, leader)]
        while samples[-1][0] - samples[0][0] < seconds:
            time.sleep(max(0.0, 1 - (time.monotonic() % 1)))
            samples.append(_sample(lab, leader))
        cut = float(lab.ssh(leader, "date +%s.%N").stdout)
        lab.kill_node(leader)
        keys = list(s3_objects(lab, archive))
        end = benchfmt.archived_end(keys, timeline, SEGMENT)
        took = samples[-1][0] - samples[0][0]
        wal_bytes = samples[-1][1] - samples[0][1]
        figures = {"seconds": took, "wal_mb_s": wal_bytes / 1e6 / took,
                   "generated_per_s": wal_bytes / SEGMENT / took,
                   "archived_per_s": (samples[-1][2] - samples[0][2]) / took,
                   "max_ready": max(s[3] for s in samples),
                   "rpo_s": cut - benchfmt.time_at_lsn([(s[0], s[1]) for s in samples], end),
                   "victim": leader}
        _after_power_cut(lab, leader)
        return figures
    finally:
        if tool == "barman":
            set_archive_command(lab, original, timeout=300)
            delete_prefix(lab, f"{BARMAN_PREFIX}/{STANZA}/wals/")


def _after_power_cut(lab: Lab, victim: str) -> None:
    deadline = time.monotonic() + 120
    while not [m for m in lab.members() if m.get("Role") == "Leader" and m["Member"] != victim
               and m.get("State") == "running"]:
        if time.monotonic() > deadline:
            raise RuntimeError("no new leader")
        time.sleep(2)
    lab.rejoin_after_power_cut(victim, catch_up=1800)  # a reinit member replays the load's WAL (GBs)


# -- growth
def wal_since(lab: Lab, node: str, start: int) -> int:
    return int(float(lab.sql(node, "SELECT pg_current_wal_lsn() - '0/0'"))) - start


def drill_rto(lab: Lab, wal_gb: float) -> dict[str, float]:
    """A full backup, then `wal_gb` GB of WAL written by pgbench -N and archived, then the restore drill
    (pgbackup-drill.service, restore and replay to a ready copy): its RTO."""
    leader = lab.leader()
    # Not _backup: its count of backups does not grow when retention expires the oldest full meanwhile.
    lab.ssh(leader, "systemctl start pgbackup-backup-full.service", timeout=7200)
    result = lab.ssh(leader, "systemctl show -p Result --value pgbackup-backup-full.service").stdout.strip()
    if result != "success":
        raise RuntimeError(f"pgbackup-backup-full.service on {leader}: Result={result}")
    start = wal_since(lab, leader, 0)
    while wal_since(lab, leader, start) < wal_gb * 1e9:
        lab.ssh(leader, _as_postgres(f"{PG_BIN}/pgbench -N -c 4 -j 2 -T 15 -h {PG_SOCKET} postgres"),
                timeout=120)
    written = wal_since(lab, leader, start)
    lab.wait_archived(lab.switch_wal(leader), timeout=3600)
    node = sorted(lab.replicas())[0]
    lab.ssh(node, "systemctl start pgbackup-drill.service", timeout=7200)
    state = json.loads(lab.ssh(node, "cat /var/lib/pgbackrest/pgbackup-drill.json").stdout)
    if not state["ok"]:
        raise RuntimeError(f"the drill failed on {node}: {state['reason']}")
    return {"wal_gb": written / 1e9, "rto_s": float(state["rtoSeconds"])}


def peers_run(lab: Lab, scales: list[int], compressions: list[str] | None, variants: list[str] | None,
              load_s: float, wal_gbs: list[float], pitr: bool) -> dict[str, Any]:
    """The whole `--peers` run on a running lab: the peers at each size (and the cluster recovery there), the
    archiving under load with each archive_command, the drill against WAL to replay."""
    figures: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": benchfmt.machine(),
        "release": f"{DEBIAN.get(RELEASE, '?')} ({RELEASE})", "pg": FACTS["pg_version"],
        "pgbackrest": lab.ssh(lab.leader(), PGBACKREST_VERSION).stdout.split()[-1],
        "barman": barman_version(lab), "scales": [], "drill": []}
    prepare_nodes(lab)
    try:
        for scale in scales:
            result = peers(lab, scale, compressions, variants)
            figures["scales"].append(result)
            _progress_peers(result)
            if pitr:
                took = _cluster_pitr(lab)
                result["pitr_s"], result["pitr_steps"] = rto_of(took), took
                _progress_peers(result)
        if load_s > 0:
            figures["archiving"] = {name: archiving(lab, tool, load_s)
                                    for name, tool in ((PGBACKUP, "pgbackrest"), (BARMAN, "barman"))}
        for wal_gb in wal_gbs:
            figures["drill"].append(drill_rto(lab, wal_gb))
    finally:
        forget_nodes(lab)
    line = benchfmt.extrapolation(figures)
    if line:
        figures["extrapolation"] = line
    return figures


def _progress_peers(figures: dict[str, Any]) -> None:
    print("lab.bench --peers: " + json.dumps(figures, default=str), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
