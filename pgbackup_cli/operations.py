"""`pgbackup backup` and `pgbackup drill`: the scheduled services, run now."""

from __future__ import annotations

import time
from collections.abc import Callable

from components.drill import WEEKLY
from components.layout import BACKUPS, NAMES, PATHS
from pgbackup_cli.cluster import Cluster
from pgbackup_cli.remote import Node, RemoteError
from pgbackup_cli.status import DRILL_STATE
from pgbackup_cli.untrusted import Unreadable, drill_result, printable

DRILL_UNIT = f"{WEEKLY.unit}.service"  # the scheduled drill of repo1 (components/drill.py)


def backup_unit(pg_type: str, repo: int) -> str | None:
    """The scheduled backup's service for this --type and --repo, if the program installs one."""
    found = [b for b in BACKUPS.values() if (b.pg_type, b.repo) == (pg_type, repo)]
    return f"{found[0].unit}.service" if found else None


def follow_script(start: str, unit: str) -> str:
    """Start `unit` (a blocking `systemctl start` or `systemd-run --wait`), print its journal while it runs,
    exit with its result."""
    return f"""
since=$(date +%s)
{start} &
started=$!
journalctl -u {unit} -f -o short-iso --since "@$since" &
follower=$!
status=0
wait "$started" || status=$?
sleep 1
kill "$follower" 2>/dev/null || true
exit "$status"
"""


def backup(cluster: Cluster, pg_type: str, repo: int, say: Callable[[str], None]) -> int:
    members = cluster.members()
    leader = Cluster.leader_of(members)
    if leader is None:
        raise RemoteError("Patroni reports no running leader: no backup can run")
    node = cluster.node(leader)
    before = {b["label"] for b in cluster.info(leader).get("backup") or []}
    unit = backup_unit(pg_type, repo)
    q = cluster.q
    if unit is not None and node.run(f"systemctl cat {q(unit)} >/dev/null 2>&1").status == 0:
        say(f"{leader} (leader): systemctl start {unit}")
        start = f"systemctl start {q(unit)}"
    else:
        unit = f"pgbackup-backup-ondemand-{int(time.time())}.service"
        say(f"{leader} (leader): a {pg_type} backup into repo{repo} as the transient unit {unit}")
        if node.run(f"test -x {q(PATHS.backup_script)}").status == 0:  # from a standby that follows the leader
            command = (f"flock --wait {NAMES.backup_lock_wait} {q(PATHS.backup_lock)} {q(PATHS.backup_script)} "
                       f"--repo={repo} --type={q(pg_type)}")
        else:  # a node of a pgbackup older than pgbackup-backup
            command = cluster.pgbackrest_command(f"--repo={repo} --type={q(pg_type)} backup", locked=True)
        start = ("systemd-run --quiet --wait --collect -p User=postgres -p Group=postgres -p Nice=10 "
                 f"--unit={q(unit)} -- {command}")
    began = time.monotonic()
    result = node.run(follow_script(start, q(unit)), timeout=86400, on_output=say)
    after = [b for b in cluster.info(leader).get("backup") or [] if b["label"] not in before]
    if result.status != 0:
        say(f"the backup failed on {leader} (exit {result.status}): {result.err.strip()[-500:]}")
        return 1
    if not after:
        say(f"no new backup on {leader}: {unit} did not run it (did the leadership move?)")
        return 1
    say(f"backup {after[-1]['label']} ({after[-1]['type']}, repo{repo}) in {time.monotonic() - began:.1f} s")
    return 0


def drill(cluster: Cluster, say: Callable[[str], None]) -> int:
    """Start pgbackup-drill.service on every node (the service decides which node drills), wait, print
    the result the drill wrote."""
    names = list(cluster.nodes)
    q = cluster.q
    has_unit = cluster.on_each(names, lambda n: n.run(f"systemctl cat {q(DRILL_UNIT)} >/dev/null 2>&1").status == 0)
    unreachable = {n: str(v) for n, v in has_unit.items() if isinstance(v, RemoteError)}
    for error in unreachable.values():
        say(error)
    with_unit = [n for n, v in has_unit.items() if v is True]
    if not with_unit:
        say(f"{DRILL_UNIT} is not installed on {', '.join(n for n in names if n not in unreachable) or 'any node'}: "
            "this stack's nodes run a pgbackup without the scheduled restore drill (apply a version that has it), "
            "or see docs/restoring.md \"Restore drill\" for the drill by hand")
        return 2
    started = time.time()

    def run(node: Node) -> int:
        return node.run(f"systemctl start {q(DRILL_UNIT)}", timeout=86400).status

    say(f"starting {DRILL_UNIT} on {', '.join(with_unit)} (the drill picks its node) ...")
    statuses = cluster.on_each(with_unit, run)
    texts = cluster.on_each(with_unit, lambda n: cluster.read_text(n.name, DRILL_STATE))
    now = time.time()
    fresh = []
    for name, text in texts.items():
        if isinstance(text, RemoteError | Unreadable):
            say(printable(f"{name}: {DRILL_STATE} {text}" if isinstance(text, Unreadable) else str(text)))
        elif text is not None:
            try:
                result = drill_result(text, name, now)
            except ValueError as error:
                say(printable(f"{name}: {DRILL_STATE} unreadable: {error}"))
                continue
            if result["epoch"] >= started - 1:
                fresh.append(result)
    if not fresh:
        say(f"no drill result newer than the start in {DRILL_STATE} (exit statuses: {statuses})")
        return 1
    result = max(fresh, key=lambda r: float(r["epoch"]))
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in result["phases"].items() if v is not None)
    rto, restored = result["rtoSeconds"], result["restoredBytes"]
    say(printable(f"drill on {result['node']} from repo{result['repo']}: {'ok' if result['ok'] else 'FAILED'}; "
                  f"RTO {rto or 0:.1f} s ({phases}); restored {restored or 0} bytes"
                  + (f"; {result['reason']}" if result["reason"] else "")))
    return 0 if result["ok"] else 1
