"""`pgbackup status`: what each node and the repository say, and what needs attention."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from components.layout import PATHS
from components.window import describe, remedies
from pgbackup_cli.cluster import Cluster
from pgbackup_cli.remote import Node, RemoteError
from pgbackup_cli.repository import newest_backups
from pgbackup_cli.untrusted import Unreadable, answers, drill_result, printable, reader_command, verify_result

# The state files of the verification and drill services (written by them as postgres, atomically).
VERIFY_STATE = PATHS.verify_state
DRILL_STATE = PATHS.drill_state

# Run on each node (as root): pgBackRest's version (as postgres), Patroni's service, then the state files as
# the one reader reads them, as postgres (pgbackup_cli/untrusted.py). One line each for the first two.
NODE_REPORT = f"""
version=$(runuser -u postgres -- env --chdir=/ pgbackrest version 2>/dev/null | head -c 200 | tr -d '\\n') || version=''
service=$(systemctl is-active patroni 2>/dev/null | head -c 100 | tr -d '\\n' || true)
printf '%s\\n%s\\n' "$version" "$service"
{reader_command([VERIFY_STATE, DRILL_STATE], "postgres")} || true
"""

ARCHIVER = ("SELECT json_build_object('lastArchivedWal', last_archived_wal, 'lastArchivedTime', "
            "extract(epoch FROM last_archived_time), 'lastFailedWal', last_failed_wal, 'lastFailedTime', "
            "extract(epoch FROM last_failed_time), 'failedCount', failed_count) FROM pg_stat_archiver")


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


def newest(results: list[Any]) -> dict[str, Any] | None:
    """The newest of the nodes' validated results, by their parsed times."""
    found = [r for r in results if isinstance(r, dict)]
    return max(found, key=lambda r: float(r["epoch"])) if found else None


def parse_report(name: str, out: str, now: float) -> dict[str, Any]:
    """A node's answer to NODE_REPORT: {pgbackrest, patroniService, verify, drill}, each state a validated
    result (untrusted.verify_result, drill_result), None (no file) or Unreadable. ValueError when the answer
    is not one at all."""
    lines = out.split("\n", 2)
    if len(lines) != 3:
        raise ValueError("the node report is incomplete")
    version, service, states = lines
    texts = answers(states, [VERIFY_STATE, DRILL_STATE])
    report: dict[str, Any] = {"pgbackrest": version.split()[-1] if version.strip() else None,
                              "patroniService": service}
    for kind, path, validate in (("verify", VERIFY_STATE, verify_result), ("drill", DRILL_STATE, drill_result)):
        text = texts[path]
        try:
            report[kind] = text if text is None or isinstance(text, Unreadable) else validate(text, name, now)
        except ValueError as error:
            report[kind] = Unreadable(str(error))
    return report


STANDBY_ROLES = ("Replica", "Sync Standby", "Quorum Standby")


def stranded(members: list[dict[str, Any]]) -> list[str]:
    """A problem line for each member `patronictl list` shows as a running replica that does not follow the
    leader: on a lower timeline, or in archive recovery (not streaming). The backups skip it on their own
    (pgbackup-backup); only a rebuild brings it back. Right after a failover a replica is there for seconds."""
    leaders = [m for m in members if m.get("Role") == "Leader" and m.get("State") == "running"]
    timeline = leaders[0].get("TL") if len(leaders) == 1 else None
    if type(timeline) is not int:
        return []
    found = []
    for m in members:
        own, state = m.get("TL"), m.get("State")
        if m.get("Role") not in STANDBY_ROLES or state not in ("running", "streaming", "in archive recovery"):
            continue
        if type(own) is not int or own < timeline:
            why = f"on timeline {own}, the leader {leaders[0]['Member']} on {timeline}"
        elif state == "in archive recovery":
            why = "in archive recovery: not streaming from the leader (if it was just rebuilt, let it catch up)"
        else:
            continue
        found.append(f"{m['Member']}: stranded ({why}); backups skip it; rebuild it: patronictl reinit "
                     f"{m.get('Cluster') or '<scope>'} {m['Member']}")
    return found


def collect(cluster: Cluster, info_timeout: int = 30, now: float | None = None) -> dict[str, Any]:
    """The status document (docs/operating.md, "The operator's command")."""
    now = now or time.time()
    stack = cluster.stack
    problems: list[str] = []

    def report(node: Node) -> dict[str, Any]:
        out = node.check(NODE_REPORT, what="the node report")
        try:
            return parse_report(node.name, out, now)
        except ValueError as error:  # the node's error, not the command's
            raise RemoteError(f"{node.name}: {error}") from None

    reports = cluster.on_each(list(cluster.nodes), report)
    try:
        members = {str(m["Member"]): m for m in cluster.members()}
    except RemoteError as error:
        members = {}
        problems.append(str(error))
    leader = Cluster.leader_of(list(members.values()))
    problems += stranded(list(members.values()))
    nodes = []
    for name, rep in reports.items():
        member = members.get(name, {})
        entry: dict[str, Any] = {"name": name, "host": cluster.nodes[name].config.host,
                                 "reachable": not isinstance(rep, RemoteError),
                                 "role": {"Leader": "leader", "Replica": "replica", "Sync Standby": "replica",
                                          "Standby Leader": "standby leader"}.get(str(member.get("Role"))),
                                 "state": member.get("State"), "timeline": member.get("TL"),
                                 "lagMB": member.get("Lag in MB"),
                                 "pgbackrest": None if isinstance(rep, RemoteError) else rep["pgbackrest"]}
        if isinstance(rep, RemoteError):
            entry["error"] = str(rep)
            problems.append(str(rep))
        if not member:
            problems.append(f"{name}: not a member of the Patroni cluster now")
        elif member.get("State") not in ("running", "streaming"):
            problems.append(f"{name}: Patroni says {member.get('State')}")
        nodes.append(entry)
    versions = {n["pgbackrest"] for n in nodes if n["pgbackrest"]}
    if len(versions) > 1:
        problems.append("pgBackRest versions differ: " + ", ".join(f"{n['name']} {n['pgbackrest']}" for n in nodes))
    if leader is None:
        problems.append("no running Patroni leader")

    cluster_doc: dict[str, Any] = {"leader": leader, "stanza": None, "newestBackup": None, "walArchive": None}
    source = leader or next((n["name"] for n in nodes if n["reachable"]), None)
    if source is not None:
        try:
            info = cluster.info(source, timeout=info_timeout)
            cluster_doc["stanza"] = {"name": info.get("name"), "code": info["status"]["code"],
                                     "message": info["status"]["message"]}
            cluster_doc["newestBackup"] = newest_backups(info)
            archive = [a for a in info.get("archive") or [] if a.get("max")]
            wal: dict[str, Any] = {"repoMax": archive[-1]["max"] if archive else None}
            cluster_doc["walArchive"] = wal
        except (RemoteError, ValueError, KeyError) as error:
            cluster_doc["stanza"] = {"name": stack.cluster.stanza, "code": None,
                                     "message": f"pgbackrest info failed: {error}"}
        stanza = cluster_doc["stanza"]
        if stanza["code"] != 0:
            problems.append(f"stanza {stack.cluster.stanza}: {stanza['message']}")
        for repo, backup in (cluster_doc["newestBackup"] or {}).items():
            if backup is None:
                problems.append(f"repo{repo} holds no backup")
            elif repo == "1":
                stop = datetime.fromisoformat(backup["stopTime"].replace("Z", "+00:00")).timestamp()
                if now - stop > stack.schedule.max_backup_age_hours * 3600:
                    problems.append(f"repo1's newest backup {backup['label']} is older than "
                                    f"{stack.schedule.max_backup_age_hours} h")
    if leader is not None:
        try:
            archiver = json.loads(cluster.sql(leader, ARCHIVER))
            wal = cluster_doc["walArchive"] or {}
            last_ok, last_failed = archiver["lastArchivedTime"], archiver["lastFailedTime"]
            wal.update({"lastArchived": archiver["lastArchivedWal"], "lastArchivedTime": iso(last_ok),
                        "ageSeconds": None if last_ok is None else round(now - last_ok, 1),
                        "lastFailed": archiver["lastFailedWal"], "lastFailedTime": iso(last_failed),
                        "failing": last_failed is not None and (last_ok is None or last_failed > last_ok)})
            cluster_doc["walArchive"] = wal
            if wal["failing"]:
                problems.append(f"WAL archiving is failing on {leader} (last failure {wal['lastFailedTime']}, "
                                f"last success {wal['lastArchivedTime']})")
        except (RemoteError, ValueError, KeyError) as error:
            problems.append(f"{leader}: pg_stat_archiver unreadable: {error}")
    ok_reports = {name: r for name, r in reports.items() if isinstance(r, dict)}
    for kind, path in (("verify", VERIFY_STATE), ("drill", DRILL_STATE)):
        for name, r in ok_reports.items():
            if isinstance(r[kind], Unreadable):
                problems.append(f"{name}: {path} {r[kind]}")
        last = newest([r[kind] for r in ok_reports.values()])
        if last is not None:
            last = {k: v for k, v in last.items() if k != "epoch"}
            if not last["ok"]:
                why = last.get("reason") or ", ".join(f"{k} {v}" for k, v in last.get("errors", {}).items())
                problems.append(f"the last {kind} ({last['time']} on {last['node']}) failed: {why}")
        cluster_doc["last" + kind.capitalize()] = last
    cluster_doc["recoveryWindow"] = recovery_window(cluster_doc.get("lastVerify"), stack.cluster.stanza, problems)
    return {"stack": stack.name, "time": iso(now), "nodes": nodes, "cluster": cluster_doc,
            "problems": problems, "ok": not problems}


def recovery_window(last: dict[str, Any] | None, stanza: str, problems: list[str]) -> dict[str, Any] | None:
    """The newest verification's recoverable window ({time, node, repos}); a repository whose window misses
    some of what retention keeps, and each damaged set (with its remedy), is a problem."""
    windows = last.pop("window", None) if last is not None else None
    if last is None or not windows:
        return None
    for index, window in windows.items():
        if window is not None and window["missingSeconds"]:
            problems.append(f"repo{index} cannot recover to {window['missingSeconds']} s of what its retention "
                            f"keeps (the verification at {last['time']}: a WAL gap, a damaged set or an expired "
                            "chain)")
        problems.extend(remedies(stanza, index, window))
    return {"time": last["time"], "node": last["node"], "repos": windows}


def cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)[:64]


def window_lines(found: dict[str, Any] | None) -> list[str]:
    """Each repository's recoverable window, as the newest verification computed it."""
    if found is None:
        return ["recoverable window: not computed yet (pgbackup-verify, drill.verifySchedule)"]
    lines = []
    for index, window in found["repos"].items():
        lines += describe(index, window)
    return [f"recoverable window (the verification at {found['time']} on {found['node']}):"] + \
        [f"  {line}" for line in lines]


def table(doc: dict[str, Any]) -> str:
    """The status for people."""
    lines = [f"stack {doc['stack']} at {doc['time']}", "",
             f"{'node':<16} {'host':<24} {'role':<10} {'state':<12} {'TL':>4} {'lag MB':>7}  pgBackRest"]
    for n in doc["nodes"]:
        # Patroni's fields come from the DCS, which Patroni writes as postgres: any JSON value, shown as text.
        role, timeline, lag, version = (cell(n[k]) for k in ("role", "timeline", "lagMB", "pgbackrest"))
        state = cell(n["state"]) if n["reachable"] else "unreachable"
        lines.append(f"{n['name']:<16} {n['host']:<24} {role:<10} {state:<12} {timeline:>4} {lag:>7}  {version}")
    c = doc["cluster"]
    stanza = c["stanza"] or {}
    lines += ["", f"leader: {c['leader'] or 'none'}",
              f"stanza {stanza.get('name', '-')}: {stanza.get('message', 'unknown')}"]
    for repo, b in (c["newestBackup"] or {}).items():
        lines.append(f"newest backup in repo{repo}: " + (f"{b['label']} ({b['type']}, ended {b['stopTime']})"
                                                        if b else "none"))
    wal = c["walArchive"] or {}
    lines.append(f"WAL archive: {wal.get('lastArchived') or wal.get('repoMax') or 'unknown'}, archived "
                 f"{wal.get('ageSeconds', '?')} s ago" + (" -- FAILING" if wal.get("failing") else ""))
    for kind in ("Verify", "Drill"):
        last = c.get("last" + kind)
        lines.append(f"last {kind.lower()}: " + ("none recorded" if last is None else
                                                 f"{'ok' if last.get('ok') else 'FAILED'} at {last.get('time')} "
                                                 f"on {last.get('node')}"
                                                 + (f", RTO {last['rtoSeconds']:.0f} s"
                                                    if isinstance(last.get("rtoSeconds"), float) else "")))
    lines += window_lines(c.get("recoveryWindow"))
    lines += ["", "needs attention:" if doc["problems"] else "all well"]
    lines += [f"  - {p}" for p in doc["problems"]]
    return printable("\n".join(lines))
