"""A node's directories in a sandbox, and an adversary who owns some of them: for tests that run, for real and
as root, code that runs as root on a node (tests/test_adversary_collectors.py; the shell steps can share it).

    box = NodeSandbox.create()          # as root; box.remove() at the end (tests: the `node_sandbox` fixture)
    box.paths                           # components.layout.Paths, every path moved under box.root
    box.sentinel, box.sentinel_dir      # root-only (0600 file, 0700 directory): what links are planted to
    before = box.snapshot()             # everything but the directories other users own
    with box.adversary("prometheus", [dir, ...], names=[path, ...]):
        ...run root's code, as many times as a race needs...
    box.assert_untouched(before)        # sentinels and everything root owns: same content, owner and mode

The directories have the owners a Debian node gives them: /var/lib/prometheus and its node-exporter directory
are `prometheus`'s (0755, as the prometheus-node-exporter package makes them), /var/lib/pgbackrest and the
PostgreSQL data directory `postgres`'s; everything else is root's. The adversary is a process of that user
that, until the block ends, plants at each of `names` (and replaces every new entry that appears in its
directories: temporary names too, however they are chosen, as soon as inotify reports them) in turn a link
to the sentinel file, a link to the sentinel directory, a FIFO and a 10 GB sparse file, each renamed into
place atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from components.layout import PATHS, Paths

HUGE_BYTES = 10 * 1024**3
# What the sentinel file holds: valid JSON of a verification state that no real run writes (checksum 777),
# so that a reader that followed a link to it shows it.
SENTINEL_TEXT = json.dumps({"time": "2026-01-01T00:00:00Z", "ok": False, "node": "sentinel",
                            "errors": {"checksum": 777, "missing_wal": 0, "other": 0},
                            "repos": {"1": {"errors": {"checksum": 777, "missing_wal": 0, "other": 0}}}}) + "\n"

# The adversary's loop (run by /usr/bin/python3 as the user). argv[1]: JSON of its orders. It learns of every new
# name in its directories from inotify (a writer's temporary file, whatever its name) and renames a link it
# prepared beforehand over it at once; a sweep of the directories every few milliseconds catches the rest.
_ADVERSARY = r"""
import ctypes, json, os, select, stat, struct, sys
orders = json.loads(sys.argv[1])
planted, count = set(), 0
kinds = ("link-file", "link-dir", "fifo", "huge")
fresh = ("link-file", "link-file", "link-dir", "link-file", "fifo")

def make(directory, kind):
    global count
    count += 1
    tmp = os.path.join(directory, f".adv-{os.getpid()}-{count}")
    if kind == "link-file":
        os.symlink(orders["file"], tmp)
    elif kind == "link-dir":
        os.symlink(orders["dir"], tmp)
    elif kind == "fifo":
        os.mkfifo(tmp, 0o666)
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.ftruncate(fd, orders["huge"])
        os.close(fd)
    info = os.lstat(tmp)
    planted.add((info.st_dev, info.st_ino))
    return tmp

def plant(path, kind, tmp=None):
    try:
        tmp = tmp or make(os.path.dirname(path), kind)
        os.rename(tmp, path)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, TypeError):
            pass
        return False

def foreign(path):
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) not in planted and not stat.S_ISDIR(info.st_mode)

libc = ctypes.CDLL(None, use_errno=True)
watch = libc.inotify_init1(os.O_NONBLOCK)
where = {libc.inotify_add_watch(watch, d.encode(), 0x100 | 0x80): d for d in orders["dirs"]}  # CREATE, MOVED_TO
spare = {d: make(d, "link-file") for d in orders["dirs"]}
round_ = 0
for path in orders["names"]:
    plant(path, kinds[round_ % len(kinds)])
print("ready", flush=True)
while not os.path.exists(orders["stop"]):
    round_ += 1
    if select.select([watch], [], [], 0.005)[0]:
        data = os.read(watch, 65536)
        offset = 0
        while offset < len(data):
            wd, mask, cookie, size = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16:offset + 16 + size].rstrip(b"\0").decode()
            offset += 16 + size
            directory = where.get(wd)
            if directory is None or not name or name.startswith(".adv-"):
                continue
            path = os.path.join(directory, name)
            if foreign(path) and plant(path, None, spare[directory]):
                spare[directory] = make(directory, fresh[round_ % len(fresh)])
    for directory in orders["dirs"]:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for name in entries:
            path = os.path.join(directory, name)
            if not name.startswith(".adv-") and foreign(path):
                plant(path, kinds[round_ % len(kinds)] if path in orders["names"] else fresh[round_ % len(fresh)])
    for path in orders["names"]:
        if not os.path.lexists(path):
            plant(path, kinds[round_ % len(kinds)])
"""

Snapshot = dict[str, tuple[int, int, int, str]]


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def gid(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


def as_user(user: str, *command: str, stdin: str | None = None, timeout: float = 30
            ) -> subprocess.CompletedProcess[str]:
    """`command` run as `user` (runuser), `stdin` its input, its output captured; fails the caller when it fails."""
    return subprocess.run(["runuser", "-u", user, "--", *command], input=stdin, capture_output=True, text=True,
                          check=True, timeout=timeout)


@dataclasses.dataclass
class NodeSandbox:
    root: Path
    paths: Paths
    pg_data: str
    sentinel: Path
    sentinel_dir: Path
    others: dict[str, str]
    """The directories other users own: {path: user}."""

    @staticmethod
    def create(prefix: str = "pgbackup-adversary-") -> NodeSandbox:
        assert os.geteuid() == 0, "root's code runs as root: run these tests as root (CI does)"
        root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
        root.chmod(0o755)  # the other users reach their directories, as on a node
        paths = Paths(**{f.name: str(root) + getattr(PATHS, f.name) for f in dataclasses.fields(Paths)})
        pg_data = f"{root}/var/lib/postgresql/17/main"
        others = {str(Path(paths.metrics_file).parent.parent): "prometheus",
                  str(Path(paths.metrics_file).parent): "prometheus",
                  paths.home: "postgres", f"{root}/var/lib/postgresql": "postgres",
                  f"{root}/var/lib/postgresql/17": "postgres", pg_data: "postgres",
                  f"{pg_data}/pg_wal": "postgres", f"{pg_data}/pg_wal/archive_status": "postgres"}
        for directory in sorted(others):
            parent = Path(directory).parent
            parent.mkdir(parents=True, exist_ok=True)
            Path(directory).mkdir()
        for directory, user in others.items():
            os.chown(directory, uid(user), gid(user))
            os.chmod(directory, 0o700 if directory == pg_data else 0o750 if directory == paths.home else 0o755)
        sentinel = root / "sentinel"
        sentinel.write_text(SENTINEL_TEXT)
        sentinel.chmod(0o600)
        sentinel_dir = root / "sentinel-dir"
        sentinel_dir.mkdir(mode=0o700)
        (sentinel_dir / "inside").write_text("root's\n")
        (sentinel_dir / "inside").chmod(0o600)
        return NodeSandbox(root, paths, pg_data, sentinel, sentinel_dir, others)

    def remove(self) -> None:
        shutil.rmtree(self.root)

    def owned_by(self, path: str) -> str:
        """The user a path's directory belongs to in the sandbox (root unless listed in `others`)."""
        return self.others.get(str(Path(path).parent), "root")

    def snapshot(self) -> Snapshot:
        """Owner, group, mode and content (sha256, or a link's target) of everything in the sandbox but the
        directories other users own and what is in them."""
        result: Snapshot = {}
        for current, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if os.path.join(current, d) not in self.others]
            for name in [".", *dirs, *files]:
                path = os.path.normpath(os.path.join(current, name))
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    with open(path, "rb") as handle:
                        content = hashlib.sha256(handle.read()).hexdigest()
                elif stat.S_ISLNK(info.st_mode):
                    content = "-> " + os.readlink(path)
                else:
                    content = stat.filemode(info.st_mode)
                result[path] = (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), content)
        return result

    def assert_untouched(self, before: Snapshot) -> None:
        after = self.snapshot()
        changed = {path: (before.get(path), after.get(path)) for path in before.keys() | after.keys()
                   if before.get(path) != after.get(path)}
        assert not changed, f"root changed what it does not own: {changed}"
        info = self.sentinel.lstat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600)
        assert self.sentinel.read_text() == SENTINEL_TEXT

    @contextmanager
    def adversary(self, user: str, directories: Sequence[str], names: Sequence[str] = ()) -> Iterator[None]:
        """While the block runs, `user` plants and keeps replacing (see the module's docstring)."""
        stop = self.root / f"stop-{user}-{time.monotonic_ns()}"
        orders = {"dirs": list(directories), "names": list(names), "file": str(self.sentinel),
                  "dir": str(self.sentinel_dir), "huge": HUGE_BYTES, "stop": str(stop)}
        process = subprocess.Popen(["runuser", "-u", user, "--", "/usr/bin/python3", "-c", _ADVERSARY,
                                    json.dumps(orders)], stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready", f"the adversary ({user}) did not start"
            yield
        finally:
            stop.touch()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            stop.unlink()
