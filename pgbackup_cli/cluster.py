"""The stack's cluster as the command sees it: its nodes over SSH, Patroni's member list, pgBackRest."""

from __future__ import annotations

import json
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import paramiko

from components.config import tls_warnings
from components.layout import NAMES, PATHS
from components.window import RepoWindow
from pgbackup_cli.remote import Node, RemoteError, warn
from pgbackup_cli.repository import choose_backup, holdings, narrow, newest_wal_time, wal_listing_path
from pgbackup_cli.stack import Stack
from pgbackup_cli.untrusted import Unreadable, answers, loads, reader_command, verify_result

T = TypeVar("T")

RECOVER_STATE = f"{PATHS.state_dir}/recover.json"


class UnreadableFile(RemoteError):
    """A file on a node is there but is not what the command reads (a link, not a regular file, too large,
    not a JSON object)."""


class Cluster:
    recover_state = RECOVER_STATE
    """Where a recovery records its progress on its leader (root's, in PATHS.state_dir)."""

    def __init__(self, stack: Stack, key: paramiko.PKey | None) -> None:
        self.stack = stack
        cluster = stack.cluster
        if cluster.insecure_skip_host_key_check:
            warn("pgbackup:cluster.insecureSkipHostKeyCheck is true: unpinned nodes are reached unchecked")
        for message in tls_warnings((("storage", stack.storage), ("offsite", stack.offsite))):
            warn(message)  # pgBackRest on the nodes, which the command runs, does not check the certificate either
        self.nodes = {n.name: Node(n, key, insecure=cluster.insecure_skip_host_key_check) for n in cluster.nodes}
        self.q = shlex.quote

    def node(self, name: str) -> Node:
        if name not in self.nodes:
            raise RemoteError(f"{name!r} is not a node of the stack (nodes: {', '.join(self.nodes)})")
        return self.nodes[name]

    def on_each(self, names: list[str], work: Any) -> dict[str, Any]:
        """work(node) on each node at once; a node's RemoteError becomes its value."""
        with ThreadPoolExecutor(max_workers=min(16, len(names) or 1)) as pool:
            futures = {name: pool.submit(work, self.nodes[name]) for name in names}
        results: dict[str, Any] = {}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except RemoteError as error:
                results[name] = error
        return results

    # -- Patroni
    def patronictl(self, args: str) -> str:
        """patronictl as the owner of Patroni's configuration (rs_as_owner: root never runs it against a file
        another user may write). Values from the DCS in `args` go after `--`."""
        config = self.q(self.stack.cluster.patroni_config)
        return f"rs_as_owner {config} timeout 60 patronictl -c {config} {args}"

    def members(self, prefer: str | None = None) -> list[dict[str, Any]]:
        """`patronictl list -f json` from the first node that answers (`prefer` first)."""
        names = sorted(self.nodes, key=lambda n: n != prefer)
        errors = []
        for name in names:
            try:
                out = self.nodes[name].check(self.patronictl("list -f json"), what="patronictl list")
                members: list[dict[str, Any]] = loads(out or "[]")
                if not isinstance(members, list) or not all(
                        isinstance(m, dict) and isinstance(m.get("Member"), str) for m in members):
                    raise ValueError(f"{name}: patronictl list: not a list of members")  # the DCS is Patroni's
                return members
            except (RemoteError, ValueError) as error:
                errors.append(str(error))
        raise RemoteError("no node could list the Patroni cluster:\n" + "\n".join(errors))

    @staticmethod
    def leader_of(members: list[dict[str, Any]]) -> str | None:
        leaders = [str(m["Member"]) for m in members if m.get("Role") == "Leader" and m.get("State") == "running"]
        return leaders[0] if len(leaders) == 1 else None

    def scope(self, node: str) -> str:
        """Patroni's scope, from the node's patroni.yml."""
        config = self.q(self.stack.cluster.patroni_config)
        script = (f"rs_as_owner {config} timeout 60 python3 -c 'import sys, yaml\n"
                  "text = open(sys.argv[1], \"rb\").read(1048577)\n"
                  "if len(text) > 1048576: sys.exit(sys.argv[1] + \" is larger than 1 MiB: refused\")\n"
                  f"print(yaml.safe_load(text)[\"scope\"])' {config}")
        return self.node(node).check(script, what="reading Patroni's scope").strip()

    # -- PostgreSQL and pgBackRest
    def as_postgres(self, command: str) -> str:
        return f"runuser -u postgres -- env --chdir=/ {command}"

    def pgbackrest_command(self, args: str, locked: bool = False) -> str:
        """pgBackRest on the stanza; `locked`: after pgbackup's backups, which all wait for one lock."""
        lock = f"flock --wait {NAMES.backup_lock_wait} {self.q(PATHS.backup_lock)} " if locked else ""
        return f"{lock}pgbackrest --stanza={self.q(self.stack.cluster.stanza)} {args}"

    def pgbackrest(self, args: str, locked: bool = False) -> str:
        """pgbackrest_command as postgres."""
        return self.as_postgres(self.pgbackrest_command(args, locked))

    def psql(self, query: str) -> str:
        cluster = self.stack.cluster
        return self.as_postgres(f"psql -XAtq -v ON_ERROR_STOP=1 -h {self.q(cluster.pg_socket_path)} "
                                f"-p {cluster.pg_port} -c {self.q(query)}")

    def sql(self, node: str, query: str) -> str:
        return self.node(node).check(self.psql(query), what="psql").strip()

    def info(self, node: str, timeout: int = 120) -> dict[str, Any]:
        """The stanza's `pgbackrest info` document, as `node` reads the repository."""
        out = self.node(node).check(f"timeout -k 5 {timeout} " + self.pgbackrest("--output=json info"),
                                    timeout=timeout + 30, what="pgbackrest info")
        stanzas: list[dict[str, Any]] = json.loads(out)
        if not stanzas:
            raise RemoteError(f"{node}: pgbackrest info knows no stanza {self.stack.cluster.stanza}")
        return stanzas[0]

    def newest_wal_time(self, node: str, info: dict[str, Any]) -> float | None:
        """When repo1's newest WAL segment reached the repository (its object's time), or None."""
        found = wal_listing_path(self.stack.cluster.stanza, info)
        if found is None:
            return None
        path, segment = found
        out = self.node(node).check(self.pgbackrest(f"--repo=1 --output=json repo-ls {self.q(path)}"),
                                    what="pgbackrest repo-ls")
        return newest_wal_time(json.loads(out), segment)

    def reachable(self, node: str, target: datetime | None) -> tuple[dict[str, Any], str]:
        """The one check of a target (None: the latest) against what repo1 can reach, as `node` reads it (its
        backups and newest archived WAL; a recoverable window may narrow it): the backup a restore to it starts
        from, and what the repository holds; ValueError naming the reachable range. `recover` and `extract`
        refuse with it."""
        info = self.info(node)
        held = holdings(info, self.newest_wal_time(node, info))
        backup = choose_backup(held, target)
        found = self.verified_window()
        if found is not None:
            narrow(found[1], found[0], target, backup)
        return backup, held.describe()

    def verified_window(self) -> tuple[str, RepoWindow] | None:
        """repo1's recoverable window as the newest verification on any node computed it, with that
        verification's time; None when none did (or its file is unreadable: `pgbackup status` says so)."""
        def read(node: Node) -> dict[str, Any] | None:
            text = self.read_text(node.name, PATHS.verify_state, user="postgres")
            try:
                return verify_result(text, node.name, time.time()) if isinstance(text, str) else None
            except ValueError:
                return None

        results = [r for r in self.on_each(list(self.nodes), read).values() if isinstance(r, dict)]
        if not results:
            return None
        newest = max(results, key=lambda r: float(r["epoch"]))
        window = newest["window"].get("1")
        return (f"{newest['time']} on {newest['node']}", window) if window is not None else None

    def read_text(self, node: str, path: str, user: str | None = "postgres") -> str | Unreadable | None:
        """A state file's text on the node, read by the one reader (pgbackup_cli/untrusted.py) as `user`, the
        file's owner (None: root, for root's own file in a root-owned directory), never through a link, at
        most NAMES.state_max_bytes; None when there is no such file, Unreadable when it is not one to read."""
        out = self.node(node).check(reader_command([path], user), what=f"reading {path}")
        return answers(out, [path])[path]

    def read_json(self, node: str, path: str, user: str | None = "postgres") -> dict[str, Any] | None:
        """The JSON object in a state file (read_text; nested at most MAX_DEPTH), None when there is no such
        file. UnreadableFile (a RemoteError naming the node and the path) when it is there but not that."""
        text = self.read_text(node, path, user)
        try:
            if isinstance(text, Unreadable):
                raise ValueError(text.reason)
            value = None if text is None else loads(text)
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"expected a JSON object, got {type(value).__name__}")
        except ValueError as error:
            raise UnreadableFile(f"{node}: {path} unreadable: {error}") from None
        return value

    def write_json(self, node: str, path: str, value: dict[str, Any]) -> None:
        """Atomically (temp file, then rename), root-owned 0600, in a directory only root can change (rs_mkdir
        and rs_write refuse anything else)."""
        q = self.q
        directory = path.rsplit("/", 1)[0]
        self.node(node).check(f"rs_mkdir {q(directory)} root root 0700; rs_write {q(path)} 0600 root root",
                              stdin=json.dumps(value, indent=1, sort_keys=True) + "\n", what=f"writing {path}")

