"""`pgbackup extract`: one database's tables (or the whole database) as they were at a time, in a `pg_dump -Fc`
file on the operator's machine, without touching the cluster (README, "A table was dropped or damaged").

The node side is the restore drill's program (templates/drill/pgbackup-drill.py.j2, `--extract`), run as
postgres in the transient unit pgbackup-extract.service on a node chosen as the drill chooses its own: the
drill's scratch directory, lock, free-space rule and isolated copy, restored from repo1 with only that
database, replayed to the time. The unit is Type=notify: `systemd-run` returns once the dump is ready (or
the program has ended, refused or failed); the command then streams the file back over SSH (as postgres,
bounded by the size the program announced, checked against its sha256) and stops the unit, whose program
deletes the dump (and its ExecStopPost whatever a killed run left). Ctrl-C stops the unit too; if the SSH
session is lost, the program deletes everything after FETCH_WAIT."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.layout import PATHS
from pgbackup_cli.cluster import Cluster
from pgbackup_cli.remote import RemoteError
from pgbackup_cli.repository import parse_target
from pgbackup_cli.untrusted import loads, printable

UNIT = "pgbackup-extract.service"
RESULT = "pgbackup-extract: result "  # the program's machine-read line (RESULT in the drill's template)
DUMP = "extract.dump"  # in the drill's scratch directory (DUMP in the drill's template)
FETCH_WAIT = 1800  # the program's wait for the fetch (FETCH_WAIT in the drill's template)
LEADER_ROLES = ("leader", "master", "primary", "standby_leader")
RUNNING_STATES = ("running", "streaming")
IDENTIFIER = re.compile(r'"((?:[^"]|"")+)"|([^".]+)')


class ExtractRefused(RuntimeError):
    """Nothing was restored: the request, the repository, the node or the copy at the target says no."""


@dataclass(frozen=True)
class Request:
    to: str
    target: datetime
    database: str
    tables: list[tuple[str, str]]
    out: Path

    def encoded(self, label: str) -> str:
        """The program's --extract argument: base64url JSON (nothing systemd or a shell would expand)."""
        document = {"to": self.target.isoformat(), "database": self.database,
                    "tables": [list(t) for t in self.tables], "set": label}
        return base64.urlsafe_b64encode(json.dumps(document, sort_keys=True).encode()).decode("ascii")


def parse_table(text: str) -> tuple[str, str]:
    """SCHEMA.NAME as PostgreSQL reads it: an unquoted part folded to lower case, a "quoted" one as it is."""
    parts: list[str] = []
    position = 0
    while True:
        found = IDENTIFIER.match(text, position)
        if found is None:
            break
        quoted, plain = found.groups()
        parts.append(quoted.replace('""', '"') if quoted is not None else plain.strip().lower())
        position = found.end()
        if position == len(text) or text[position] != ".":
            break
        position += 1
    if position != len(text) or len(parts) != 2 or not all(parts) or any("\0" in p for p in parts):
        raise ValueError(f"--table {text!r}: expected SCHEMA.NAME, e.g. public.orders or '\"My Schema\".\"Orders\"'")
    return parts[0], parts[1]


def parse_request(to: str, database: str, tables: list[str], out: Path) -> Request:
    """The operator's arguments, checked before anything is touched (ValueError says which and why)."""
    target = parse_target(to)
    if target is None:
        raise ValueError("--to: extract needs a time (with its zone), not 'latest'")
    if not database or "\0" in database or len(database.encode()) > 63:
        raise ValueError(f"--database {database!r}: not a database name (1 to 63 bytes)")
    if database == "template0":
        raise ValueError("--database template0: it accepts no connections, there is nothing to dump")
    parsed = [parse_table(t) for t in tables]
    if out.exists() or out.is_symlink():
        raise ValueError(f"--out {out}: exists; give a new file's name")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: no directory {out.parent}")
    return Request(to, target, database, list(dict.fromkeys(parsed)), out)


def choose_node(members: list[dict[str, Any]], pinned: str | None) -> tuple[str | None, str]:
    """The restore drill's choice (choose() in its program) over `patronictl list` members: a running
    replica, the first by name; `pinned` (drill.node) when it is running and not the leader; the leader only
    when it is the only member."""
    def role(member: dict[str, Any]) -> str:
        return str(member.get("Role", "")).lower().replace(" ", "_")

    running = [m for m in members if m.get("State") in RUNNING_STATES]
    leaders = {str(m["Member"]) for m in members if role(m) in LEADER_ROLES}
    replicas = sorted(str(m["Member"]) for m in running if str(m["Member"]) not in leaders)
    if pinned is not None:
        if pinned not in {str(m["Member"]) for m in running}:
            return None, f"drill.node {pinned} is not a running member of the cluster"
        if pinned not in leaders or len(members) == 1:
            return pinned, f"drill.node names {pinned}"
        if replicas:
            return replicas[0], f"drill.node {pinned} is the leader now: the first running replica"
    if replicas:
        return replicas[0], "the first running replica by name"
    if len(members) == 1 and running and str(running[0]["Member"]) in leaders:
        return str(running[0]["Member"]), "the leader is the only member"
    return None, "no running replica, and the leader is not used while other members exist"


def pick_node(cluster: Cluster, node: str | None) -> tuple[str, str]:
    members = cluster.members(prefer=node)
    if node is not None:
        cluster.node(node)
        states = {str(m["Member"]): m.get("State") for m in members}
        if states.get(node) not in RUNNING_STATES:
            raise ExtractRefused(f"--node {node} is not a running member of the cluster "
                                 f"(its state: {states.get(node, 'not a member')})")
        return node, "--node"
    chosen, why = choose_node(members, cluster.stack.drill.node)
    if chosen is None:
        raise ExtractRefused(f"no node to extract on: {why} (--node NODE to choose one)")
    return chosen, why


def reachable_backup(cluster: Cluster, node: str, target: datetime) -> tuple[dict[str, Any], str]:
    """Cluster.reachable, refused as an extract: the backup a restore to `target` starts from, and what the
    repository holds; ExtractRefused when the target is outside what repo1 can reach."""
    try:
        return cluster.reachable(node, target)
    except ValueError as error:
        raise ExtractRefused(str(error)) from None


def start_script(cluster: Cluster, argument: str) -> str:
    """On the node, as root: the program in the transient unit, its journal followed until it is ready or
    has ended. Exits 0 when ready, 4 when the program is too old for --extract, 5 when the unit is there
    already, else systemd-run's status."""
    q = cluster.q
    program = q(PATHS.drill_script)
    timeout = max(6 * 3600, 4 * cluster.stack.drill.rto_budget_seconds)
    return f"""
if ! grep -qF -- '--extract' {program}; then
  echo "{PATHS.drill_script} has no --extract: apply this version of pgbackup to the stack first" >&2
  exit 4
fi
if systemctl is-active --quiet {UNIT} || systemctl is-failed --quiet {UNIT}; then
  echo "{UNIT} is there already (an extract from another terminal?): systemctl stop {UNIT}, or wait" >&2
  exit 5
fi
since=$(date +%s)
journalctl -u {UNIT} -f -o cat --since "@$since" &
follower=$!
status=0
systemd-run --quiet --collect --unit={UNIT} --service-type=notify -p NotifyAccess=main \\
  -p User=postgres -p Group=postgres -p KillMode=mixed -p TimeoutStartSec={timeout} -p TimeoutStopSec=600 \\
  -p RuntimeMaxSec={FETCH_WAIT + 600} -p NoNewPrivileges=true -p Nice=10 \\
  -p ExecStopPost={q(PATHS.drill_script + " --clean")} -- {program} --extract={argument} || status=$?
# The result line, once the journal has it (the follower may not have printed it yet).
for _ in $(seq 1 10); do
  journalctl -u {UNIT} -o cat --since "@$since" | grep -q '^{RESULT}' && break
  sleep 1
done
sleep 1
kill "$follower" 2>/dev/null || true
journalctl -u {UNIT} -o cat --since "@$since" | grep '^{RESULT}' | tail -n 1 || true
exit "$status"
"""


def stop_script() -> str:
    """Stops the unit (its program deletes the copy or the dump) and waits until it is gone."""
    return f"""
systemctl stop {UNIT} 2>/dev/null || true
for _ in $(seq 1 600); do
  systemctl is-active --quiet {UNIT} || exit 0
  sleep 1
done
echo "{UNIT} still running after 600 s" >&2
exit 1
"""


def result_of(lines: list[str]) -> dict[str, Any] | None:
    """The program's last result line, as JSON (the node's text: only these keys, of these types)."""
    for line in reversed(lines):
        if line.startswith(RESULT):
            try:
                value = loads(line[len(RESULT):])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def fetch(cluster: Cluster, node: str, result: dict[str, Any], out: Path) -> None:
    """The dump's bytes into `out`: written to a new temporary file beside it, its size and sha256 checked
    against the program's, then renamed; removed on any failure."""
    size, digest = result.get("bytes"), result.get("sha256")
    if not isinstance(size, int) or size <= 0 or not isinstance(digest, str) \
            or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise RemoteError(f"{node}: the extract's result names no dump to fetch: {printable(str(result)[:300])}")
    path = f"{cluster.stack.drill.path}/{DUMP}"
    command = cluster.as_postgres(f"head -c {size} -- {cluster.q(path)}")
    temporary = out.with_name(f".{out.name}.part-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as sink:
            outcome = cluster.node(node).stream(command, sink, limit=size)
        if outcome.status != 0:
            raise RemoteError(f"{node}: reading the dump failed (exit {outcome.status}): {outcome.err.strip()[-300:]}")
        received = hashlib.sha256()
        with open(temporary, "rb") as written:
            for block in iter(lambda: written.read(1 << 20), b""):
                received.update(block)
        if temporary.stat().st_size != size or received.hexdigest() != digest:
            raise RemoteError(f"{node}: the dump arrived with {temporary.stat().st_size} bytes, sha256 "
                              f"{received.hexdigest()}; the node's has {size} bytes, sha256 {digest}")
        os.link(temporary, out)  # never over a file that appeared meanwhile
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def run(cluster: Cluster, request: Request, node: str | None, say: Callable[[str], None]) -> int:
    """The whole extract; ExtractRefused before anything is restored; 130 when interrupted (the node's
    copy deleted)."""
    chosen, why = pick_node(cluster, node)
    backup, holds = reachable_backup(cluster, chosen, request.target)
    say(f"extract of {request.database} "
        f"({', '.join(f'{s}.{n}' for s, n in request.tables) or 'the whole database'}) as of "
        f"{request.target.astimezone(UTC).isoformat()} on {chosen} ({why}), from backup {backup['label']}; {holds}")
    began = time.monotonic()
    lines: list[str] = []

    def shown(line: str) -> None:
        lines.append(line)
        if not line.startswith(RESULT):
            say(f"{chosen}: {line}")

    target = cluster.node(chosen)
    try:
        started = target.run(start_script(cluster, request.encoded(backup["label"])), timeout=86400,
                             on_output=shown)
        result = result_of(lines)
        if started.status in (4, 5):
            raise RemoteError(f"{chosen}: {started.err.strip()}")
        if started.status != 0 or result is None or not result.get("ready"):
            result = result or {}
            if result.get("refused"):
                raise ExtractRefused(f"refused on {chosen}, nothing was kept: {result.get('reason')}")
            say(f"the extract failed on {chosen} (exit {started.status}): "
                f"{result.get('reason') or started.err.strip()[-500:] or 'see journalctl -u ' + UNIT}")
            return 1
        say(f"fetching the dump ({result.get('bytes')} bytes) into {request.out}")
        fetched = time.monotonic()
        fetch(cluster, chosen, result, request.out)
        fetch_seconds = time.monotonic() - fetched
    except KeyboardInterrupt:
        say(f"interrupted: stopping {UNIT} on {chosen} (it deletes the copy)")
        target.check(stop_script(), what=f"stopping {UNIT}")
        say(f"{chosen}: stopped; nothing of the extract is left there")
        return 130
    except BaseException:
        with contextlib.suppress(RemoteError):  # the unit ended already, or the node is out of reach
            target.check(stop_script(), what=f"stopping {UNIT}")
        raise
    target.check(stop_script(), what=f"stopping {UNIT}")
    phases = {**{k: v for k, v in (result.get("phases") or {}).items() if isinstance(v, int | float)},
              "fetch": round(fetch_seconds, 3)}
    say(printable(f"extracted into {request.out}: {request.out.stat().st_size} bytes in "
                  f"{time.monotonic() - began:.1f} s ("
                  + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items()) + "); the copy on "
                  f"{chosen} is deleted. Restore it under another name: README, \"A table was dropped or damaged\""))
    return 0


def command(cluster_of: Callable[[], Cluster], options: Any, say: Callable[[str], None]) -> int:
    """`pgbackup extract`'s exit code: 0 extracted, 1 failed, 2 bad arguments, 3 refused (nothing restored, or
    the copy deleted), 130 interrupted. The arguments are checked before the stack's nodes are reached."""
    try:
        request = parse_request(options.to, options.database, options.table or [], options.out)
    except ValueError as error:
        print(printable(f"pgbackup extract: {error}"), file=sys.stderr)
        return 2
    try:
        return run(cluster_of(), request, options.node, say)
    except ExtractRefused as error:
        print(printable(f"pgbackup extract: {error}"), file=sys.stderr)
        return 3
