"""The `pgbackup` command (docs/operating.md, "The operator's command").

    pgbackup status  -s STACK [--json]
    pgbackup backup  -s STACK --type full|incr|diff [--repo N]
    pgbackup drill   -s STACK
    pgbackup extract -s STACK --to TIME --database DB [--table SCHEMA.NAME ...] --out FILE [--node NODE]
    pgbackup recover -s STACK --to TIME|latest [--leader NODE] [--yes]
    pgbackup recover -s STACK --cleanup [--yes-delete-old-data]
    pgbackup recover -s STACK --abort
    pgbackup repository undelete -s STACK --before TIME [--repo N] [--dry-run]

Exit codes: 0 all well; 1 something needs attention or failed; 2 the command cannot run as asked (bad
arguments or configuration, an unreachable cluster, a missing unit); 3 recovery or undelete refused, nothing
touched (an extract refused, nothing left on the node); 130 interrupted (`recover` stops its step's unit on the
node, and carries on when run again; `extract` stops its unit, which removes the copy).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import paramiko

from components.config import ConfigError
from pgbackup_cli import extract, operations, recover, status, undelete
from pgbackup_cli.cluster import Cluster
from pgbackup_cli.remote import RemoteError, load_key
from pgbackup_cli.repository import parse_target
from pgbackup_cli.stack import load_stack
from pgbackup_cli.untrusted import printable


def say(line: str) -> None:
    """Every line the command prints: text from the nodes in it shows its control characters escaped."""
    print(printable(line), flush=True)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pgbackup", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-s", "--stack", required=True, help="the stack: reads Pulumi.<stack>.yaml")
    common.add_argument("-C", "--cwd", type=Path, default=Path(), help="the directory of Pulumi.<stack>.yaml")
    common.add_argument("--identity", type=Path, help="SSH private key file (default: the SSH agent's keys)")
    sub = top.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", parents=[common], help="nodes, stanza, backups, WAL archive, drills")
    st.add_argument("--json", action="store_true", help="one JSON document for scripts")
    st.add_argument("--info-timeout", type=int, default=30, help="seconds pgbackrest info may take (default 30)")
    bk = sub.add_parser("backup", parents=[common], help="a backup on the current leader now, its log followed")
    bk.add_argument("--type", required=True, choices=["full", "incr", "diff"])
    bk.add_argument("--repo", type=int, default=1, choices=range(1, 257), metavar="N", help="repository (default 1)")
    sub.add_parser("drill", parents=[common], help="the restore drill now (pgbackup-drill.service)")
    ex = sub.add_parser("extract", parents=[common],
                        help="tables (or a database) as they were at a time, into a pg_dump file, cluster untouched")
    ex.add_argument("--to", required=True, help="a time with its zone, e.g. '2026-11-20 14:15:00+00'")
    ex.add_argument("--database", required=True, help="the database the tables are in")
    ex.add_argument("--table", action="append", metavar="SCHEMA.NAME",
                    help="a table to dump (again for more); none: the whole database")
    ex.add_argument("--out", required=True, type=Path, help="the pg_dump -Fc file to write (a new file)")
    ex.add_argument("--node", help="the node to restore on (default: the restore drill's, a replica)")
    rc = sub.add_parser("recover", parents=[common], help="point-in-time recovery of the whole cluster")
    rc.add_argument("--to", help="'latest' or a time with its zone, e.g. '2026-11-20 14:15:00+00'")
    rc.add_argument("--leader", help="the node to restore on when Patroni reports no leader")
    rc.add_argument("--yes", action="store_true", help="do not ask for confirmation of the recovery")
    rc.add_argument("--cleanup", action="store_true",
                    help="a run of its own, after a finished recovery (not with --to): delete for good, on every "
                         "node, the data directories finished recoveries moved aside; asks for the stack's name")
    rc.add_argument("--abort", action="store_true",
                    help="a run of its own: put an unfinished recovery back to a running cluster on its old data "
                         "where that still exists, or say what cannot be undone and what to run instead")
    rc.add_argument("--yes-delete-old-data", action="store_true",
                    help="with --cleanup: do not ask for the stack's name (--yes does not confirm a cleanup)")
    repository = sub.add_parser("repository", help="the repository itself, with the storage administrator's key")
    actions = repository.add_subparsers(dest="action", required=True)
    ud = actions.add_parser(
        "undelete", parents=[common],
        help="remove the delete markers written after --before under the repository's prefix (the administrator's "
             "key from the environment), then check and a full backup on the leader")
    ud.add_argument("--before", required=True,
                    help="a time before the deletion, with its zone, e.g. '2026-11-20 14:00:00+00': the markers "
                         "written after it are removed")
    ud.add_argument("--repo", type=int, default=1, choices=(1, 2), help="repository (default 1)")
    ud.add_argument("--dry-run", action="store_true", help="list the markers it would remove; touch nothing")
    return top


def parse(argv: Sequence[str]) -> argparse.Namespace:
    top = parser()
    options = top.parse_args(argv)
    if options.command == "recover":
        if options.to is None and not options.cleanup and not options.abort:
            top.error("recover: give --to TIME|latest, --cleanup or --abort")
        if options.abort and (options.to is not None or options.cleanup or options.yes_delete_old_data):
            top.error("recover: --abort is a run of its own (not with --to, --cleanup or --yes-delete-old-data)")
        if options.to is not None and options.cleanup:
            top.error("recover: --cleanup deletes the old data for good and is a run of its own: recover with --to "
                      "first, check the cluster, then `recover --cleanup`")
        if options.cleanup and options.yes:
            top.error("recover: --yes confirms a recovery, not a cleanup: --cleanup asks for the stack's name "
                      "(--yes-delete-old-data without a terminal)")
        if options.yes_delete_old_data and not options.cleanup:
            top.error("recover: --yes-delete-old-data goes with --cleanup only")
        if options.to is not None:
            try:
                parse_target(options.to)
            except ValueError as error:
                top.error(str(error))
    return options


def run_status(cluster: Cluster, options: argparse.Namespace) -> int:
    doc = status.collect(cluster, info_timeout=options.info_timeout)
    # json.dumps escapes every control and non-ASCII character (ensure_ascii); the table is printable()'s.
    print(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True) if options.json else status.table(doc),
          flush=True)
    return 0 if doc["ok"] else 1


def run_recover(cluster: Cluster, options: argparse.Namespace) -> int:
    plan = recover.find_state(cluster)
    if options.abort:
        return recover.abort(cluster, plan, say)
    if options.to is None:  # --cleanup, a run of its own
        confirm_cleanup(cluster, plan, options.yes_delete_old_data)
        recover.cleanup(cluster, plan, say)
        return 0
    if plan is not None and not plan.finished and plan.aborted and plan.target != options.to:
        say(f"the aborted recovery to {plan.target} is replaced by one to {options.to}")
        plan = recover.make_plan(cluster, options.to, leader=options.leader or plan.leader, say=say, after=plan)
    elif plan is not None and not plan.finished:
        if plan.target != options.to:
            raise recover.RecoveryRefused(f"a recovery to {plan.target} started on {plan.leader} and has not "
                                          f"finished: run it again with --to {plan.target!r}, or "
                                          "`pgbackup recover --abort` first")
        say(f"carrying on with the recovery to {plan.target} (done: {', '.join(plan.done or {}) or 'nothing'})")
    else:
        plan = recover.make_plan(cluster, options.to, leader=options.leader, say=say)
    say(plan.text())
    if not options.yes:
        if not sys.stdin.isatty():
            raise recover.RecoveryRefused("no terminal to confirm on: add --yes")
        if input("Type yes to recover: ").strip() != "yes":
            raise recover.RecoveryRefused("not confirmed")
    recover.Recovery(cluster, plan, say).run()
    return 0


def confirm_cleanup(cluster: Cluster, plan: recover.Plan | None, confirmed: bool) -> None:
    """What `--cleanup` deletes, and the operator's typed stack name (or --yes-delete-old-data) before it does.
    RecoveryRefused, nothing touched, otherwise."""
    stack = cluster.stack.name
    if plan is not None and not plan.finished:
        raise recover.RecoveryRefused(f"the recovery to {plan.target} has not finished: run it again first")
    say(f"Deleting for good, on {', '.join(cluster.nodes)}, every data directory a finished recovery moved aside "
        f"({cluster.stack.pg_data}{recover.ASIDE_SUFFIX}<UTC time>)"
        + (f"; the last recovery's: {', '.join(f'{n}:{p}' for n, p in plan.aside.items())}" if plan else ""))
    if confirmed:
        return
    if not sys.stdin.isatty():
        raise recover.RecoveryRefused("no terminal to confirm the cleanup on: add --yes-delete-old-data")
    if input(f"Type the stack's name ({stack}) to delete them: ").strip() != stack:
        raise recover.RecoveryRefused("cleanup not confirmed: nothing deleted")


def main(argv: Sequence[str] | None = None) -> int:
    # Ctrl-C interrupts, and SIGTERM likewise, even when started with SIGINT ignored (a background job of a
    # non-interactive shell inherits SIG_IGN, and Python then installs no handler): `recover` records each
    # finished step and carries on from there when run again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    options = parse(sys.argv[1:] if argv is None else argv)
    try:
        stack = load_stack(options.stack, options.cwd)
        key: paramiko.PKey | None = load_key(options.identity) if options.identity else None
        cluster = Cluster(stack, key)
        commands = {
            "status": lambda: run_status(cluster, options),
            "backup": lambda: operations.backup(cluster, options.type, options.repo, say),
            "drill": lambda: operations.drill(cluster, say),
            "extract": lambda: extract.command(lambda: cluster, options, say),
            "recover": lambda: run_recover(cluster, options),
            "repository": lambda: undelete.run(stack, options.repo, options.before, options.dry_run, say,
                                               lambda: cluster, os.environ),
        }
        return commands[options.command]()
    except (recover.RecoveryRefused, undelete.UndeleteRefused) as error:
        print(printable(f"pgbackup: {error}"), file=sys.stderr)
        return 3
    except (ConfigError, RemoteError) as error:  # a RemoteError quotes the node's output
        print(printable(f"pgbackup: {error}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pgbackup: interrupted; `recover` carries on from its last finished step when run again (or "
              "`pgbackup recover --abort`)",
              file=sys.stderr)
        return 130
