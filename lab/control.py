"""Controls for the running lab, shared by its end-to-end tests and its benchmark: SSH and SQL on the nodes,
Patroni's view of the cluster, pgBackRest on a node, the lab driver, and faults (a node's power cut).

Everything here talks to loopback addresses only: the nodes are 127.0.1.1-3, S3 is https://localhost:9443.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config as BotoConfig

from components.layout import PATHS
from components.providers import admin_env
from components.report import repo_of
from components.storage import repository_policy
from lab import driver
from pgbackup_cli.recover import STEPS

ROOT = Path(__file__).resolve().parent.parent
LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/tmp/pgbackup-lab"))  # noqa: S108 -- the lab's own state


def release_facts() -> dict[str, str]:
    """The lab's facts for LAB_RELEASE (default trixie), from their one place: lab/common.sh."""
    script = ('. "$1" && printf \'%s\\n\' "$LAB_RELEASE" "$LAB_SUITE" "$LAB_PG_VERSION" "$LAB_PG_BIN" '
              '"$LAB_PG_DATA" "$LAB_SCOPE" "$LAB_PGBACKREST"')
    out = subprocess.run(["bash", "-c", script, "bash", str(ROOT / "lab" / "common.sh")], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return dict(zip(["release", "suite", "pg_version", "pg_bin", "pg_data", "scope", "pgbackrest"], out, strict=True))


FACTS = release_facts()
RELEASE, PG_BIN, PG_DATA, SCOPE = FACTS["release"], FACTS["pg_bin"], FACTS["pg_data"], FACTS["scope"]
# The stanza is the program's configuration: Pulumi.lab.yaml's.
STANZA: str = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]["pgbackup:cluster"]["stanza"]


def stack_file(stack: dict[str, Any] | None) -> Path:
    """Pulumi.lab.yaml, or a file of the same stack name ("lab") with `stack` as its configuration: as
    `pulumi config set` then `pulumi up -s lab`."""
    if stack is None:
        return ROOT / "Pulumi.lab.yaml"
    (LAB_DIR / "changed").mkdir(exist_ok=True)
    path = LAB_DIR / "changed" / "Pulumi.lab.yaml"
    path.write_text(yaml.safe_dump({"config": stack}))
    return path


def sh(*args: str, check: bool = True, timeout: float = 900, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(args)} -> {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


class Stranded(AssertionError):
    """Replicas that will not follow the leader on their own (Lab.wait_healthy's stranded_after)."""

    def __init__(self, members: list[str], message: str) -> None:
        super().__init__(message)
        self.members = members


@dataclass
class Lab:
    env: dict[str, str]
    first_apply: dict[str, Any]
    first_apply_seconds: float
    nodes: list[str] = field(default_factory=lambda: ["pgnode1", "pgnode2", "pgnode3"])

    # -- access
    def ssh(self, node: str, command: str, check: bool = True, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
        return sh("ssh", "-F", self.env["LAB_SSH_CONFIG"], node, command, check=check, timeout=timeout)

    def sql(self, node: str, query: str, port: int = 5432, socket: str = "/var/run/postgresql") -> str:
        command = (f"cd /tmp && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -h {socket} -p {port} "
                   f"-c {shlex.quote(query)}")
        return self.ssh(node, command).stdout.strip()

    def pgbackrest(self, node: str, args: str, check: bool = True, timeout: float = 600
                   ) -> subprocess.CompletedProcess[str]:
        return self.ssh(node, f"cd /tmp && runuser -u postgres -- pgbackrest --stanza={STANZA} {args}", check=check,
                        timeout=timeout)

    def info(self, node: str | None = None) -> dict[str, Any]:
        stanzas: list[dict[str, Any]] = json.loads(self.pgbackrest(node or self.leader(), "--output=json info").stdout)
        return stanzas[0]

    def members(self) -> list[dict[str, Any]]:
        out = sh("patronictl", "-c", self.env["LAB_PATRONICTL_CONFIG"], "list", "-f", "json").stdout
        members: list[dict[str, Any]] = json.loads(out)
        return members

    def leader(self) -> str:
        leaders = [str(m["Member"]) for m in self.members() if m.get("Role") == "Leader"]
        assert len(leaders) == 1, self.members()
        return leaders[0]

    def replicas(self) -> list[str]:
        return [m["Member"] for m in self.members() if m.get("Role") != "Leader"]

    def streaming_replicas(self, leader: str) -> set[str]:
        """The members the leader's walsenders stream to (Patroni names each standby's connection after it)."""
        try:
            out = self.sql(leader, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
        except (AssertionError, subprocess.TimeoutExpired):
            return set()
        return set(out.split())

    def not_following(self, members: list[dict[str, Any]] | None = None) -> list[str]:
        """Replicas that Patroni lists as running but that do not follow the leader: another timeline, or no
        stream from it (a standby that replayed past the point where the leader's timeline forked asks for WAL
        the leader cannot give, and Patroni 3.0 still lists it as 'running')."""
        members = self.members() if members is None else members
        leaders = [m for m in members if m.get("Role") == "Leader"]
        if len(leaders) != 1:
            return [str(m["Member"]) for m in members if m.get("Role") != "Leader"]
        streaming = self.streaming_replicas(str(leaders[0]["Member"]))
        return [str(m["Member"]) for m in members if m.get("Role") != "Leader"
                and (m.get("TL") != leaders[0].get("TL") or m["Member"] not in streaming)]

    def wait_healthy(self, timeout: float = 180, count: int = 3, stranded_after: float | None = None
                     ) -> list[dict[str, Any]]:
        """Until one leader and count-1 replicas are running/streaming with nothing pending, every replica on the
        leader's timeline and streaming from it. `stranded_after`: give up early (Stranded) once a replica has
        been running on another timeline than the leader's, with no stream from it, for that many seconds in a
        row: a standby that replayed past the new timeline's fork never follows on its own."""
        deadline = time.monotonic() + timeout
        members: list[dict[str, Any]] = []
        lagging: list[str] = []
        off_since: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                members = self.members()
            except AssertionError:
                members = []
            leaders = [m for m in members if m.get("Role") == "Leader" and m.get("State") == "running"]
            ok = [m for m in members if m.get("State") in ("running", "streaming") and not m.get("Pending restart")]
            if len(leaders) == 1 and (len(ok) == count or stranded_after is not None):
                lagging = self.not_following(members)
                if not lagging and len(ok) == count:
                    return members
            if stranded_after is not None and len(leaders) == 1:
                now = time.monotonic()
                off = {str(m["Member"]) for m in members if m.get("Role") != "Leader" and m.get("State") == "running"
                       and m.get("TL") != leaders[0].get("TL") and str(m["Member"]) in lagging}
                off_since = {name: off_since.get(name, now) for name in off}
                stuck = sorted(name for name, since in off_since.items() if now - since >= stranded_after)
                if stuck:
                    raise Stranded(stuck, f"{stuck} on another timeline than the leader's and not streaming for "
                                          f"{stranded_after:.0f} s: {members}")
            time.sleep(2)
        raise AssertionError(f"cluster not healthy after {timeout} s: {members}; not following the leader: {lagging}")

    def rejoin_after_power_cut(self, victim: str, on_stranded: Any = None, catch_up: float = 300) -> None:
        """Boot the nodes again after `victim`'s power cut. Patroni usually rejoins it (pg_rewind). A member that
        replayed WAL of the old timeline past the point where the new leader's forked (the victim, or the other
        replica when it had received more than the new leader) cannot follow, although Patroni 3.0 lists it as
        running. When a member does not follow within 3 minutes (or runs on another timeline than the leader's,
        with no stream from it, for 30 s: it will not follow on its own), the operator's remedy, a reinit,
        rebuilds it through the pgbackrest replica method. `on_stranded(members)` runs before the reinit;
        `catch_up`: how long the rebuilt member may take to replay what was written since the backup it got."""
        self.boot_nodes()
        try:
            self.wait_healthy(timeout=180, stranded_after=30)
        except AssertionError as unhealthy:
            stuck = unhealthy.members if isinstance(unhealthy, Stranded) else (self.not_following() or [victim])
            if isinstance(unhealthy, Stranded) and on_stranded is not None:
                on_stranded(stuck)
            for member in stuck:
                journal = self.ssh(member, f"journalctl -u patroni -u postgresql@{FACTS['pg_version']}-main "
                                   "--no-pager -o cat -n 30", check=False)
                print(f"\n{unhealthy}\n{member} does not follow the leader: reinit. Its journal ends:\n"
                      f"{journal.stdout}")
                sh("patronictl", "-c", self.env["LAB_PATRONICTL_CONFIG"], "reinit", SCOPE, member, "--force")
            self.wait_healthy(timeout=catch_up)

    def wait_archived(self, segment: str, timeout: float = 120) -> None:
        """Until the repository's archive holds `segment` (a WAL file name)."""
        deadline = time.monotonic() + timeout
        polls = 0
        while time.monotonic() < deadline:
            # In every repository (archive-push writes to each). Compare log and segment numbers; the timeline
            # (first 8 digits) changes with a failover.
            archives = self.info()["archive"]
            repos = {repo_of(a) for a in archives}
            if all(any(a["max"] and a["max"][8:] >= segment[8:] for a in archives if repo_of(a) == repo)
                   for repo in repos):
                return
            polls += 1
            if polls % 3 == 0:
                self.wake_archiver()
            time.sleep(2)
        raise AssertionError(f"{segment} not archived after {timeout} s: {self.info()['archive']}\n"
                             f"{self.archiving_diagnosis()}")

    def archiving_diagnosis(self) -> str:
        """What the leader's archiving looks like: pg_stat_archiver, the segments waiting, archive-push's
        asynchronous status files and the end of its log (for a failure message)."""
        try:
            leader = self.leader()
        except AssertionError as error:
            return f"no leader to diagnose: {error}"
        archiver = "cd /tmp && runuser -u postgres -- psql -XAtq -c 'TABLE pg_stat_archiver'; "
        script = (archiver + f"ls {PG_DATA}/pg_wal/archive_status | grep -v '[.]done$' | tail -n 5; "
                  f"find {PATHS.spool}/archive -type f | tail -n 10; "
                  "tail -n 15 /var/log/pgbackrest/*archive-push-async.log")
        return f"{leader}:\n" + self.ssh(leader, script, check=False).stdout

    def archive_failure_story(self, node: str, since: str) -> str:
        """For each archive_command that failed on `node` since `since` (a journalctl time): what the
        asynchronous archive-push workers and the archive-lock takers (stanza-create) did in the minute before,
        one short line each (for a failure message whose end is what CI shows)."""
        script = (
            f"journalctl -u patroni -o cat --since {shlex.quote(since)} --no-pager "
            "| grep -E 'unable to push WAL file|archive command failed' | tail -n 6 | cut -c1-200; "
            "for f in /var/log/pgbackrest/*archive-push-async.log /var/log/pgbackrest/*stanza-create.log; do "
            "  echo \"-- ${f##*/}\"; "
            "  grep -E 'command (begin|end)|ERROR|WARN|push [0-9]+ WAL' \"$f\" | tail -n 14 "
            "  | sed -E 's/ (--[a-z0-9-]+(=[^ ]*)? ?)+$//; s/(begin [0-9.]+:).*/\\1/' | cut -c1-150; "
            "done")
        return f"\n== {node}: failed archive_commands, then the workers' and stanza-create's last lines\n" + \
            self.ssh(node, script, check=False).stdout

    def switch_wal(self, node: str) -> str:
        """Close the current WAL segment (in its own transaction); returns its file name. A WAL record is
        written first (a logical message, replayed as a no-op): with nothing written since the last switch,
        pg_switch_wal closes no segment and names the next one, which only archive_timeout closes later."""
        return self.sql(node, "SELECT pg_walfile_name(pg_switch_wal()) "
                              "FROM pg_logical_emit_message(false, 'pgbackup-lab', 'switch') AS written")

    def wait_archiver_recovered(self, node: str, timeout: float = 180) -> None:
        """Until `node`'s archiver has archived since its last failure (pg_stat_archiver): after an outage the
        repository can hold a segment (pushed by archive-push's asynchronous process) before archive_command
        reports success, and PostgreSQL retries a failed segment only on its next wake-up (60 s at most, or at
        once: wake_archiver)."""
        deadline = time.monotonic() + timeout
        query = ("SELECT last_failed_time IS NULL OR last_archived_time >= last_failed_time "
                 "FROM pg_stat_archiver")
        polls = 0
        while self.sql(node, query) != "t":
            assert time.monotonic() < deadline, f"{node}'s archiver has not archived since its last failure"
            polls += 1
            if polls % 3 == 0:
                self.wake_archiver(node)
            time.sleep(2)

    def wake_archiver(self, node: str | None = None) -> None:
        """After failures PostgreSQL's archiver sleeps up to 60 s before it tries again; a configuration reload
        (SIGHUP, which the postmaster passes on) sets its latch: it tries at once. Waiting tests only: the
        program leaves the archiver to its own schedule."""
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.sql(node or self.leader(), "SELECT pg_reload_conf()")

    # -- the program
    def apply(self, stack: dict[str, Any] | None = None, secrets: dict[str, str] | None = None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
        """The driver's `pulumi up` with Pulumi.lab.yaml, or with `stack` (the config mapping) instead; `env`
        adds to the environment of `pulumi up` (the storage admin's credentials)."""
        return driver.apply(LAB_DIR, {**self.env, **(env or {})}, stack_file(stack), extra_secrets=secrets)

    def stack(self) -> dict[str, Any]:
        config: dict[str, Any] = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]
        return config

    def driver_state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((LAB_DIR / "driver-state.json").read_text())
        return state

    # -- restores
    def rows_around_a_target(self, node: str, table: str) -> str:
        """(Re)creates `table` (batch text) with 100 rows 'before' a moment, then 50 'after' it, and waits
        until the repository holds them. Returns that moment (a timestamp for --target)."""
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", table), f"not a plain table name: {table!r}"
        self.sql(node, f"DROP TABLE IF EXISTS {table}")
        self.sql(node, f"CREATE TABLE {table} (batch text)")
        self.sql(node, f"INSERT INTO {table} SELECT 'before' FROM generate_series(1, 100)")  # noqa: S608 -- checked name
        time.sleep(1.5)
        target = self.sql(node, "SELECT now()")
        time.sleep(1.5)
        self.sql(node, f"INSERT INTO {table} SELECT 'after' FROM generate_series(1, 50)")  # noqa: S608 -- checked name
        self.wait_archived(self.switch_wal(node))
        return target

    def restored_copy_says(self, node: str, restore_options: str, query: str) -> str:
        """docs/restoring.md's restore drill: restore into a scratch directory on `node` with archiving off, start the
        copy on its own port and socket, wait for the end of recovery, run `query`, drop the copy."""
        scratch, sock = "/var/tmp/pitr", "/var/tmp/pitr-sock"  # noqa: S108 -- inside a lab node
        pg_ctl = f"cd /tmp && runuser -u postgres -- {PG_BIN}/pg_ctl -D {scratch}"
        self.ssh(node, f"rm -rf {scratch} {sock} && install -d -o postgres -m 0700 {scratch} && "
                       f"install -d -o postgres {sock}")
        self.pgbackrest(node, f"--pg1-path={scratch} {restore_options} --archive-mode=off --log-level-console=warn "
                              "restore", timeout=3600)
        options = f"-c port=5499 -c listen_addresses='' -c unix_socket_directories={sock} -c archive_mode=off"
        self.ssh(node, f"{pg_ctl} -l /var/tmp/pitr.log -o \"{options}\" -w -t 600 start", timeout=700)
        try:
            deadline = time.monotonic() + 600
            while self.sql(node, "SELECT pg_is_in_recovery()", port=5499, socket=sock) == "t":
                assert time.monotonic() < deadline, "the restored copy did not finish recovery"
                time.sleep(1)
            return self.sql(node, query, port=5499, socket=sock)
        finally:
            self.ssh(node, f"{pg_ctl} -m immediate stop; rm -rf {scratch} {sock}", check=False)

    # -- the operator's command
    def pgbackup(self, *args: str, check: bool = True, timeout: float = 7200, stack: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`pgbackup <command> -s lab <args>` (the product's command, pgbackup_cli), with the lab's key and a
        copy of Pulumi.lab.yaml (or of `stack`) that names the running release's pgVersion (as the driver applies
        it); `env` added to this process's environment (an administrator's key, as the operator exports it)."""
        return sh(*self.pgbackup_argv(*args, stack=stack), check=check, timeout=timeout, cwd=str(ROOT),
                  env={**os.environ, **(env or {})})

    def pgbackup_argv(self, *args: str, stack: dict[str, Any] | None = None) -> list[str]:
        # The command's words before its options (`repository undelete`): -s and the rest belong to the last one.
        words = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
        command, rest = args[:words], args[words:]
        return [sys.executable, "-m", "pgbackup_cli", *command, "-s", "lab", "-C",
                str(self.cli_stack_dir(stack)), "--identity", self.env["LAB_SSH_KEY"], *rest]

    def cli_stack_dir(self, stack: dict[str, Any] | None = None) -> Path:
        directory = LAB_DIR / "cli"
        directory.mkdir(exist_ok=True)
        config = copy.deepcopy(stack) if stack is not None else self.stack()
        config["pgbackup:cluster"] = {**config["pgbackup:cluster"], "pgVersion": int(self.env["LAB_PG_VERSION"])}
        (directory / "Pulumi.lab.yaml").write_text(yaml.safe_dump({"config": config}))
        return directory

    def recover_cluster_to(self, target: str) -> dict[str, float]:
        """`pgbackup recover --to <target> --yes`: docs/restoring.md's point-in-time recovery of the whole cluster.
        Returns the seconds each step took (from the recovery's state on the leader); the cluster is healthy
        again at the end, with the replicas' old data directories still aside (`recover --cleanup` removes
        them)."""
        self.pgbackup("recover", "--to", target, "--yes")
        return self.recovery_steps(self.leader())

    def recovery_steps(self, leader: str) -> dict[str, float]:
        state = json.loads(self.ssh(leader, "cat /var/lib/pgbackup/recover.json").stdout)
        assert state["finished"], state
        steps: dict[str, float] = state["summary"]["stepSeconds"]
        return {f"{i} {name}": steps[name] for i, (name, _) in enumerate(STEPS, 1)}

    # -- packages
    def install_deb(self, node: str, deb: Path) -> str:
        """dpkg -i a package file on `node` (a downgrade too), keeping its configuration files; returns what
        `pgbackrest version` prints there afterwards, as postgres."""
        inside = f"/var/tmp/{deb.name}"  # noqa: S108 -- inside a lab node
        (LAB_DIR / "nodes" / node / "root" / inside.lstrip("/")).write_bytes(deb.read_bytes())
        self.ssh(node, f"DEBIAN_FRONTEND=noninteractive dpkg --force-confold -i {inside} && rm {inside}")
        return self.ssh(node, "cd /tmp && runuser -u postgres -- pgbackrest version").stdout.strip()

    # -- faults
    def kill_node(self, node: str) -> None:
        """Power loss: every process of the node dies at once (its cgroup is killed)."""
        killed = False
        for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
            kill = Path(base) / "pgbackup-lab" / node / "cgroup.kill"
            if kill.exists():
                kill.write_text("1")
                killed = True
                break
        assert killed, f"no cgroup.kill for {node}"
        pidfile = LAB_DIR / "run" / f"{node}.pid"
        deadline = time.monotonic() + 30
        pid = pidfile.read_text().strip()
        while time.monotonic() < deadline and sh("kill", "-0", pid, check=False).returncode == 0:
            time.sleep(0.5)

    @contextlib.contextmanager
    def s3_down(self) -> Iterator[None]:
        """S3 down (nginx stopped: connections refused) for the block; then up again with lab/up.sh (without
        its wait for streaming replicas)."""
        sh("kill", "-TERM", (LAB_DIR / "run" / "nginx.pid").read_text().strip())
        try:
            deadline = time.monotonic() + 30
            while sh("curl", "-s", "-o", "/dev/null", "--cacert", self.env["LAB_CA_FILE"], self.env["LAB_S3_ENDPOINT"],
                     check=False).returncode == 0:
                assert time.monotonic() < deadline, "nginx did not stop"
                time.sleep(0.5)
            yield
        finally:
            self.boot_nodes()

    def failing_segment(self, node: str, table: str, rows: int) -> str:
        """With the storage down: write `rows` rows into `table` on `node`, close the WAL segment, wait until
        the archiver has failed on it; the segment's name."""
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", table), f"not a plain table name: {table!r}"
        self.sql(node, f"CREATE TABLE IF NOT EXISTS {table} (n int)")
        self.sql(node, f"INSERT INTO {table} SELECT generate_series(1, {int(rows)})")
        segment = self.switch_wal(node)
        self.wait_archive_failure(node)
        return segment

    def wait_archive_failure(self, node: str, timeout: float = 120) -> None:
        """Until `node`'s archiver has failed at least once (pg_stat_archiver.failed_count)."""
        deadline = time.monotonic() + timeout
        while int(self.sql(node, "SELECT failed_count FROM pg_stat_archiver")) == 0:
            assert time.monotonic() < deadline, "archiving did not notice the outage"
            time.sleep(2)

    def boot_nodes(self) -> None:
        """lab/up.sh without waiting for the replicas to stream (a node may need a reinit to rejoin)."""
        sh(str(ROOT / "lab" / "up.sh"), timeout=900, env={**os.environ, "LAB_WAIT_REPLICAS": "0"})

    def restart_lab(self) -> None:
        """lab/up.sh boots what is not running (nodes, S3, etcd) and leaves the rest alone."""
        sh(str(ROOT / "lab" / "up.sh"), timeout=900)


def host_pgbackrest_deb() -> tuple[Path, str]:
    """The pgBackRest package the host's apt offers (Debian 12's 2.45-1 on a Debian 12 host), downloaded once
    into the lab's cache: a real build of another pgBackRest than a Debian 13 lab runs. Returns the file and
    its version."""
    debs = LAB_DIR / "cache" / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob("pgbackrest_*.deb"))
    if not found:
        sh("apt-get", "download", "-q", "pgbackrest", cwd=debs, timeout=300)
        found = sorted(debs.glob("pgbackrest_*.deb"))
    assert len(found) == 1, found
    return found[0], sh("dpkg-deb", "-f", str(found[0]), "Version").stdout.strip()


def start_lab(fresh: bool = True, stack: dict[str, Any] | None = None) -> Lab:
    """lab/up.sh (after lab/down.sh when `fresh`), then the program applied by the driver, timed: with
    Pulumi.lab.yaml, or with `stack` (its config mapping) instead."""
    if fresh:
        sh(str(ROOT / "lab" / "down.sh"), timeout=300)
    sh(str(ROOT / "lab" / "up.sh"), timeout=1800)
    env: dict[str, str] = json.loads((LAB_DIR / "env.json").read_text())
    assert (env["LAB_RELEASE"], env["LAB_PG_DATA"]) == (RELEASE, PG_DATA), f"the lab runs {env['LAB_RELEASE']}"
    started = time.monotonic()
    first = driver.apply(LAB_DIR, env, stack_file(stack))
    return Lab(env=env, first_apply=first, first_apply_seconds=time.monotonic() - started)


def stop_lab() -> None:
    sh(str(ROOT / "lab" / "down.sh"), timeout=300, check=False)


class _TlsProxy:
    """TLS in front of a plain-HTTP loopback port, with the lab's localhost certificate (as nginx does for
    the lab's main S3), for a second S3 endpoint that a test starts and stops itself. asyncio streams in a
    thread of their own: one TLS object is never read and written from two threads."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.target_port = target_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(LAB_DIR / "ca" / "localhost.pem"), str(LAB_DIR / "ca" / "localhost.key"))
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(listen_port, ready), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the TLS proxy did not start")

    def _run(self, listen_port: int, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", listen_port, ssl=self.context))
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                    sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        def stop() -> None:
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(timeout=5)


class AuthenticatedS3:
    """A second lab S3 that checks signatures and IAM policies (moto with INITIAL_NO_AUTH_ACTION_COUNT):
    a bucket and a user with pgbackup's repository policy are made before authentication starts; then only
    that user's key, used within its policy, is accepted. https://localhost:<port> with the lab CA."""

    def __init__(self, lab: Lab, bucket: str, prefix: str, port: int = 9444, moto_port: int = 9101,
                 admin: bool = False) -> None:
        self.endpoint = f"localhost:{port}"
        self.moto_url = f"http://127.0.0.1:{moto_port}"
        moto = str(Path(sys.executable).parent / "moto_server")  # the running venv's (a worktree may have none)
        # Unauthenticated: the bucket, the pgbackrest user (policy, key) and, with `admin`, an administrator
        # (user, policy, key) whose credentials `admin_env` gives to `pulumi up` (for storage.create true).
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "7" if admin else "4"}
        # Its request log (werkzeug's, one line per request) for a failure's diagnosis.
        self.log = LAB_DIR / "log" / f"moto-{moto_port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as log:
            self.process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(moto_port)], env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while sh("curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{moto_port}/moto-api/", check=False
                 ).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("moto with authentication did not start")
            time.sleep(0.3)
        # The health probe above is not an AWS action: the next four requests are the unauthenticated ones.
        def client(service: str) -> Any:
            return boto3.client(service, endpoint_url=f"http://127.0.0.1:{moto_port}", region_name="us-east-1",
                                aws_access_key_id="labadmin", aws_secret_access_key=lab.env["AWS_SECRET_ACCESS_KEY"],
                                config=BotoConfig(s3={"addressing_style": "path"}))
        client("s3").create_bucket(Bucket=bucket)
        iam = client("iam")
        iam.create_user(UserName="pgbackrest")
        iam.put_user_policy(UserName="pgbackrest", PolicyName="repository",
                            PolicyDocument=json.dumps(repository_policy(bucket, prefix)))
        key = iam.create_access_key(UserName="pgbackrest")["AccessKey"]
        self.access_key_id, self.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.admin: tuple[str, str] | None = None
        if admin:
            iam.create_user(UserName="lab-admin")
            iam.put_user_policy(UserName="lab-admin", PolicyName="admin", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
            created = iam.create_access_key(UserName="lab-admin")["AccessKey"]
            self.admin = (created["AccessKeyId"], created["SecretAccessKey"])
        self.proxy = _TlsProxy(port, moto_port)

    def admin_env(self, offsite: bool = False) -> dict[str, str]:
        """The administrator's credentials, as the environment of `pulumi up` gives them: AWS_* (pulumi-aws, for
        pgbackup:storage), or with `offsite` PGBACKUP_OFFSITE_AWS_* (pgbackup:offsite's own)."""
        assert self.admin is not None, "AuthenticatedS3(admin=True)"
        key_id, secret = admin_env("s3", offsite=offsite)
        return {key_id: self.admin[0], secret: self.admin[1]}

    def client_as(self, access_key_id: str, secret_access_key: str) -> Any:
        """An S3 client of this endpoint with the given key."""
        return boto3.client("s3", endpoint_url=self.moto_url, region_name="us-east-1",
                            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                            config=BotoConfig(s3={"addressing_style": "path"}))

    def close(self) -> None:
        self.proxy.close()
        self.process.terminate()
        self.process.wait(timeout=30)
