"""The files step's script (templates/scripts/files.sh.j2) run for real, as root, under bash.

The template is rendered with every path moved into a sandbox directory (the paths are values of the
layout, so the same script runs), and with `systemctl` and `systemd-tmpfiles` replaced by stubs that record
their arguments; stand-ins for pgBackRest's asynchronous archive workers are real processes of postgres. What it proves: the manifest arrives whole or nothing changes; a link planted by
postgres is refused and never followed; follow-up actions survive an interrupted run; files that leave the
manifest go; no old copy of a secret stays; a repository's passphrase is not changed under it; a running
archive worker finishes its run, and only one that outlives the grace is ended.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.layout import (
    ARCHIVE_WORKERS,
    DAEMON_RELOAD,
    NAMES,
    PATHS,
    TLS_RESTART,
    TMPFILES,
    Directory,
    Names,
    Paths,
)
from components.plan import FILE_ACTIONS
from components.remote import MANIFEST_MAGIC, NodeFile, manifest_text
from components.render import render_values

STUB = """#!/bin/bash
echo "$(basename "$0") $*" >>"${PGBACKUP_TEST_CALLS}"
if [[ "$(basename "$0") $1" == "systemctl daemon-reload" && -e "${PGBACKUP_TEST_FAIL_RELOAD:-/nonexistent}" ]]; then
  rm -f "${PGBACKUP_TEST_FAIL_RELOAD}"
  exit 1
fi
exit 0
"""


@dataclasses.dataclass
class Sandbox:
    root: Path
    paths: Paths
    directories: list[Directory]

    @staticmethod
    def at(path: str) -> Path:
        """A path of the moved layout (already inside the sandbox)."""
        return Path(path)

    def conf(self, cipher: str, repo_path: str = "/lab") -> NodeFile:
        content = (f"[global]\nrepo1-type=s3\nrepo1-s3-bucket=b\nrepo1-s3-endpoint=s3.example\nrepo1-path={repo_path}\n"
                   f"repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={cipher}\n")
        return NodeFile(self.paths.config, "0640", "root", "postgres", content, secret=True,
                        actions=(TLS_RESTART,))

    def unit(self, name: str, body: str = "[Unit]\n") -> NodeFile:
        return NodeFile(f"{self.paths.unit_dir}/{name}", "0644", "root", "root", body, actions=(DAEMON_RELOAD,))

    def key(self) -> NodeFile:
        return NodeFile(self.paths.tls_key, "0640", "root", "postgres", "KEY", secret=True, actions=(TLS_RESTART,))

    def tmpfiles(self) -> NodeFile:
        return NodeFile(self.paths.tmpfiles, "0644", "root", "root", "d /run/x\n", actions=(TMPFILES,))

    def run(self, files: list[NodeFile], *, stdin: str | None = None, fail_reload: bool = False,
            endpoints: tuple[tuple[str, int, str], ...] = (), names: Names = NAMES
            ) -> subprocess.CompletedProcess[str]:
        """`endpoints`: the repositories' (host, port, setting), repo1 first (default: none, nothing to reach)."""
        repos = [SimpleNamespace(index=i, offsite=setting == "offsite", setting=setting,
                                 storage=SimpleNamespace(endpoint_host=host, endpoint_port=port))
                 for i, (host, port, setting) in enumerate(endpoints, start=1)]
        script = render_values("scripts/files.sh.j2", {
            "step": "files", "node": SimpleNamespace(name="pg1"), "paths": self.paths, "directories": self.directories,
            "manifest_magic": MANIFEST_MAGIC, "names": names, "actions": FILE_ACTIONS,
            "tls_server": False, "repos": repos})
        calls = self.root / "calls"
        calls.write_text("")
        env = {**os.environ, "PATH": f"{self.root / 'bin'}:{os.environ['PATH']}", "PGBACKUP_TEST_CALLS": str(calls)}
        if fail_reload:
            (self.root / "fail-reload").touch()
            env["PGBACKUP_TEST_FAIL_RELOAD"] = str(self.root / "fail-reload")
        text = stdin if stdin is not None else manifest_text(files, [str(f.content) for f in files])
        return subprocess.run(["bash", "-c", script, "pgbackup-files"], input=text, capture_output=True,
                              text=True, env=env, check=False, timeout=60)

    def calls(self) -> list[str]:
        return (self.root / "calls").read_text().splitlines()


@pytest.fixture
def box() -> Iterator[Sandbox]:
    assert os.geteuid() == 0, "the files step runs as root: run the tests as root (CI does)"
    root = Path(tempfile.mkdtemp(prefix="pgbackup-files-", dir="/var/tmp"))
    root.chmod(0o755)  # postgres must reach the sandbox to plant its links, as on a node
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for tool in ("systemctl", "systemd-tmpfiles"):
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(0o755)
    moved = {f.name: str(root) + getattr(PATHS, f.name) for f in dataclasses.fields(Paths)}
    paths = Paths(**moved)
    for parent in ("etc/systemd", "etc", "var/lib", "usr/local/lib"):
        (root / parent).mkdir(parents=True, exist_ok=True)
    directories = [Directory(paths.config_dir, "root", "postgres", "0750"),
                   Directory(paths.tls_dir, "root", "postgres", "0750"),
                   Directory(paths.unit_dir, "root", "root", "0755"),
                   Directory(str(Path(paths.tmpfiles).parent), "root", "root", "0755")]
    try:
        yield Sandbox(root, paths, directories)
    finally:
        shutil.rmtree(root)


def owner_mode(path: Path) -> tuple[str, str, str]:
    st = path.lstat()
    import grp
    import pwd

    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, oct(stat.S_IMODE(st.st_mode))


def as_postgres(*command: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True)


def test_installs_root_owned_then_changes_nothing(box: Sandbox) -> None:
    files = [box.conf("pass-1"), box.key(), box.unit("a.service"), box.tmpfiles()]
    first = box.run(files)
    assert first.returncode == 0, first.stderr
    assert owner_mode(box.at(box.paths.config)) == ("root", "postgres", "0o640")
    assert owner_mode(box.at(box.paths.config_dir)) == ("root", "postgres", "0o750")
    assert owner_mode(box.at(box.paths.state_dir)) == ("root", "root", "0o700")
    assert "systemctl daemon-reload" in box.calls()
    assert any(c.startswith("systemd-tmpfiles --create") for c in box.calls())
    again = box.run(files)
    assert again.returncode == 0, again.stderr
    assert "files: 0 changed" in again.stdout
    assert box.calls() == []


def test_a_link_planted_by_postgres_is_refused_and_not_followed(box: Sandbox) -> None:
    """Issue 8.1: as an older pgbackup left it, /etc/pgbackrest belongs to postgres. Its links are refused."""
    assert box.run([box.conf("pass-1")]).returncode == 0
    config_dir, config = box.at(box.paths.config_dir), box.at(box.paths.config)
    os.chown(config_dir, _uid("postgres"), _gid("postgres"))
    victim = box.root / "root-owned-victim"
    victim.write_text("root's\n")
    victim.chmod(0o600)
    mine = config_dir / "postgres-file"
    as_postgres("sh", "-c", f"echo mine > {mine}")
    config.unlink()
    as_postgres("ln", "-s", str(mine), str(config))
    as_postgres("ln", "-s", str(victim), f"{config}.pgbackup-prev")

    result = box.run([box.conf("pass-1"), box.unit("new.service")])

    assert result.returncode != 0
    assert f"{config} is a symbolic link" in result.stderr
    assert victim.read_text() == "root's\n"
    assert owner_mode(victim) == ("root", "root", "0o600")
    assert mine.read_text() == "mine\n"
    assert not box.at(f"{box.paths.unit_dir}/new.service").exists(), "a file changed before the check failed"
    assert owner_mode(config_dir)[0] == "postgres", "nothing is touched when a check fails"


def test_a_cut_manifest_changes_nothing(box: Sandbox) -> None:
    files = [box.conf("pass-1"), box.unit("a.service")]
    whole = manifest_text(files, [str(f.content) for f in files])
    cut = whole[: whole.rindex(" ") + 5]  # the last line's content cut short, as a dropped connection would
    result = box.run(files, stdin=cut)
    assert result.returncode != 0
    assert "incomplete" in result.stderr
    assert not box.at(box.paths.config).exists()


def test_follow_up_actions_survive_an_interrupted_run(box: Sandbox) -> None:
    files = [box.unit("a.service")]
    assert box.run(files).returncode == 0
    files = [box.unit("a.service", "[Unit]\nDescription=changed\n")]
    interrupted = box.run(files, fail_reload=True)  # the unit is replaced, then daemon-reload fails
    assert interrupted.returncode != 0
    assert "Description=changed" in box.at(f"{box.paths.unit_dir}/a.service").read_text()
    rerun = box.run(files)
    assert rerun.returncode == 0, rerun.stderr
    assert "files: 0 changed" in rerun.stdout
    assert "systemctl daemon-reload" in box.calls(), "the reload the interrupted run owed was never done"


def test_files_that_leave_the_manifest_are_removed(box: Sandbox) -> None:
    """E.g. backupStandby turned off: the TLS key and the TLS server's unit must not stay behind."""
    assert box.run([box.conf("pass-1"), box.key(), box.unit("pgbackup-tls-server.service")]).returncode == 0
    result = box.run([box.conf("pass-1")])
    assert result.returncode == 0, result.stderr
    assert not box.at(box.paths.tls_key).exists()
    assert not box.at(f"{box.paths.unit_dir}/pgbackup-tls-server.service").exists()
    assert "systemctl disable --now --quiet pgbackup-tls-server.service" in box.calls()
    assert "systemctl daemon-reload" in box.calls()


def test_no_old_copy_of_a_secret_is_kept(box: Sandbox) -> None:
    assert box.run([box.conf("pass-1", "/a"), box.unit("a.service")]).returncode == 0
    stale = box.at(box.paths.config + ".pgbackup-prev")
    stale.write_text("repo1-cipher-pass=left-by-an-older-pgbackup\n")
    result = box.run([box.conf("pass-1", "/b"), box.unit("a.service", "[Unit]\nDescription=2\n")])
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert box.at(f"{box.paths.unit_dir}/a.service.pgbackup-prev").read_text() == "[Unit]\n"


def test_a_new_passphrase_for_an_existing_repository_is_refused(box: Sandbox) -> None:
    assert box.run([box.conf("pass-1")]).returncode == 0
    before = box.at(box.paths.config).read_bytes()
    refused = box.run([box.conf("pass-2")])
    assert refused.returncode != 0
    assert "pgbackup:cipherPass: repo1 (bucket b at s3.example, path /lab) was created with another" in refused.stderr
    assert "pass-1" not in refused.stderr + refused.stdout
    assert "pass-2" not in refused.stderr + refused.stdout
    assert box.at(box.paths.config).read_bytes() == before
    # A new repository path with the new passphrase: a new repository, allowed.
    assert box.run([box.conf("pass-2", "/lab-2")]).returncode == 0


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel completes them from the backlog)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # free again once closed: nothing listens there


def test_reachable_endpoints_let_the_files_land(box: Sandbox, listening: int) -> None:
    result = box.run([box.conf("pass-1")], endpoints=(("127.0.0.1", listening, "storage"),
                                                      ("localhost", listening, "offsite")))
    assert result.returncode == 0, result.stderr
    assert box.at(box.paths.config).exists()


@pytest.mark.parametrize(("host", "why"), [("127.0.0.1", "Connection refused"),
                                           ("endpoint.invalid", "Name or service not known")])
def test_an_endpoint_this_node_cannot_reach_is_named_before_anything_changes(
        box: Sandbox, listening: int, host: str, why: str) -> None:
    assert box.run([box.conf("pass-1")]).returncode == 0
    before = box.at(box.paths.config).read_bytes()
    port = closed_port()
    started = time.monotonic()
    result = box.run([box.conf("pass-1", repo_path="/elsewhere"), box.unit("new.service")],
                     endpoints=(("127.0.0.1", listening, "storage"), (host, port, "offsite")))
    assert time.monotonic() - started < NAMES.endpoint_connect_timeout
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"pgbackup: step files on node pg1: repo2 (pgbackup:offsite): this node cannot open a connection to the "
        f"endpoint {host}:{port} ({why}); check pgbackup:offsite's endpoint (or provider and region) and this "
        f"node's route to it. Nothing was changed.")
    assert box.at(box.paths.config).read_bytes() == before
    assert not box.at(f"{box.paths.unit_dir}/new.service").exists()
    assert box.calls() == []


class Worker:
    """A stand-in for one of pgBackRest's asynchronous archive workers: a process of `user` whose command line
    matches the rendered pattern, which runs `seconds` and then leaves `marker` (a worker ended early leaves
    none)."""

    def __init__(self, box: Sandbox, tag: str, seconds: float, user: str = "postgres") -> None:
        workers = box.root / "workers"
        workers.mkdir(exist_ok=True)
        workers.chmod(0o777)  # any user's worker leaves its marker here
        self.marker = workers / f"{user}.finished"
        name = f"{tag} --stanza=s archive-push:async"
        self.process = subprocess.Popen(
            ["runuser", "-u", user, "--", "bash", "-c", 'exec -a "$0" bash -c "sleep $1 && touch \"$2\"" "$0" "$@"',
             name, str(seconds), str(self.marker)])
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-u", user, "-f", tag], check=False, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the stand-in worker did not start"
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            subprocess.run(["pkill", "-f", str(self.marker)], check=False)  # its bash (sleep ends alone)
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def tag() -> str:
    """A name only this test's workers carry (a lab node's real workers are never matched)."""
    return f"pgbackup-test-worker-{os.getpid()}-{time.monotonic_ns()}"


def installed(box: Sandbox, tag: str, grace: int) -> Names:
    """pgBackRest's configuration installed, with the worker pattern of `tag` and `grace`: the names to render
    the step with."""
    names = dataclasses.replace(NAMES, archive_worker_pattern=f"{tag} .*archive-(push|get):async",
                                archive_worker_grace=grace)
    assert box.run([conf_with_workers(box, "/lab")], names=names).returncode == 0
    return names


def conf_with_workers(box: Sandbox, repo_path: str) -> NodeFile:
    """pgBackRest's configuration with the follow-up actions the program gives it."""
    return dataclasses.replace(box.conf("pass-1", repo_path=repo_path), actions=(TLS_RESTART, ARCHIVE_WORKERS))


def timed_change(box: Sandbox, names: Names) -> tuple[str, float]:
    """pgBackRest's configuration changed: the step's output and the seconds it took."""
    started = time.monotonic()
    result = box.run([conf_with_workers(box, "/new")], names=names)
    assert result.returncode == 0, result.stderr
    return result.stdout, time.monotonic() - started


def test_a_running_archive_worker_finishes_its_run_before_the_step_ends(box: Sandbox, tag: str) -> None:
    """Ending a worker mid-run made its archive_command wait out archive-timeout (60 s) and fail once: the
    key rotation's lab test saw that failure. The step waits for the worker instead."""
    names = installed(box, tag, grace=20)
    worker = Worker(box, tag, seconds=2)
    try:
        output, took = timed_change(box, names)
        assert "pgBackRest configuration changed (1 archive worker(s) running, 0 ended after 20 s)" in output
        assert worker.marker.exists(), "the worker was ended before it finished its run"
        assert 1 < took < 15, took
    finally:
        worker.stop()


def test_an_archive_worker_still_running_after_the_grace_is_ended(box: Sandbox, tag: str) -> None:
    names = installed(box, tag, grace=2)
    stuck = Worker(box, tag, seconds=120)
    not_postgres = Worker(box, tag, seconds=120, user="nobody")
    try:
        output, took = timed_change(box, names)
        assert "pgBackRest configuration changed (1 archive worker(s) running, 1 ended after 2 s)" in output
        stuck.process.wait(timeout=10)
        assert not stuck.marker.exists()
        assert 2 <= took < 8, took
        assert not_postgres.alive(), "a process of another user was ended"
    finally:
        stuck.stop()
        not_postgres.stop()


def test_no_archive_worker_running_no_wait(box: Sandbox, tag: str) -> None:
    output, took = timed_change(box, installed(box, tag, grace=20))
    assert "pgBackRest configuration changed (0 archive worker(s) running, 0 ended after 20 s)" in output
    assert took < 5, took


def test_manifest_lines_carry_base64_content() -> None:
    files = [NodeFile("/x", "0644", "root", "root", "a b\nc", actions=(DAEMON_RELOAD, TLS_RESTART))]
    text = manifest_text(files, ["a b\nc"])
    line = text.splitlines()[1].split(" ")
    assert line[:6] == ["/x", "0644", "root", "root", "0", "daemon-reload,tls-restart"]
    assert base64.b64decode(line[6]) == b"a b\nc"


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


def run_patroni_local(box: Sandbox, config: Path, patronictl_ok: bool) -> subprocess.CompletedProcess[str]:
    script = render_values("scripts/patroni-local.sh.j2", {
        "step": "patroni-local", "node": SimpleNamespace(name="pg1"), "cluster": SimpleNamespace(patroni_config=str(config)),
        "methods": ["pgbackrest", "basebackup"],
        "method": {"command": "/usr/bin/pgbackrest --stanza=s --delta restore", "keep_data": True}})
    (box.root / "bin" / "patronictl").write_text(f"#!/bin/sh\nexit {0 if patronictl_ok else 1}\n")
    (box.root / "bin" / "patronictl").chmod(0o755)
    env = {**os.environ, "PATH": f"{box.root / 'bin'}:{os.environ['PATH']}",
           "PGBACKUP_TEST_CALLS": str(box.root / "calls")}
    return subprocess.run(["bash", "-c", script, "pgbackup-patroni-local"], capture_output=True, text=True,
                          env=env, check=False, timeout=60)


def patroni_dir(box: Sandbox) -> Path:
    directory = box.root / "etc" / "patroni"
    directory.mkdir()
    os.chown(directory, _uid("postgres"), _gid("postgres"))  # as Patroni's packages may leave it
    config = directory / "patroni.yml"
    config.write_text("scope: s\npostgresql:\n  data_dir: /d\n")
    os.chown(config, _uid("postgres"), _gid("postgres"))
    config.chmod(0o600)
    return config


def test_patroni_local_rollback_keeps_the_owner_patroni_needs(box: Sandbox) -> None:
    config = patroni_dir(box)
    original = config.read_text()
    result = run_patroni_local(box, config, patronictl_ok=False)
    assert result.returncode != 0
    assert "the previous file is restored" in result.stderr
    assert config.read_text() == original
    assert owner_mode(config) == ("postgres", "postgres", "0o600")
    ok = run_patroni_local(box, config, patronictl_ok=True)
    assert ok.returncode == 0, ok.stderr
    assert "pgbackrest" in config.read_text()
    assert owner_mode(config) == ("postgres", "postgres", "0o600")
    assert "systemctl reload patroni.service" in box.calls()


def test_patroni_local_refuses_a_planted_link(box: Sandbox) -> None:
    config = patroni_dir(box)
    victim = box.root / "root-owned-victim"
    victim.write_text("root's\n")
    as_postgres("ln", "-s", str(victim), f"{config}.pgbackup-prev")
    result = run_patroni_local(box, config, patronictl_ok=True)
    assert result.returncode != 0
    assert f"{config}.pgbackup-prev is a symbolic link" in result.stderr
    assert victim.read_text() == "root's\n"
    assert owner_mode(victim)[0] == "root"
