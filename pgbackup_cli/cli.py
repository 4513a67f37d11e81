"""The `pgbackup` command (README, "The operator's command").

    pgbackup status  -s STACK [--json]
    pgbackup backup  -s STACK --type full|incr|diff [--repo N]
    pgbackup drill   -s STACK
    pgbackup recover -s STACK --to TIME|latest [--leader NODE] [--yes] [--cleanup]
    pgbackup recover -s STACK --cleanup

Exit codes: 0 all well; 1 something needs attention or failed; 2 the command cannot run as asked (bad
arguments or configuration, an unreachable cluster, a missing unit); 3 recovery refused, nothing touched;
130 interrupted (`recover` carries on when run again).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import paramiko

from components.config import ConfigError
from pgbackup_cli import operations, recover, status
from pgbackup_cli.cluster import Cluster
from pgbackup_cli.remote import RemoteError, load_key
from pgbackup_cli.repository import parse_target
from pgbackup_cli.stack import load_stack


def say(line: str) -> None:
    print(line, flush=True)


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
    rc = sub.add_parser("recover", parents=[common], help="point-in-time recovery of the whole cluster")
    rc.add_argument("--to", help="'latest' or a time with its zone, e.g. '2026-11-20 14:15:00+00'")
    rc.add_argument("--leader", help="the node to restore on when Patroni reports no leader")
    rc.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rc.add_argument("--cleanup", action="store_true",
                    help="remove, on every node, the data directories finished recoveries moved aside "
                         "(after the recovery, with --to)")
    return top


def parse(argv: Sequence[str]) -> argparse.Namespace:
    top = parser()
    options = top.parse_args(argv)
    if options.command == "recover":
        if options.to is None and not options.cleanup:
            top.error("recover: give --to TIME|latest, or --cleanup")
        if options.to is not None:
            try:
                parse_target(options.to)
            except ValueError as error:
                top.error(str(error))
    return options


def run_status(cluster: Cluster, options: argparse.Namespace) -> int:
    doc = status.collect(cluster, info_timeout=options.info_timeout)
    print(json.dumps(doc, indent=2, sort_keys=True) if options.json else status.table(doc), flush=True)
    return 0 if doc["ok"] else 1


def run_recover(cluster: Cluster, options: argparse.Namespace) -> int:
    plan = recover.find_state(cluster)
    if options.to is None:  # --cleanup alone
        recover.cleanup(cluster, plan, say)
        return 0
    if plan is not None and not plan.finished:
        if plan.target != options.to:
            raise recover.RecoveryRefused(f"a recovery to {plan.target} started on {plan.leader} and has not "
                                          f"finished: run it again with --to {plan.target!r}")
        say(f"carrying on with the recovery to {plan.target} (done: {', '.join(plan.done or {}) or 'nothing'})")
    else:
        plan = recover.make_plan(cluster, options.to, leader=options.leader)
    say(plan.text())
    if not options.yes:
        if not sys.stdin.isatty():
            raise recover.RecoveryRefused("no terminal to confirm on: add --yes")
        if input("Type yes to recover: ").strip() != "yes":
            raise recover.RecoveryRefused("not confirmed")
    recover.Recovery(cluster, plan, say).run()
    if options.cleanup:
        recover.cleanup(cluster, plan, say)
    return 0


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
            "recover": lambda: run_recover(cluster, options),
        }
        return commands[options.command]()
    except recover.RecoveryRefused as error:
        print(f"pgbackup: {error}", file=sys.stderr)
        return 3
    except (ConfigError, RemoteError) as error:
        print(f"pgbackup: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pgbackup: interrupted; `recover` carries on from its last finished step when run again",
              file=sys.stderr)
        return 130
