"""An adversary for what runs as root on a node (issue 20, "The mechanism"): a sandbox with Debian's owners,
a root-only sentinel file and directory, stand-in binaries, and a local user (postgres, prometheus) that
plants links, FIFOs and huge sparse files wherever the directories it owns let it, before and during a run.

    box = make_sandbox(tmp_root)            # a Sandbox; box.cleanup() removes it
    scripts = box.step_scripts()            # the Pulumi program's step scripts, rendered as the program does
    before = box.snapshot()                 # the sentinels and everything outside the sandbox that a slip hits
    adversary = Adversary(box)
    points = adversary.points(targets)      # the names on the way to `targets` that another user can replace
    adversary.plant(points, "link-dir")     # KINDS: link-dir, link-file (to the sentinels), fifo, huge
    with adversary.racing(points):          # the same, again and again while the script runs
        result = box.run(script)            # bash, as root, stand-ins first on PATH, a timeout
    box.assert_unchanged(before)

Everything of the layout (components.layout.PATHS, pgData, Patroni's configuration) lives under box.root:
the scripts are rendered with the moved layout (`moved_layout` patches the layout the program reads), so the
same template text runs here as on a node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from unittest import mock

from components import plan
from components.config import Settings, parse_settings
from components.layout import DIRECTORIES, PATHS, Paths
from components.remote import NodeFile, manifest_text
from pgbackup_cli.remote import script_text
from pgbackup_testkit.harness import stack_config

SENTINEL_TEXT = "root's sentinel: nobody else may read or change this\n"
PG_VERSION = 15
HUGE = 1 << 40  # a 1 TiB sparse file: reading it whole never ends in a test's time

# Stand-ins. Each records "<user> <name> <args>" in $PGBACKUP_TEST_CALLS.
STUBS = {
    "systemctl": """case "$1" in
  is-active) exit 3 ;;
  list-timers | cat) exit 0 ;;
esac
exit 0""",
    "systemd-tmpfiles": "exit 0",
    # A transient unit runs its command at once, to its end (as systemd would, minus the waiting); its output
    # goes to the "journal" the journalctl stand-in prints.
    "systemd-run": """while [[ $# -gt 0 && "$1" != -- ]]; do shift; done
shift
"$@" </dev/null >>"${PGBACKUP_TEST_CALLS}.journal" 2>&1 || true
exit 0""",
    "pg_ctl": """for arg in "$@"; do [[ "$arg" == status ]] && exit 3; done
exit 0""",
    "pg_controldata": "echo 'Database cluster state:               shut down in recovery'",
    "psql": """case "$*" in
  *pg_is_in_recovery*) echo f ;;
  *archive_mode*) echo on ;;
esac""",
    "pgbackrest": """case "$*" in
  *" info"*) echo '[{"name": "main", "status": {"code": 0, "message": "ok"}, "repo": [{"key": 1, "status":'\
'{"code": 0}}], "backup": [{"label": "F", "database": {"repo-key": 1}},'\
' {"label": "G", "database": {"repo-key": 2}}]}]' ;;
  *repo-ls*) echo '{}' ;;
  *version*) echo "pgBackRest 2.45" ;;
esac
exit 0""",
    "patronictl": """case "$*" in
  *" list"*) echo '[{"Member": "pg1", "Role": "Leader", "State": "running", "TL": 1},'\
' {"Member": "pg2", "Role": "Replica", "State": "streaming", "TL": 1}]' ;;
  *edit-config*) cat >/dev/null ;;
esac
exit 0""",
    "dpkg-query": """echo "install ok installed 2.45-1" """,
    "apt-get": "exit 1",
    "journalctl": """cat -- "${PGBACKUP_TEST_CALLS}.journal" 2>/dev/null
exit 0""",
}
# The commands that act on a path: while the adversary races, it plants once more right before each that names
# a path in a directory it owns (as if it won every race between a check and an action), then the real
# command runs.
RACED = ("install", "mkdir", "chown", "chmod", "chgrp", "mv", "rm", "cp", "ln", "touch", "mktemp", "tee", "cat")
RACE_WRAPPER = """#!/bin/bash
if [[ -n "${{PGBACKUP_TEST_RACE:-}}" && "${{EUID}}" == 0 ]]; then
  IFS=: read -r -a dirs <<<"${{PGBACKUP_TEST_RACE_DIRS}}"
  for arg in "$@"; do
    for dir in "${{dirs[@]}}"; do
      if [[ "${{arg}}" == "${{dir}}"/* ]]; then
        bash "${{PGBACKUP_TEST_RACE}}" </dev/null >/dev/null 2>&1
        break 2
      fi
    done
  done
fi
exec /usr/bin/{name} "$@"
"""
STUB_HEAD = '#!/bin/bash\necho "$(id -un) $(basename "$0") $*" >>"${PGBACKUP_TEST_CALLS}"\n'


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def gid(group: str) -> int:
    return grp.getgrnam(group).gr_gid


@dataclasses.dataclass
class Sandbox:
    root: Path
    paths: Paths
    """components.layout's paths, moved under root."""
    settings: Settings
    """A valid stack whose pgData, Patroni configuration and socket lie under root (pgbackup:cluster)."""
    bin: Path
    sentinel_file: Path
    """root:root 0600, SENTINEL_TEXT."""
    sentinel_dir: Path
    """root:root 0755, holding `inside` (root:root 0644)."""
    server: socket.socket
    """What the repository endpoint (127.0.0.1:<port>) connects to."""
    race_dirs: str = ""
    """The directories the adversary acts in while it races, colon-separated."""
    race: Path | None = None
    """While set (Adversary.racing): a script the adversary runs right before each of RACED, a race won."""

    @property
    def pg_data(self) -> str:
        assert self.settings.cluster.pg_data is not None
        return self.settings.cluster.pg_data

    @property
    def patroni_config(self) -> str:
        return self.settings.cluster.patroni_config

    @property
    def calls_file(self) -> Path:
        return self.root / "calls"

    def calls(self) -> list[str]:
        return self.calls_file.read_text().splitlines()

    def env(self) -> dict[str, str]:
        # A node's PATH (the system's python3 with PyYAML, as on Debian), the stand-ins first.
        raced = f"{self.root / 'race-bin'}:" if self.race else ""
        return {**os.environ, "PATH": f"{raced}{self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "PGBACKUP_TEST_CALLS": str(self.calls_file), "PGBACKUP_LEADER_WAIT": "0",
                "PGBACKUP_TEST_RACE": str(self.race or ""), "PGBACKUP_TEST_RACE_DIRS": self.race_dirs}

    def run(self, script: str, stdin: str = "", timeout: float = 30, operator: bool = False
            ) -> subprocess.CompletedProcess[str]:
        """`script` under bash as root; `operator`: an operator command's node script (remote.script_text).
        subprocess.TimeoutExpired when it hangs."""
        text = script_text(script) if operator else script
        return subprocess.run(["bash", "-c", text, "pgbackup-adversary"], input=stdin, capture_output=True,
                              text=True, env=self.env(), check=False, timeout=timeout, cwd="/")

    # -- what the Pulumi program runs
    def moved(self, path: str) -> str:
        return f"{self.root}{path}"

    @contextlib.contextmanager
    def moved_layout(self) -> Iterator[None]:
        """components.* read the sandbox's layout while this lasts."""
        moved_dirs = {self.moved(k): dataclasses.replace(d, path=self.moved(d.path)) for k, d in DIRECTORIES.items()}
        install = tuple(dataclasses.replace(d, path=self.moved(d.path)) for d in plan.INSTALL_DIRECTORIES)
        with contextlib.ExitStack() as stack:
            for name, module in list(sys.modules.items()):
                if (name == "components" or name.startswith("components.")) and getattr(module, "PATHS", None) is PATHS:
                    stack.enter_context(mock.patch.object(module, "PATHS", self.paths))
            stack.enter_context(mock.patch.object(plan, "DIRECTORIES", moved_dirs))
            stack.enter_context(mock.patch.object(plan, "INSTALL_DIRECTORIES", install))
            yield

    def step_scripts(self, node: str = "pg1") -> dict[str, str]:
        """Every script the program runs on `node` (components.plan.plan_node), by step; `unschedule` is the
        schedule step's delete script."""
        with self.moved_layout():
            planned = plan.plan_node(self.settings, next(n for n in self.settings.cluster.nodes if n.name == node))
        scripts = {step: s.create for step, s in planned.scripts.items()}
        for step, s in planned.scripts.items():
            if s.delete:
                scripts["unschedule" if step == "schedule" else f"{step}-delete"] = s.delete
        return scripts

    def manifest(self, node: str = "pg1") -> str:
        """The files step's stdin for `node`: the planned files (placeholder content for the secret ones)."""
        with self.moved_layout():
            planned = plan.plan_node(self.settings, next(n for n in self.settings.cluster.nodes if n.name == node))
        files = [NodeFile(f.path, f.mode, f.owner, f.group, f.content if isinstance(f.content, str) else "x\n",
                          f.secret, f.actions) for f in planned.files]
        return manifest_text(files, [str(f.content) for f in files])

    # -- what must not change
    def snapshot(self) -> dict[str, Any]:
        """The sentinels (content, owner, mode) and the status of what lies outside the sandbox near it."""
        found: dict[str, Any] = {}
        for path in (self.sentinel_file, self.sentinel_dir, self.sentinel_dir / "inside"):
            st = path.lstat()
            found[str(path)] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), stat.S_IFMT(st.st_mode),
                                path.read_text() if path.is_file() else sorted(os.listdir(path)))
        for outside in OUTSIDE:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(outside)
                found[outside] = (st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns)
        return found

    def assert_unchanged(self, before: dict[str, Any]) -> None:
        after = self.snapshot()
        changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()
                   if before.get(k) != after.get(k)}
        assert not changed, f"root changed what it does not own: {changed}"

    def cleanup(self) -> None:
        self.server.close()
        shutil.rmtree(self.root, ignore_errors=True)


# Outside the sandbox: the real places a slip (an absolute path not moved, a followed link) would land in.
OUTSIDE = ("/etc", "/etc/pgbackrest", "/etc/patroni", "/etc/systemd/system", "/var/lib", "/var/lib/pgbackup",
           "/var/lib/pgbackrest", "/var/lib/postgresql", f"/var/lib/postgresql/{PG_VERSION}",
           f"/var/lib/postgresql/{PG_VERSION}/main", "/var/lib/prometheus", "/var/log", "/usr/local/lib",
           "/root")

# The sandbox's tree: (path under root, owner, group, mode), Debian's owners.
TREE = (
    ("etc", "root", "root", 0o755),
    ("etc/pgbackrest", "root", "postgres", 0o750),
    ("etc/patroni", "root", "root", 0o755),
    ("etc/systemd", "root", "root", 0o755),
    ("etc/systemd/system", "root", "root", 0o755),
    ("etc/tmpfiles.d", "root", "root", 0o755),
    ("etc/consul.d", "root", "root", 0o755),
    ("run", "root", "root", 0o755),
    ("run/postgresql", "postgres", "postgres", 0o2775),
    ("usr", "root", "root", 0o755),
    ("usr/local", "root", "root", 0o755),
    ("usr/local/lib", "root", "root", 0o755),
    ("var", "root", "root", 0o755),
    ("var/lib", "root", "root", 0o755),
    ("var/lib/postgresql", "postgres", "postgres", 0o755),
    (f"var/lib/postgresql/{PG_VERSION}", "postgres", "postgres", 0o755),
    (f"var/lib/postgresql/{PG_VERSION}/main", "postgres", "postgres", 0o700),
    ("var/lib/pgbackrest", "postgres", "postgres", 0o750),
    ("var/lib/prometheus", "prometheus", "prometheus", 0o755),
    ("var/lib/prometheus/node-exporter", "prometheus", "prometheus", 0o775),
    ("var/log", "root", "root", 0o755),
    ("var/log/pgbackrest", "postgres", "postgres", 0o750),
    ("var/log/postgresql", "postgres", "postgres", 0o1775),
    ("var/spool", "root", "root", 0o755),
    ("var/spool/pgbackrest", "postgres", "postgres", 0o750),
)

PATRONI_YML = """scope: lab
name: pg1
restapi: {listen: 127.0.0.1:8008, connect_address: 127.0.0.1:8008}
postgresql:
  data_dir: /x
  create_replica_methods: [basebackup]
"""


def make_sandbox(parent: str = "/var/tmp", loose: bool = False) -> Sandbox:  # noqa: S108 -- root-owned, sticky
    """A fresh sandbox under `parent` (which must be a root-owned path postgres can traverse). `loose`: Patroni's
    configuration directory belongs to postgres (a common hand-made setup) instead of root."""
    assert os.geteuid() == 0, "the adversary runs scripts as root: run the tests as root (CI does)"
    root = Path(tempfile.mkdtemp(prefix="pgbackup-adversary-", dir=parent))
    root.chmod(0o755)
    for path, owner, group, mode in TREE:
        (root / path).mkdir()
        os.chown(root / path, uid(owner), gid(group))
        (root / path).chmod(mode)
    if loose:
        os.chown(root / "etc/patroni", uid("postgres"), gid("postgres"))
    pg_data = root / f"var/lib/postgresql/{PG_VERSION}/main"
    (pg_data / "PG_VERSION").write_text(f"{PG_VERSION}\n")
    os.chown(pg_data / "PG_VERSION", uid("postgres"), gid("postgres"))
    config = root / "etc/patroni/patroni.yml"
    config.write_text(PATRONI_YML)
    os.chown(config, uid("postgres"), gid("postgres"))
    config.chmod(0o600)
    sentinel_file, sentinel_dir = root / "sentinel-file", root / "sentinel-dir"
    sentinel_file.write_text(SENTINEL_TEXT)
    sentinel_file.chmod(0o600)
    sentinel_dir.mkdir(mode=0o755)
    (sentinel_dir / "inside").write_text(SENTINEL_TEXT)
    (sentinel_dir / "inside").chmod(0o644)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(STUB_HEAD + body + "\n")
        (bin_dir / name).chmod(0o755)
    race_bin = root / "race-bin"
    race_bin.mkdir()
    for name in RACED:
        (race_bin / name).write_text(RACE_WRAPPER.format(name=name))
        (race_bin / name).chmod(0o755)
    calls = root / "calls"
    calls.write_text("")
    calls.chmod(0o666)  # the stand-ins run as postgres too
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    port = server.getsockname()[1]
    settings = settings_for(root, port)
    moved = Paths(**{f.name: f"{root}{getattr(PATHS, f.name)}" for f in dataclasses.fields(Paths)})
    return Sandbox(root, moved, settings, bin_dir, sentinel_file, sentinel_dir, server)


def settings_for(root: Path, port: int) -> Settings:
    cluster = cast(dict[str, Any], stack_config()["cluster"])
    config = stack_config(
        storage={"provider": "s3", "endpoint": f"127.0.0.1:{port}", "region": "eu-central-1", "bucket": "pg-backups"},
        cluster={**cluster, "pgVersion": PG_VERSION, "pgData": f"{root}/var/lib/postgresql/{PG_VERSION}/main",
                 "patroniConfig": f"{root}/etc/patroni/patroni.yml", "pgSocketPath": f"{root}/run/postgresql"},
        retention={"full": 2, "monthly": 3},
        monitoring={"consul": True},
    )
    storage, cluster_config, schedule, retention, pgbackrest, monitoring, drill = parse_settings(config)
    nothing = cast(Any, None)
    return Settings(storage, cluster_config, schedule, retention, pgbackrest, monitoring, drill, nothing, nothing,
                    nothing, nothing)


KINDS = ("link-dir", "link-file", "fifo", "huge")
"""What the adversary plants; "alternate" cycles through them, point by point."""


class Adversary:
    """The users that own directories in the sandbox, acting in them as themselves."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box

    def points(self, targets: list[str]) -> list[tuple[str, str]]:
        """(user, path) for every name on the way to each target (the target included) whose directory a
        user other than root owns: that user can replace the name with anything."""
        found: dict[str, str] = {}
        root = str(self.box.root)
        for target in targets:
            assert target.startswith(root + "/"), f"{target} is not in the sandbox"
            parts = target[len(root) + 1:].split("/")
            for i in range(len(parts)):
                path = "/".join([root, *parts[: i + 1]])
                parent = os.path.dirname(path)
                try:
                    owner = os.lstat(parent).st_uid
                except FileNotFoundError:
                    break
                if owner != 0 and not os.path.islink(parent):
                    found.setdefault(path, pwd.getpwuid(owner).pw_name)
        return [(user, path) for path, user in found.items()]

    def _script(self, points: list[tuple[str, str]], kind: str, user: str) -> str:
        lines = []
        for i, (owner, path) in enumerate(points):
            if owner != user:
                continue
            q = _q(path)
            what = kind if kind != "alternate" else KINDS[i % len(KINDS)]
            lines.append(f"rm -rf -- {q} 2>/dev/null || mv -T -- {q} {q}.adversary-$RANDOM 2>/dev/null || true")
            if what.startswith("link"):
                target = self.box.sentinel_file if what == "link-file" else self.box.sentinel_dir
                lines.append(f"ln -sfn -- {_q(str(target))} {q} 2>/dev/null || true")
            elif what == "fifo":
                lines.append(f"mkfifo -- {q} 2>/dev/null || true")
            else:
                lines.append(f"truncate -s {HUGE} -- {q} 2>/dev/null || true")
        return "\n".join(lines)

    def plant(self, points: list[tuple[str, str]], kind: str) -> None:
        """As each point's user: the name becomes a link to the sentinel directory or file, a FIFO or a huge
        sparse file (KINDS); "alternate" cycles through them."""
        for user in sorted({u for u, _ in points}):
            subprocess.run(["runuser", "-u", user, "--", "bash", "-c", self._script(points, kind, user)],
                           check=True, cwd="/", timeout=30)

    @contextlib.contextmanager
    def racing(self, points: list[tuple[str, str]], kind: str = "link-dir") -> Iterator[None]:
        """While this lasts, each point's user plants again and again (a process per user), and once more
        right before each command of RACED that root runs."""
        race = self.box.root / "race.sh"
        race.write_text("".join(f"runuser -u {user} -- bash -c {_q(self._script(points, kind, user))} || true\n"
                                for user in sorted({u for u, _ in points})))
        self.box.race = race if points else None
        self.box.race_dirs = ":".join(sorted({os.path.dirname(path) for _, path in points}))
        procs = [subprocess.Popen(["runuser", "-u", user, "--", "bash", "-c",
                                   f"while true; do {self._script(points, kind, user)}\nsleep 0.05; done"],
                                  cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
                 for user in sorted({u for u, _ in points})]
        try:
            yield
        finally:
            self.box.race = None
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _q(text: str) -> str:
    return shlex.quote(text)


def content_attack(path: Path, user: str) -> None:
    """As `user` (who owns the file), its content becomes a huge sparse file."""
    subprocess.run(["runuser", "-u", user, "--", "truncate", "-s", str(HUGE), "--", str(path)], check=True, cwd="/")


__all__ = ["KINDS", "SENTINEL_TEXT", "Adversary", "Sandbox", "content_attack", "make_sandbox"]
