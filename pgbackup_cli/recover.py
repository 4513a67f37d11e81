"""The whole-cluster point-in-time recovery (docs/restoring.md, "Point-in-time recovery of the cluster"), step by step
on the stack's nodes, resumable: its progress lives in a state file on the leader (RECOVER_STATE), written
after every step, so that the same command run again after an interruption carries on where it stopped.

Patroni owns the cluster and its DCS remembers how far the old history went: Patroni is stopped everywhere,
the cluster forgotten in the DCS, the leader restored and promoted by hand, Patroni takes it over, a full
backup of the new timeline is taken, then the replicas (their data directories moved aside) are rebuilt by
Patroni's pgbackrest replica method."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pgbackup_cli.cluster import Cluster, UnreadableFile
from pgbackup_cli.remote import RemoteError
from pgbackup_cli.repository import LATEST, choose_backup, holdings, parse_target

# The data directories a recovery moves aside: <pg_data><ASIDE_SUFFIX><UTC time as ASIDE_TIME writes it>;
# ASIDE_STAMP matches that time, and `--cleanup` removes only what has that name.
ASIDE_SUFFIX = ".before-pitr-"
ASIDE_TIME = "%Y%m%dT%H%M%SZ"
ASIDE_STAMP = r"[0-9]{8}T[0-9]{6}Z"

STEPS: list[tuple[str, str]] = [
    ("stop-patroni", "stop Patroni on the replicas, then on the leader"),
    ("forget-dcs", "forget the cluster in the DCS (patronictl remove)"),
    ("restore", "restore the leader, replay, promote it by hand, stop it"),
    ("leader", "start Patroni on the leader; wait until it leads"),
    ("backup", "a full backup of the new timeline into repo1"),
    ("replicas", "move each replica's data directory aside; Patroni rebuilds it from the repository"),
    ("streaming", "wait for every member streaming on the new timeline; pgbackrest check"),
]
WAIT = 3600  # the longest any one wait (a restore, a replay, a rebuild) may take, in seconds


class RecoveryRefused(RuntimeError):
    """Nothing was touched: the target, the cluster or a recovery in progress says no."""


@dataclass
class Plan:
    stack: str
    target: str
    leader: str
    replicas: list[str]
    scope: str
    backup: str
    holds: str
    pg_data: str
    aside: dict[str, str]
    old_timeline: int
    started: float = 0.0
    done: dict[str, float] | None = None
    finished: bool = False
    summary: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Plan:
        return cls(**value)

    def text(self) -> str:
        """The plan as the operator reads it before saying yes."""
        order = ", ".join([*self.replicas, self.leader])
        lines = [
            f"Point-in-time recovery of stack {self.stack} to {self.target}",
            f"  leader (restored, then leads): {self.leader}   Patroni scope: {self.scope}",
            f"  Patroni stopped in this order: {order}",
            f"  backup used: {self.backup} (repo1)",
            f"  {self.holds}",
            f"  the leader's {self.pg_data} is restored in place (pgbackrest --delta)",
            "  data directories moved aside (kept until `pgbackup recover --cleanup`):",
            *(f"    {node}: {self.pg_data} -> {path}" for node, path in self.aside.items()),
            "  steps:",
            *(f"    {i}. {title}" for i, (_, title) in enumerate(STEPS, 1)),
            "  Clients lose the cluster from step 1 until step 4; the replicas until step 7.",
        ]
        return "\n".join(lines)


def make_plan(cluster: Cluster, to: str, leader: str | None = None, now: float | None = None) -> Plan:
    """Everything decided before anything is touched: the leader, the backup, the directories moved aside.
    RecoveryRefused when the target is outside the repository or there is no leader to restore on."""
    target = parse_target(to)
    members = cluster.members(prefer=leader)
    current = Cluster.leader_of(members)
    if leader is None:
        if current is None:
            raise RecoveryRefused("Patroni reports no running leader: give --leader NODE, the node to restore on "
                                  f"(members: {describe_members(members) or 'none'})")
        leader = current
    elif current is not None and current != leader:
        raise RecoveryRefused(f"--leader {leader}: Patroni's leader is {current}; leave --leader out")
    cluster.node(leader)
    info = cluster.info(leader)
    held = holdings(info, cluster.newest_wal_time(leader, info))
    try:
        backup = choose_backup(held, target)
    except ValueError as error:
        raise RecoveryRefused(f"refused, nothing was touched: {error}") from None
    stamp = datetime.fromtimestamp(now or time.time(), tz=UTC).strftime(ASIDE_TIME)
    pg_data = cluster.stack.pg_data
    replicas = [name for name in cluster.nodes if name != leader]
    timelines = [int(m["TL"]) for m in members if str(m.get("TL", "")).isdigit()]
    return Plan(stack=cluster.stack.name, target=to, leader=leader, replicas=replicas, scope=cluster.scope(leader),
                backup=backup["label"], holds=held.describe(), pg_data=pg_data,
                aside=dict.fromkeys(replicas, f"{pg_data}{ASIDE_SUFFIX}{stamp}"),
                old_timeline=max(timelines, default=0))


def describe_members(members: list[dict[str, Any]]) -> str:
    return ", ".join(f"{m.get('Member')} {m.get('Role')} {m.get('State')} TL {m.get('TL', '?')}" for m in members)


def find_state(cluster: Cluster) -> Plan | None:
    """The recovery recorded on any node (the leader of a recovery keeps its state)."""
    found = cluster.on_each(list(cluster.nodes),
                            lambda node: cluster.read_json(node.name, cluster.recover_state, user=None))
    plans = []
    for name, value in found.items():
        if isinstance(value, UnreadableFile):  # a recovery may be recorded there: nothing is decided without it
            raise value
        if isinstance(value, dict):
            try:
                plans.append(Plan.from_json(value))
            except TypeError as error:
                raise UnreadableFile(f"{name}: {cluster.recover_state} is not a recovery's state ({error})") from None
    plans.sort(key=lambda plan: plan.started)
    return plans[-1] if plans else None


class Recovery:
    def __init__(self, cluster: Cluster, plan: Plan, say: Callable[[str], None]) -> None:
        self.cluster, self.plan, self.say = cluster, plan, say
        self.q = cluster.q
        stack = cluster.stack
        self.pg_ctl = cluster.as_postgres(f"{stack.pg_bin}/pg_ctl -D {self.q(plan.pg_data)}")

    def save(self) -> None:
        self.cluster.write_json(self.plan.leader, self.cluster.recover_state, self.plan.to_json())

    def run(self) -> dict[str, Any]:
        plan = self.plan
        if plan.done is None:
            plan.done, plan.started = {}, time.time()
            self.save()
        for number, (name, title) in enumerate(STEPS, 1):
            if name in plan.done:
                self.say(f"[{number}/{len(STEPS)}] {title}: done before ({plan.done[name]:.1f} s)")
                continue
            self.say(f"[{number}/{len(STEPS)}] {title} ...")
            began = time.monotonic()
            getattr(self, "step_" + name.replace("-", "_"))()
            plan.done[name] = round(time.monotonic() - began, 1)
            self.save()
            self.say(f"[{number}/{len(STEPS)}] done in {plan.done[name]:.1f} s "
                     f"(elapsed {time.time() - plan.started:.1f} s)")
        return self.finish()

    # -- the steps
    def step_stop_patroni(self) -> None:
        for node in [*self.plan.replicas, self.plan.leader]:
            self.cluster.node(node).check("systemctl stop patroni", what="systemctl stop patroni")
            self.say(f"      {node}: Patroni stopped")

    def step_forget_dcs(self) -> None:
        scope = self.q(self.plan.scope)
        self.cluster.node(self.plan.leader).check(
            f"printf '%s\\n' {scope} 'Yes I am aware' | " + self.cluster.patronictl(f"remove {scope}"),
            what="patronictl remove")

    def step_restore(self) -> None:
        q, plan = self.q, self.plan
        target = "" if plan.target == LATEST else f"--type=time --target={q(plan.target)} --target-action=promote "
        log = "/var/log/postgresql/pgbackup-recover.log"
        script = f"""
if systemctl is-active --quiet patroni; then echo "Patroni runs on this node" >&2; exit 1; fi
if {self.pg_ctl} status >/dev/null 2>&1; then {self.pg_ctl} -m fast -w -t 600 stop; fi
rs_mkdir {q(plan.pg_data)} postgres postgres 0700  # a link or another owner's directory there is refused
{self.cluster.pgbackrest(f"--repo=1 --delta {target}--log-level-console=warn restore")}
{self.pg_ctl} -o {q("-c listen_addresses=''")} -l {log} -w -t {WAIT} start
deadline=$((SECONDS + {WAIT}))
until [[ "$({self.cluster.psql("SELECT pg_is_in_recovery()")})" == f ]]; do
  if [[ $SECONDS -ge $deadline ]]; then echo "not promoted after {WAIT} s: see {log}" >&2; exit 1; fi
  sleep 1
done
{self.pg_ctl} -m fast -w -t 600 stop
"""
        self.cluster.node(plan.leader).check(script, timeout=3 * WAIT, what="the restore")

    def wait_members(self, ready: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = WAIT
                     ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        members: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                members = self.cluster.members(prefer=self.plan.leader)
            except RemoteError:
                members = []
            if ready(members):
                return members
            time.sleep(2)
        raise RemoteError(f"{what}: not after {timeout:.0f} s (members: {describe_members(members)})")

    def step_leader(self) -> None:
        leader = self.plan.leader
        self.cluster.node(leader).check("systemctl start patroni", what="systemctl start patroni")
        self.wait_members(lambda ms: Cluster.leader_of(ms) == leader, f"{leader} leading the cluster", 900)

    def step_backup(self) -> None:
        # The standbys are down: --no-backup-standby (pgBackRest warns that their hosts are unreachable).
        self.cluster.node(self.plan.leader).check(
            self.cluster.pgbackrest("--repo=1 --type=full --no-backup-standby --log-level-console=error backup",
                                    locked=True), timeout=6 * WAIT, what="the full backup")

    def step_replicas(self) -> None:
        q, plan = self.q, self.plan
        for node in plan.replicas:
            data, aside = q(plan.pg_data), q(plan.aside[node])
            self.cluster.node(node).check(f"""
systemctl stop patroni
if [[ -e {aside} || -L {aside} ]]; then rs_rm_tree {data}  # a rebuild this recovery started: the data is aside
elif [[ -e {data} || -L {data} ]]; then rs_rename {data} {aside}
fi
rs_mkdir {data} postgres postgres 0700
systemctl start patroni
""", what="moving the data directory aside")
            self.say(f"      {node}: {plan.pg_data} -> {plan.aside[node]}; Patroni started")

    def streaming(self, members: list[dict[str, Any]]) -> bool:
        leader = Cluster.leader_of(members)
        timelines = {str(m.get("TL")) for m in members}
        ok = [m for m in members if m.get("State") in ("running", "streaming")]
        return (leader == self.plan.leader and len(ok) == len(self.cluster.nodes) == len(members)
                and len(timelines) == 1)

    def step_streaming(self) -> None:
        self.wait_members(self.streaming, "every member streaming on the new timeline")
        self.cluster.node(self.plan.leader).check(
            "timeout -k 5 600 " + self.cluster.pgbackrest("--log-level-console=warn check"), timeout=700,
            what="pgbackrest check")

    def finish(self) -> dict[str, Any]:
        plan = self.plan
        assert plan.done is not None
        members = self.cluster.members(prefer=plan.leader)
        timeline = max(int(m["TL"]) for m in members)
        plan.summary = {
            "rtoSeconds": round(time.time() - plan.started, 1),
            "stepSeconds": plan.done,
            "timeline": timeline,
            "oldTimeline": plan.old_timeline,
            "members": [{"name": m["Member"], "role": m.get("Role"), "state": m.get("State"), "timeline": m.get("TL")}
                        for m in members],
            "check": "passed",
            "aside": plan.aside,
        }
        plan.finished = True
        self.save()
        was = f"{plan.old_timeline} -> " if plan.old_timeline else ""  # unknown when no member ran at the start
        self.say(f"Recovered stack {plan.stack} to {plan.target} in {plan.summary['rtoSeconds']:.1f} s (RTO, from "
                 f"step 1 to every member streaming); timeline {was}{timeline}; pgbackrest check passed")
        for m in members:
            self.say(f"  {m['Member']}: {m.get('Role')} {m.get('State')} timeline {m.get('TL')}")
        self.say("The old data directories stay aside until `pgbackup recover -s "
                 f"{plan.stack} --cleanup`: " + ", ".join(f"{n}:{p}" for n, p in plan.aside.items()))
        return plan.summary


def aside_script(q: Callable[[str], str], pg_data: str) -> str:
    """On a node: removes every directory a recovery moved aside (pgbackup's own name, a real directory, never
    a link; as the owner of the directory it lies in, rs_rm_tree) and prints each path it removed."""
    return f"""shopt -s nullglob
for dir in {q(pg_data + ASIDE_SUFFIX)}*; do
  if [[ "${{dir}}" =~ {ASIDE_SUFFIX.replace(".", "[.]")}{ASIDE_STAMP}$ && -d "${{dir}}" && ! -L "${{dir}}" ]]; then
    rs_rm_tree "${{dir}}"
    printf '%s\\n' "${{dir}}"
  fi
done
"""


def cleanup(cluster: Cluster, plan: Plan | None, say: Callable[[str], None]) -> None:
    """Remove, on every node, the data directories that finished recoveries moved aside (the latest recorded
    one and any earlier one's), then the recorded state. Refused while the recorded recovery has not finished:
    its replicas' old data may be all that is left of them."""
    if plan is not None and not plan.finished:
        raise RecoveryRefused(f"the recovery to {plan.target} has not finished: run it again first")
    pg_data = cluster.stack.pg_data
    script = aside_script(cluster.q, pg_data)
    removed = cluster.on_each(list(cluster.nodes), lambda node: node.check(script, what="removing the "
                                                                                          "directories moved aside"))
    failed = {name: value for name, value in removed.items() if isinstance(value, RemoteError)}
    for name, value in removed.items():
        if not isinstance(value, RemoteError):
            paths = value.splitlines()
            say(f"{name}: removed {', '.join(paths)}" if paths else f"{name}: nothing moved aside")
    if failed:
        raise RemoteError("cleanup incomplete, run it again: " + "; ".join(str(e) for e in failed.values()))
    if plan is not None:
        cluster.node(plan.leader).check(f"rs_rm_tree {cluster.q(cluster.recover_state)}",
                                        what="removing the recovery's state")
