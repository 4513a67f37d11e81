"""The whole-cluster point-in-time recovery (docs/restoring.md, "Point-in-time recovery of the cluster"), step by step
on the stack's nodes, resumable: its progress lives in a state file on the leader (RECOVER_STATE), written
after every step, so that the same command run again after an interruption carries on where it stopped.

Patroni owns the cluster and its DCS remembers how far the old history went: Patroni is stopped everywhere,
the cluster forgotten in the DCS, the leader restored and promoted by hand while each replica (its data
directory moved aside) is restored as a standby from the same backup, all at once; Patroni takes the leader
over, then the replicas, which follow the new timeline; a full backup of the new timeline ends it, after the
cluster is whole (the RTO does not wait for it).

Interruptible anywhere: the long work on a node (the restores, replay and promotion; the full backup) runs as a
transient systemd unit the node owns (pgbackup-recover-<step>), its script written root-only beside the state;
Ctrl-C stops it, a run again waits for one still active, and every step is safe to repeat after it half-ran
(a restore repeated after its promotion follows the old timeline). The target is read by the leader's own
PostgreSQL and held against what the repository can reach before anything stops. `--abort` puts an
unfinished recovery back where the old data still exists, or says what cannot be undone."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pgbackup_cli.cluster import Cluster, UnreadableFile
from pgbackup_cli.remote import RemoteError, script_text
from pgbackup_cli.repository import LATEST, TARGET_FORM, backups, parse_target

# The data directories a recovery moves aside: <pg_data><ASIDE_SUFFIX><UTC time as ASIDE_TIME writes it>;
# ASIDE_STAMP matches that time, and `--cleanup` removes only what has that name.
ASIDE_SUFFIX = ".before-pitr-"
ASIDE_TIME = "%Y%m%dT%H%M%SZ"
ASIDE_STAMP = r"[0-9]{8}T[0-9]{6}Z"

STEPS: list[tuple[str, str]] = [
    ("stop-patroni", "stop Patroni on the replicas, then on the leader"),
    ("forget-dcs", "forget the cluster in the DCS (patronictl remove)"),
    ("restore", "restore the leader, replay, promote it by hand, stop it; the replicas as standbys at once"),
    ("leader", "start Patroni on the leader; wait until it leads"),
    ("replicas", "start Patroni on the replicas: they follow the new timeline"),
    ("streaming", "wait for every member streaming on the new timeline; pgbackrest check"),
    ("backup", "a full backup of the new timeline into repo1"),
]
RTO_STEP = "streaming"  # the RTO ends with this step: the cluster whole again (the backup after it is not waited for)
# The full backups a recovery (step 7) and an abort take expire nothing: another try may need the backups
# retention would drop (the target's); the next scheduled backup applies retention as configured.
KEEP_EVERYTHING = "--repo1-retention-full=9999999 --repo1-retention-archive=9999999"
WAIT = 3600  # the longest any one wait (a restore, a replay, a rebuild) may take, in seconds
UNIT = "pgbackup-recover-{step}"  # the transient unit a long step runs as on its node (systemd-run)
RECOVER_LOG = "/var/log/postgresql/pgbackup-recover.log"  # the restored server's log (pg_ctl -l)
POLL = 10  # seconds one SSH call watches a unit before the command looks again (and can be interrupted)
# The FATAL lines a server in recovery logs for a client connecting too early (our own psql polls): not the
# server failing.
CLIENT_FATAL = ("the database system is (starting up|not yet accepting connections|shutting down|in recovery mode)"
                "|terminating connection|password authentication|no pg_hba.conf entry|role .* does not exist"
                "|database .* does not exist")


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
    target_utc: str = ""  # the target as the leader's PostgreSQL read it (UTC), given to pgBackRest
    current: str = ""  # the step begun last (recorded before it touches anything)
    aborted: bool = False  # `--abort` ran and could not undo: another target may be chosen
    rto: float = 0.0  # seconds from step 1 to every member streaming (RTO_STEP done)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Plan:
        return cls(**value)

    def text(self) -> str:
        """The plan as the operator reads it before saying yes."""
        order = ", ".join([*self.replicas, self.leader])
        lines = [
            f"Point-in-time recovery of stack {self.stack} to {self.target}"
            + (f" (PostgreSQL reads {self.target_utc})" if self.target_utc and self.target_utc != self.target else ""),
            f"  leader (restored, then leads): {self.leader}   Patroni scope: {self.scope}",
            f"  Patroni stopped in this order: {order}",
            f"  backup used: {self.backup} (repo1)",
            f"  {self.holds}",
            f"  the leader's {self.pg_data} is restored in place (pgbackrest --delta)",
            "  data directories moved aside (kept until `pgbackup recover --cleanup`):",
            *(f"    {node}: {self.pg_data} -> {path}" for node, path in self.aside.items()),
            "  steps:",
            *(f"    {i}. {title}" for i, (_, title) in enumerate(STEPS, 1)),
            "  Clients lose the cluster from step 1 until step 4; the replicas until step 6.",
        ]
        return "\n".join(lines)


def read_target(cluster: Cluster, leader: str, to: str, say: Callable[[str], None]) -> tuple[datetime | None, str]:
    """The target as the leader's own PostgreSQL reads it: (the moment, its UTC text); (None, 'latest') for
    latest. PostgreSQL is the judge (Python's parse_target is a first filter only): RecoveryRefused with its
    error when it refuses the text. The text goes to psql as a variable (:'target', quoted by psql), never into
    the SQL. When no PostgreSQL answers on the leader (a cluster already down), Python's reading stands, said."""
    moment = parse_target(to)  # ValueError: the caller's argument check already refused it
    if moment is None:
        return None, LATEST
    stack = cluster.stack.cluster
    sql = ("SET TimeZone = 'UTC';\n"
           "SELECT extract(epoch FROM :'target'::timestamptz)::numeric, :'target'::timestamptz;\n")
    psql = cluster.as_postgres(f"psql -XAtq -v ON_ERROR_STOP=1 -h {cluster.q(stack.pg_socket_path)} "
                               f"-p {stack.pg_port} -d postgres -F ' ' -v target={cluster.q(to)} -f -")
    result = cluster.node(leader).run(f"{psql} 2>&1", stdin=sql, timeout=60)
    lines = [line for line in result.out.splitlines() if line.strip()]
    if result.status == 0 and lines:
        epoch, _, text = lines[-1].partition(" ")
        return datetime.fromtimestamp(float(epoch), tz=UTC), text
    said = " ".join(lines)[-400:]
    if "timestamp" in said or "time zone" in said or "date/time" in said:
        raise RecoveryRefused(f"refused, nothing was touched: --to {to!r}: {leader}'s PostgreSQL does not read it "
                              f"as a time: {said}")
    if not TARGET_FORM.fullmatch(to.strip()):
        raise RecoveryRefused(f"refused, nothing was touched: --to {to!r}: {leader}'s PostgreSQL did not answer "
                              f"({said or f'exit {result.status}'}) and, without it, only a calendar date, a time "
                              "and a zone such as '2026-11-20 14:15:00+00' are read")
    say(f"warning: {leader}'s PostgreSQL did not answer ({said or f'exit {result.status}'}): the target is read as "
        f"Python reads it, {moment.astimezone(UTC).isoformat(' ')}")
    return moment, moment.astimezone(UTC).isoformat(" ")


def reachable(cluster: Cluster, leader: str, target: datetime | None) -> tuple[str, str]:
    """Cluster.reachable, refused as a recovery: (the backup's label, what the repository holds), or
    RecoveryRefused naming the reachable range."""
    try:
        backup, held = cluster.reachable(leader, target)
    except ValueError as error:
        raise RecoveryRefused(f"refused, nothing was touched: {error}") from None
    return backup["label"], held


def make_plan(cluster: Cluster, to: str, leader: str | None = None, now: float | None = None,
              say: Callable[[str], None] = print, after: Plan | None = None) -> Plan:
    """Everything decided before anything is touched: the leader, the target as PostgreSQL reads it, the
    backup, the directories moved aside. RecoveryRefused when PostgreSQL refuses the target, the target is
    outside the repository or there is no leader to restore on. `after`: an aborted recovery this one replaces
    (its old timeline and its finished first steps carry over)."""
    parse_target(to)
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
    target, target_utc = read_target(cluster, leader, to, say)
    backup, holds = reachable(cluster, leader, target)
    stamp = datetime.fromtimestamp(now or time.time(), tz=UTC).strftime(ASIDE_TIME)
    pg_data = cluster.stack.pg_data
    replicas = [name for name in cluster.nodes if name != leader]
    timelines = [int(m["TL"]) for m in members if str(m.get("TL", "")).isdigit()]
    plan = Plan(stack=cluster.stack.name, target=to, leader=leader, replicas=replicas, scope=cluster.scope(leader),
                backup=backup, holds=holds, pg_data=pg_data,
                aside=dict.fromkeys(replicas, f"{pg_data}{ASIDE_SUFFIX}{stamp}"),
                old_timeline=max(timelines, default=0), target_utc=target_utc)
    if after is not None:  # the aborted one's history is the old one; its replicas' old data keeps its name
        plan.old_timeline = after.old_timeline or plan.old_timeline
        plan.aside = {node: after.aside.get(node, path) for node, path in plan.aside.items()}
        if after.current == "restore":  # Patroni still stopped everywhere, the DCS still without the cluster
            plan.done = {name: took for name, took in (after.done or {}).items()
                         if name in ("stop-patroni", "forget-dcs")}
            plan.started = time.time()
    return plan


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
        self.log = RECOVER_LOG

    def save(self) -> None:
        self.cluster.write_json(self.plan.leader, self.cluster.recover_state, self.plan.to_json())

    def run(self) -> dict[str, Any]:
        plan = self.plan
        if plan.done is None:
            plan.done, plan.started = {}, time.time()
            self.save()
        plan.aborted = False
        for number, (name, title) in enumerate(STEPS, 1):
            if name in plan.done:
                self.say(f"[{number}/{len(STEPS)}] {title}: done before ({plan.done[name]:.1f} s)")
                continue
            self.say(f"[{number}/{len(STEPS)}] {title} ...")
            plan.current = name
            self.save()
            began = time.monotonic()
            getattr(self, "step_" + name.replace("-", "_"))()
            plan.done[name] = round(time.monotonic() - began, 1)
            self.save()
            if name == RTO_STEP:
                plan.rto = round(time.time() - plan.started, 1)
                self.save()
            self.say(f"[{number}/{len(STEPS)}] done in {plan.done[name]:.1f} s "
                     f"(elapsed {time.time() - plan.started:.1f} s)")
        return self.finish()

    # -- the long work, as a transient unit the node owns
    def unit_paths(self, step: str) -> tuple[str, str, str]:
        """The unit's name, its script and the file its exit status goes to (root's, beside the state)."""
        directory = self.cluster.recover_state.rsplit("/", 1)[0]
        return UNIT.format(step=step), f"{directory}/recover-{step}.sh", f"{directory}/recover-{step}.status"

    def unit_script(self, step: str, script: str) -> str:
        """What the unit runs: `script` (strict mode, the root-safe helper), its exit status recorded at the end."""
        _, _, status = self.unit_paths(step)
        return script_text(f"""record_status() {{
  local code=$?
  printf '%s\\n' "$code" | rs_write {self.q(status)} 0600 root root || true
  exit "$code"
}}
trap record_status EXIT
{script}""")

    def start_unit(self, node: str, step: str, script: str) -> str:
        """On `node`: the step's unit started with `script`, or, when a unit of an earlier run of this step is
        still active there, that one left running. Returns 'started' or 'running'."""
        q = self.q
        unit, path, status = self.unit_paths(step)
        directory = path.rsplit("/", 1)[0]
        out = self.cluster.node(node).check(f"""
if systemctl is-active --quiet {q(unit)}.service; then echo running; exit 0; fi
rs_mkdir {q(directory)} root root 0700
rs_rm_tree {q(status)}
rs_write {q(path)} 0700 root root
systemctl reset-failed {q(unit)}.service >/dev/null 2>&1 || true
systemd-run --quiet --unit={q(unit)} --collect --property=Type=exec --property=TimeoutStopSec=300 \
  --property=KillMode=control-group -- /bin/bash {q(path)}
echo started
""", stdin=self.unit_script(step, script), what=f"starting {unit}")
        return out.strip().splitlines()[-1] if out.strip() else "started"

    def stop_unit(self, node: str, step: str) -> None:
        unit = UNIT.format(step=step)
        try:
            # A unit not (yet, or any more) loaded is not an error: nothing of it runs.
            self.cluster.node(node).check(f"systemctl stop {self.q(unit)}.service 2>/dev/null || true\n"
                                          f"! systemctl is-active --quiet {self.q(unit)}.service", timeout=400,
                                          what=f"systemctl stop {unit}")
            self.say(f"pgbackup: stopped {unit}.service on {node} (the step runs again, from its start, when "
                     "`pgbackup recover` is run again)")
        except RemoteError as error:
            self.say(f"pgbackup: could not stop {unit}.service on {node}: {error}; stop it there: "
                     f"systemctl stop {unit}.service")

    def in_unit(self, node: str, step: str, script: str, timeout: float) -> None:
        """`script` as the step's transient unit on `node` (in_units, for one node)."""
        self.in_units(step, {node: script}, timeout)

    def in_units(self, step: str, scripts: dict[str, str], timeout: float) -> None:
        """Each node's script as the step's transient unit on that node, all at once, watched until each ends;
        the first failure stops the others and is quoted. Ctrl-C stops them all (and says so); a unit an
        earlier run left active is waited for (and said)."""
        q = self.q
        unit, _, status = self.unit_paths(step)
        deadline = time.monotonic() + timeout
        poll = max(2, POLL // len(scripts))
        try:
            for node, script in scripts.items():
                if self.start_unit(node, step, script) == "running":
                    self.say(f"      {node}: {unit}.service from an earlier run is still active: waiting for it to "
                             f"end (Ctrl-C stops it; or on {node}: systemctl stop {unit}.service)")
            pending = list(scripts)
            while pending:
                for node in list(pending):
                    state = self.cluster.node(node).check(f"""
for _ in $(seq {poll}); do systemctl is-active --quiet {q(unit)}.service || break; sleep 1; done
systemctl is-active {q(unit)}.service || true
""", timeout=poll + 60, what=f"watching {unit}").strip()
                    if state in ("active", "activating", "deactivating", "reloading"):
                        continue
                    pending.remove(node)
                    failure = self.unit_failure(node, unit, status)
                    if failure:
                        for other in pending:
                            self.stop_unit(other, step)
                        raise RemoteError(failure)
                if pending and time.monotonic() > deadline:
                    raise RemoteError(f"{', '.join(pending)}: {unit}.service still runs after {timeout:.0f} s: see "
                                      f"journalctl -u {unit}")
        except KeyboardInterrupt:
            for node in scripts:
                self.stop_unit(node, step)
            raise

    def unit_failure(self, node: str, unit: str, status: str) -> str:
        """'' when the unit recorded exit 0; else what failed, with the end of its journal."""
        code = self.cluster.read_text(node, status, user=None)
        if isinstance(code, str) and code.strip() == "0":
            return ""
        tail = self.cluster.node(node).run(
            f"journalctl --sync 2>/dev/null || true\n"  # the unit's last lines are in the journal before it is read
            f"journalctl -u {self.q(unit)}.service -n 12 -o cat --no-pager 2>/dev/null | tail -n 12 || true"
        ).out.strip()
        ended = f"exit {code.strip()}" if isinstance(code, str) else "it ended without a result (stopped?)"
        return f"{node}: {unit}.service failed ({ended}):\n{tail}"

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

    def restore_script(self) -> str:
        """Restore, replay, promote, stop: safe to run again after it half-ran, promotion included (a time
        target follows the old timeline, --target-timeline, not the fork a first run's promotion made). The
        wait for the promotion watches the server: it ends at once, quoting the line, when the server died or
        logged a FATAL or PANIC line of its own."""
        q, plan = self.q, self.plan
        target = ""
        if plan.target != LATEST:
            timeline = f"--target-timeline={plan.old_timeline} " if plan.old_timeline else ""
            target = (f"--type=time --target={q(plan.target_utc or plan.target)} {timeline}"
                      "--target-action=promote ")
        return f"""
if systemctl is-active --quiet patroni; then echo "Patroni runs on this node" >&2; exit 1; fi
if {self.pg_ctl} status >/dev/null 2>&1; then {self.pg_ctl} -m fast -w -t 600 stop; fi
rs_mkdir {q(plan.pg_data)} postgres postgres 0700  # a link or another owner's directory there is refused
{self.cluster.pgbackrest(f"--repo=1 --delta {target}--log-level-console=warn restore")}
{self.promotion("choose an earlier one")}"""

    def promotion(self, advice: str, settings: str = "") -> str:
        """Start the server in the data directory with `settings` (postgres's -c options, no TCP), wait until
        it is promoted, stop it. The wait watches the server: it ends at once, quoting the line, when the
        server died or logged a FATAL or PANIC line of its own (`advice`: which target to choose instead)."""
        q, log = self.q, self.q(self.log)
        as_postgres = self.cluster.as_postgres
        return f"""offset=$({as_postgres(f"stat -c %s {log}")} 2>/dev/null || echo 0)
fatal() {{  # the server's own first FATAL or PANIC line since this start (read as postgres, at most 64 MiB)
  {{ {as_postgres(f"tail -c +$((offset + 1)) {log}")} 2>/dev/null | head -c 67108864 \
    | grep -E '(FATAL|PANIC):' | grep -Ev {q(CLIENT_FATAL)} | head -n 1; }} || true
}}
{self.pg_ctl} -o {q(f"-c listen_addresses='' {settings}".strip())} -l {log} -W start
deadline=$((SECONDS + {WAIT}))
until [[ "$({self.cluster.psql("SELECT pg_is_in_recovery()")} 2>/dev/null)" == f ]]; do
  line=$(fatal)
  if [[ -n "$line" ]] || ! {self.pg_ctl} status >/dev/null 2>&1; then
    sleep 1; line=$(fatal)
    echo "PostgreSQL on this node ended the recovery: ${{line:-the server is not running (see {log})}}" >&2
    echo "What to do: read {log}; a target past the newest archived WAL is never reached ({advice});" \
      "then run pgbackup recover again, or pgbackup recover --abort" >&2
    {self.pg_ctl} -m immediate -w -t 60 stop >/dev/null 2>&1 || true
    exit 1
  fi
  if [[ $SECONDS -ge $deadline ]]; then echo "not promoted after {WAIT} s: see {log}" >&2; exit 1; fi
  sleep 1
done
{self.pg_ctl} -m fast -w -t 600 stop
"""

    def standby_script(self, label: str, aside: str | None = None) -> str:
        """The node's data directory a standby restored from backup `label` (one on the history the leader
        continues): Patroni, started there, makes it follow the leader (its new timeline, through the history
        file in the archive). `aside`: where the old data is moved first (once: a run again finds it there and
        restores over its own partial restore, --delta)."""
        q, data = self.q, self.q(self.plan.pg_data)
        move = "" if aside is None else f"""if [[ -e {q(aside)} || -L {q(aside)} ]]; then :  # moved aside before
elif [[ -e {data} || -L {data} ]]; then rs_rename {data} {q(aside)}
fi
"""
        return f"""
if systemctl is-active --quiet patroni; then echo "Patroni runs on this node" >&2; exit 1; fi
if {self.pg_ctl} status >/dev/null 2>&1; then {self.pg_ctl} -m immediate -w -t 600 stop; fi
{move}rs_mkdir {data} postgres postgres 0700
{self.cluster.pgbackrest(f"--repo=1 --delta --set={q(label)} --type=standby --log-level-console=warn restore")}
"""

    def step_restore(self) -> None:
        """The leader's restore and the replicas' at once, each in its node's unit."""
        plan = self.plan
        scripts = {plan.leader: self.restore_script()}
        scripts.update({node: self.standby_script(plan.backup, plan.aside[node]) for node in plan.replicas})
        self.in_units("restore", scripts, timeout=3 * WAIT)
        for node in plan.replicas:
            self.say(f"      {node}: {plan.pg_data} -> {plan.aside[node]}; restored as a standby from {plan.backup}")

    def wait_members(self, ready: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = WAIT,
                     watch: list[str] | None = None) -> list[dict[str, Any]]:
        """Until `ready(members)`; watching Patroni on the `watch` nodes: ends at once when it is not running
        there, quoting its last error."""
        deadline = time.monotonic() + timeout
        members: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                members = self.cluster.members(prefer=self.plan.leader)
            except RemoteError:
                members = []
            if ready(members):
                return members
            for node in watch or []:
                self.patroni_alive(node, what)
            time.sleep(2)
        raise RemoteError(f"{what}: not after {timeout:.0f} s (members: {describe_members(members)})")

    def patroni_alive(self, node: str, what: str) -> None:
        result = self.cluster.node(node).run(
            "systemctl is-active --quiet patroni && exit 0\n"
            "journalctl -u patroni -n 200 -o cat --no-pager 2>/dev/null | grep -E 'FATAL|PANIC|CRITICAL|ERROR' "
            "| tail -n 1 || true\nexit 1", timeout=60)
        if result.status != 0:
            line = result.out.strip() or "no error line in its journal"
            raise RemoteError(f"{what}: Patroni is not running on {node}: {line}. What to do: see journalctl -u "
                              f"patroni on {node}, start it (systemctl start patroni), then run pgbackup recover "
                              "again")

    def step_leader(self) -> None:
        leader = self.plan.leader
        self.cluster.node(leader).check("systemctl start patroni", what="systemctl start patroni")
        self.wait_members(lambda ms: Cluster.leader_of(ms) == leader, f"{leader} leading the cluster", 900,
                          watch=[leader])

    def step_backup(self) -> None:
        # From the leader (--no-backup-standby: the standbys have just joined).
        self.in_unit(self.plan.leader, "backup", self.cluster.pgbackrest(
            f"--repo=1 --type=full --no-backup-standby {KEEP_EVERYTHING} --log-level-console=error backup",
            locked=True), 6 * WAIT)

    def step_replicas(self) -> None:
        for node in self.plan.replicas:
            self.cluster.node(node).check("systemctl start patroni", what="systemctl start patroni")
            self.say(f"      {node}: Patroni started")

    def streaming(self, members: list[dict[str, Any]], leader: str | None = None) -> bool:
        """Every node a member, running or streaming, on one timeline, led by `leader` (the plan's)."""
        timelines = {str(m.get("TL")) for m in members}
        ok = [m for m in members if m.get("State") in ("running", "streaming")]
        return (Cluster.leader_of(members) == (leader or self.plan.leader)
                and len(ok) == len(self.cluster.nodes) == len(members) and len(timelines) == 1)

    def step_streaming(self) -> None:
        self.wait_members(self.streaming, "every member streaming on the new timeline", watch=list(self.cluster.nodes))
        self.cluster.node(self.plan.leader).check(
            "timeout -k 5 600 " + self.cluster.pgbackrest("--log-level-console=warn check"), timeout=700,
            what="pgbackrest check")

    def finish(self) -> dict[str, Any]:
        plan = self.plan
        assert plan.done is not None
        members = self.cluster.members(prefer=plan.leader)
        timeline = max(int(m["TL"]) for m in members)
        plan.summary = {
            "rtoSeconds": plan.rto or round(time.time() - plan.started, 1),
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
                 f"step 1 to every member streaming; {time.time() - plan.started:.1f} s with the backup); timeline "
                 f"{was}{timeline}; pgbackrest check passed")
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


def restore_begun(plan: Plan) -> bool:
    """Whether the restore may have touched the leader's data (begun, or done)."""
    names = [name for name, _ in STEPS]
    done = plan.done or {}
    return "restore" in done or (plan.current in names and names.index(plan.current) >= names.index("restore"))


def abort(cluster: Cluster, plan: Plan | None, say: Callable[[str], None]) -> int:
    """`recover --abort`: an unfinished recovery put back to a running cluster on its old data where that still
    exists. Any unit of the recovery still running on the leader is stopped first. Before the restore began:
    the replicas' data moved aside (if any) is moved back, Patroni started on the leader, then on the replicas
    (Patroni writes the cluster into the DCS again from the leader's data), and the state removed: 0. After
    (the leader's data is the restore's): the replicas' old data leads instead (Rejoin), 0; when no replica has
    old data left, says so and what to run instead, keeps the state (marked aborted, so that another target may
    be chosen): 1."""
    if plan is None:
        raise RecoveryRefused("no recovery is recorded on any node: nothing to abort")
    if plan.finished:
        raise RecoveryRefused(f"the recovery to {plan.target} has finished: there is nothing to abort (the old data "
                              "stays aside until `pgbackup recover --cleanup`)")
    steps = Recovery(cluster, plan, say)
    for node in [plan.leader, *plan.replicas]:  # the restores run on every node, the backup on the leader
        for step in ("restore", "backup"):
            unit = UNIT.format(step=step)
            if cluster.node(node).run(f"systemctl is-active --quiet {cluster.q(unit)}.service").status == 0:
                steps.stop_unit(node, step)
    if restore_begun(plan):
        return Rejoin(cluster, plan, say).rejoin()
    q = cluster.q
    for node in plan.replicas:
        data, aside = q(plan.pg_data), q(plan.aside.get(node, ""))
        moved = cluster.node(node).check(f"""
if [[ -d {aside} && ! -L {aside} ]]; then
  systemctl stop patroni
  rs_rm_tree {data}
  rs_rename {aside} {data}
  echo moved
fi
""", what="moving the data directory back")
        if moved.strip():
            say(f"      {node}: {plan.aside[node]} -> {plan.pg_data}")
    for node in [plan.leader, *plan.replicas]:  # the leader first, leading before a replica could race it
        cluster.node(node).check("systemctl start patroni", what="systemctl start patroni")
        say(f"      {node}: Patroni started")
        if node == plan.leader:
            steps.wait_members(lambda ms: Cluster.leader_of(ms) == plan.leader, f"{plan.leader} leading again", 900,
                               watch=[plan.leader])
    steps.wait_members(lambda ms: Cluster.leader_of(ms) is not None and all(
        m.get("State") in ("running", "streaming") for m in ms) and len(ms) == len(cluster.nodes),
        "the cluster running again on its old data", 900, watch=[plan.leader])
    cluster.node(plan.leader).check(f"rs_rm_tree {q(cluster.recover_state)}", what="removing the recovery's state")
    say(f"aborted the recovery to {plan.target}: the cluster runs on its old data; no recovery is recorded")
    return 0


# What pg_controldata says of a data directory a standby left (Patroni stopped it, or it died), and of one
# already promoted (an abort run before got that far).
STANDBY_STATES = ("shut down in recovery", "in archive recovery", "in crash recovery")
PROMOTED_STATES = ("shut down", "in production")


class Rejoin(Recovery):
    """`--abort` once the restore has begun: the leader's old data is gone, the replicas' is not (untouched
    until step 6, then moved aside). Patroni stopped everywhere (a rebuild it began stopped with it), the
    cluster forgotten in the DCS; each replica's data moved back; the first replica with old data replays the
    archive to its end on the old timeline and is promoted by hand (a new timeline: the recovery's fork, if it
    promoted, is not followed), then leads under Patroni; the restored node is rebuilt as a standby from the
    newest backup made before the recovery (one on the old history), and every other member follows. When the
    recovery made a backup (step 7, on its own timeline), a full backup of the new timeline follows: Patroni's
    replica method restores the newest set. Every part is safe to run again: a promoted directory is not
    replayed twice, and the choice of the leader is the same."""

    def rejoin(self) -> int:
        cluster, plan, q, say = self.cluster, self.plan, self.q, self.say
        say(f"{plan.leader}'s {plan.pg_data} was overwritten by the restore (step 3 began): the replicas' old data "
            "leads instead")
        for node in [*plan.replicas, plan.leader]:
            cluster.node(node).check(self.stop_script(), what="stopping Patroni")
        say(f"      Patroni stopped on {', '.join([*plan.replicas, plan.leader])}")
        self.step_forget_dcs()
        states = {node: self.put_back(node) for node in plan.replicas}
        old = [node for node in plan.replicas if states[node] in STANDBY_STATES + PROMOTED_STATES]
        if not old:
            plan.aborted = True
            self.save()
            say(f"cannot be undone: {plan.leader}'s data is overwritten by the restore (step 3 began) and no replica "
                f"has old data left ({', '.join(f'{n}: {s or chr(45)}' for n, s in states.items())}); Patroni is "
                "stopped everywhere.")
            say(f"What to run instead: `pgbackup recover -s {plan.stack} --to {q(plan.target)}` to finish this "
                f"recovery, or `pgbackup recover -s {plan.stack} --to OTHER --leader {plan.leader}` to recover to "
                "another target (allowed after this abort).")
            return 1
        leader = old[0]
        self.in_unit(leader, "promote", self.promote_script(), 3 * WAIT)
        say(f"      {leader}: its old data replayed to the archive's end and promoted")
        cluster.node(leader).check("systemctl start patroni", what="systemctl start patroni")
        self.wait_members(lambda ms: Cluster.leader_of(ms) == leader, f"{leader} leading the cluster", 900,
                          watch=[leader])
        say(f"      {leader}: leads")
        info = cluster.info(leader)
        before = [b for b in backups(info) if b["timestamp"]["stop"] < plan.started]
        rebuilt = [node for node in [*plan.replicas, plan.leader] if node not in old]
        if rebuilt and not before:
            raise RemoteError(f"no backup in repo1 ended before the recovery began: {', '.join(rebuilt)} cannot be "
                              "rebuilt from one; once the cluster runs, `patronictl reinit` them")
        if rebuilt:
            self.in_units("rebuild", dict.fromkeys(rebuilt, self.standby_script(before[-1]["label"])), 3 * WAIT)
            say(f"      {', '.join(rebuilt)}: rebuilt as standbys from backup {before[-1]['label']}")
        for node in [*old[1:], *rebuilt]:
            cluster.node(node).check("systemctl start patroni", what="systemctl start patroni")
        self.wait_members(lambda ms: self.streaming(ms, leader), "every member streaming again", watch=[leader])
        # The recovery's backup (of its timeline) is the newest set, the one Patroni's replica method would
        # restore: one of this timeline replaces it.
        if any(b["timestamp"]["stop"] >= plan.started for b in backups(info)):
            self.in_unit(leader, "backup", self.cluster.pgbackrest(
                f"--repo=1 --type=full --no-backup-standby {KEEP_EVERYTHING} --log-level-console=error backup",
                locked=True), 6 * WAIT)
            say(f"      {leader}: a full backup of the new timeline into repo1")
        cluster.node(plan.leader).check(f"rs_rm_tree {q(cluster.recover_state)}",
                                        what="removing the recovery's state")
        members = cluster.members(prefer=leader)
        say(f"aborted the recovery to {plan.target}: the cluster runs on {leader}'s old data, timeline "
            f"{max(int(m['TL']) for m in members)}, every member streaming; no recovery is recorded. What "
            f"{plan.leader} had written and the archive did not hold when it stopped is gone.")
        return 0

    def stop_script(self) -> str:
        """Patroni stopped, then PostgreSQL (Patroni's unit leaves it running). The recovery's restores are
        its units, which abort() has stopped already."""
        return f"""systemctl stop patroni
if {self.pg_ctl} status >/dev/null 2>&1; then {self.pg_ctl} -m fast -w -t 600 stop; fi
"""

    def controldata(self) -> str:
        """The data directory's cluster state as pg_controldata prints it (as postgres), empty when none."""
        command = f"{self.cluster.stack.pg_bin}/pg_controldata -D {self.q(self.plan.pg_data)}"
        return f"{self.cluster.as_postgres(command)} 2>/dev/null | sed -n 's/^Database cluster state: *//p' || true"

    def put_back(self, node: str) -> str:
        """The replica's old data in place again (from aside, where step 6 moved it); its cluster state."""
        q, plan = self.q, self.plan
        data, aside = q(plan.pg_data), q(plan.aside.get(node, ""))
        out = self.cluster.node(node).check(f"""
if [[ -d {aside} && ! -L {aside} ]]; then
  if [[ -e {data} || -L {data} ]]; then rs_rm_tree {data}; fi
  rs_rename {aside} {data}
  echo "moved"
fi
echo "state:$({self.controldata()})"
""", what="moving the data directory back")
        if out.startswith("moved"):
            self.say(f"      {node}: {plan.aside[node]} -> {plan.pg_data}")
        return out.rsplit("state:", 1)[-1].strip()

    def promote_script(self) -> str:
        """The old data, a standby's, replays the archive to its end on the old timeline (not the recovery's
        fork) and is promoted; left as it is when a run before promoted it."""
        data = self.q(self.plan.pg_data)
        as_postgres = self.cluster.as_postgres
        timeline = str(self.plan.old_timeline) if self.plan.old_timeline else "current"
        return f"""
if systemctl is-active --quiet patroni; then echo "Patroni runs on this node" >&2; exit 1; fi
if {self.pg_ctl} status >/dev/null 2>&1; then {self.pg_ctl} -m fast -w -t 600 stop; fi
state=$({self.controldata()})
case "$state" in
  {" | ".join(self.q(s) for s in PROMOTED_STATES)}) echo "promoted before"; exit 0 ;;
  {" | ".join(self.q(s) for s in STANDBY_STATES)}) ;;
  *) echo "{data}: pg_controldata says '$state', not a standby's data: refused" >&2; exit 1 ;;
esac
{as_postgres(f"rm -f {data}/standby.signal")}
{as_postgres(f"touch {data}/recovery.signal")}
{self.promotion("the old data is replayed to the archive's end", f"-c recovery_target_timeline={timeline}")}"""
