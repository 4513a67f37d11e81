"""Root's node programs in Python, run for real as root against an adversary (issue 20, item 3 and the Low
item on `publish`): the metrics collector (root, every 5 minutes), the verification's `publish` (root, from
ExecStopPost=+) and the check commands (Consul's agent, which may run as root).

Each is rendered as the program renders it, with the layout's paths moved into a sandbox whose directories
have a Debian node's owners (pgbackup_testkit/adversary.py): node_exporter's directory is `prometheus`'s, the
state files' `postgres`'s. Before and during each run those users plant, at every name the program touches
and at every new name that appears (its temporary files), links to a root-only sentinel file and directory,
FIFOs and 10 GB sparse files. Afterwards the sentinels and everything root owns are as they were, and every
run ended in time. The drill runs as postgres (pgbackup-drill.service: User=postgres), never as root.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
import types
from pathlib import Path
from typing import Any

import pytest

from components.context import NodeContext
from components.context import node_context as template_context
from components.monitoring import check_script
from components.proofs import verify_context
from components.render import render, render_values
from pgbackup_testkit.adversary import NodeSandbox, as_user, gid, uid
from tests.test_hostile import valid_settings

RUNS = 30  # the review's race hit within 10 runs; against today's collectors this one hits within 1 to 10
TIMEOUT = 20
STUB_RUNUSER = '#!/bin/bash\nwhile [[ $# -gt 0 && $1 != -- ]]; do shift; done\nshift\nexec "$@"\n'
INFO = [{"name": "main", "status": {"code": 0},
         "backup": [{"type": "full", "timestamp": {"start": 1795660000, "stop": 1795669200},
                     "database": {"id": 1, "repo-key": 1},
                     "info": {"size": 33554432, "delta": 33554432,
                              "repository": {"size": 4194304, "delta": 4194304, "delta-map": 96}}}],
         "archive": []}]
STUB_PGBACKREST = f"#!/bin/bash\ncat <<'JSON'\n{json.dumps(INFO)}\nJSON\n"
STATE = {"time": "2026-11-26T05:00:00Z", "ok": True, "node": "pg1",
         "errors": {"checksum": 0, "missing_wal": 0, "other": 0},
         "repos": {"1": {"errors": {"checksum": 0, "missing_wal": 0, "other": 0}}}}


def programs(box: NodeSandbox) -> dict[str, Path]:
    """The rendered programs (and stand-ins for runuser and pgbackrest), in the sandbox's bin directory."""
    settings = valid_settings()
    ctx: NodeContext = dataclasses.replace(
        template_context(settings, settings.cluster.nodes[0]), paths=box.paths,
        primary_url="http://127.0.0.1:9/primary",  # refused at once: this node is no leader
        cluster=settings.cluster.model_copy(update={"pg_data": box.pg_data}))
    bin_dir = box.root / "bin"
    bin_dir.mkdir(exist_ok=True)
    files = {"metrics": render("monitoring/pgbackup-metrics.py.j2", ctx),
             "verify": render("monitoring/pgbackup-verify.py.j2", verify_context(settings, ctx)),
             "check": check_script(settings, ctx), "runuser": STUB_RUNUSER, "pgbackrest": STUB_PGBACKREST}
    for name, text in files.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {name: bin_dir / name for name in files}


def run(box: NodeSandbox, *command: str | Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """One run as root (with the stand-ins first on PATH), and how long it took."""
    started = time.monotonic()
    env = {"PATH": f"{box.root / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    result = subprocess.run(["/usr/bin/python3", *map(str, command)], capture_output=True, text=True, env=env,
                            timeout=TIMEOUT, check=False)
    return result, time.monotonic() - started


def sentinels(box: NodeSandbox) -> dict[str, object]:
    file, directory = box.sentinel.lstat(), box.sentinel_dir.lstat()
    return {"file owner": (file.st_uid, file.st_gid), "file mode": oct(file.st_mode),
            "file content": box.sentinel.read_bytes(), "directory owner": (directory.st_uid, directory.st_gid),
            "directory mode": oct(directory.st_mode), "directory content": sorted(os.listdir(box.sentinel_dir))}


def race(box: NodeSandbox, command: list[str | Path], runs: int = RUNS) -> None:
    """`command` run `runs` times; after each, the sentinels as they were (the run that changed them named)."""
    start = sentinels(box)
    for number in range(1, runs + 1):
        result, seconds = run(box, *command)
        changed = {key: f"{start[key]!r} became {value!r}" for key, value in sentinels(box).items()
                   if value != start[key]}
        assert not changed, f"run {number} of {runs} changed the sentinels: {changed}"
        assert result.returncode == 0, f"run {number} of {runs}: {result.stderr}"
        assert seconds < 10, f"run {number} of {runs} took {seconds:.1f} s"


def test_the_collector_never_acts_on_what_prometheus_plants(node_sandbox: NodeSandbox) -> None:
    box = node_sandbox
    metrics = programs(box)["metrics"]
    textfile = str(Path(box.paths.metrics_file).parent)
    ready = f"{box.pg_data}/pg_wal/archive_status"
    before = box.snapshot()
    with box.adversary("prometheus", [textfile], names=[box.paths.metrics_file]), \
            box.adversary("postgres", [ready], names=[f"{ready}/000000010000000000000001.ready"]):
        race(box, [metrics])
    box.assert_untouched(before)


def test_publish_never_acts_on_what_prometheus_plants(node_sandbox: NodeSandbox) -> None:
    box = node_sandbox
    verify = programs(box)["verify"]
    as_user("postgres", "sh", "-c", f"printf '%s' '{json.dumps(STATE)}' > {box.paths.verify_state}")
    before = box.snapshot()
    with box.adversary("prometheus", [str(Path(box.paths.verify_metrics).parent)], names=[box.paths.verify_metrics]):
        race(box, [verify, "publish"])
    box.assert_untouched(before)


HOSTILE_STATES = {
    "a link to root's file": "link",
    "a FIFO": "fifo",
    "a 10 GB sparse file": "huge",
    "nested JSON": "[" * 100_000 + "]" * 100_000,
    "a month 13": json.dumps({**STATE, "time": "2026-13-01T00:00:00Z"}),
    "a day 32": json.dumps({**STATE, "time": "2026-01-32T00:00:00Z"}),
    "a nested time": json.dumps({**STATE, "time": [[[]]]}),
}


@pytest.mark.parametrize("case", HOSTILE_STATES)
def test_publish_reads_a_hostile_state_file_quickly_and_publishes_it_as_unreadable(
        node_sandbox: NodeSandbox, case: str) -> None:
    box = node_sandbox
    verify = programs(box)["verify"]
    state, kind = box.paths.verify_state, HOSTILE_STATES[case]
    if kind == "link":
        as_user("postgres", "ln", "-s", str(box.sentinel), state)
    elif kind == "fifo":
        as_user("postgres", "mkfifo", state)
    elif kind == "huge":
        as_user("postgres", "truncate", "-s", "10G", state)
    else:
        as_user("postgres", "python3", "-c", "import sys; open(sys.argv[1], 'w').write(sys.stdin.read())", state,
                stdin=kind)
    before = box.snapshot()
    result, seconds = run(box, verify, "publish")
    assert result.returncode == 0, result.stderr
    assert seconds < 5, f"{case}: publish took {seconds:.1f} s"
    published = Path(box.paths.verify_metrics).read_text()
    assert 'pgbackup_verify_errors{stanza="main",repo="1",kind="other"} 1' in published, published
    assert "777" not in published, "root read the sentinel through the link"
    box.assert_untouched(before)


def test_publish_survives_postgres_replacing_the_state_file_during_the_run(node_sandbox: NodeSandbox) -> None:
    box = node_sandbox
    verify = programs(box)["verify"]
    before = box.snapshot()
    with box.adversary("postgres", [box.paths.home], names=[box.paths.verify_state]), \
            box.adversary("prometheus", [str(Path(box.paths.verify_metrics).parent)]):
        race(box, [verify, "publish"], runs=5)
    box.assert_untouched(before)


METRICS_TEXT = ('pgbackrest_is_leader{stanza="main"} 0\npgbackrest_stanza_status{stanza="main"} 0\n'
                'pgbackrest_backup_count{stanza="main"} 4242\n'
                'pgbackrest_metrics_collected_timestamp_seconds{stanza="main"} NOW\n')


@pytest.mark.parametrize("case", ["link", "fifo", "sparse"])
def test_the_check_run_as_root_reads_only_a_small_regular_file(node_sandbox: NodeSandbox, case: str) -> None:
    box = node_sandbox
    check = programs(box)["check"]
    text = METRICS_TEXT.replace("NOW", str(int(time.time())))
    secret = box.root / "root-metrics"
    secret.write_text(text)
    secret.chmod(0o600)
    path = box.paths.metrics_file
    if case == "link":
        as_user("prometheus", "ln", "-s", str(secret), path)
    elif case == "fifo":
        as_user("prometheus", "mkfifo", path)
    else:  # 64 MiB of holes, then metrics that say all is well: reading it all would believe them
        as_user("prometheus", "python3", "-c", "import sys; f = open(sys.argv[1], 'w'); f.seek(64 << 20); "
                "f.write(sys.argv[2])", path, text)
    before = box.snapshot()
    result, seconds = run(box, check, "backup-age")
    assert seconds < 5, f"the check took {seconds:.1f} s"
    assert result.returncode == 3, result.stdout + result.stderr
    assert "4242" not in result.stdout
    box.assert_untouched(before)


def test_the_metrics_are_written_by_the_directory_s_owner_never_by_root_in_another_user_s_directory(
        node_sandbox: NodeSandbox) -> None:
    """Debian's node_exporter directory is prometheus's: the file is made by prometheus (root does not act
    there); in a directory of root's alone (as the lab has it), by root."""
    box = node_sandbox
    metrics = programs(box)["metrics"]
    path = Path(box.paths.metrics_file)
    result, _ = run(box, metrics)
    assert result.returncode == 0, result.stderr
    assert (path.stat().st_uid, path.stat().st_gid, oct(path.stat().st_mode)) == (
        uid("prometheus"), gid("prometheus"), "0o100644")
    assert "pgbackrest_backup_count" in path.read_text()
    for directory in (path.parent.parent, path.parent):
        os.chown(directory, 0, 0)
    result, _ = run(box, metrics)
    assert result.returncode == 0, result.stderr
    assert (path.stat().st_uid, oct(path.stat().st_mode)) == (0, "0o100644")


@pytest.fixture(scope="module")
def rootsafe() -> types.ModuleType:
    """The helper every root-run node program includes, as a module."""
    module = types.ModuleType("rootsafe")
    exec(compile(render_values("monitoring/_rootsafe.py.j2", {}), "_rootsafe.py", "exec"), module.__dict__)  # noqa: S102
    return module


def test_rootsafe_refuses_a_link_on_the_way_a_shared_directory_and_a_second_hard_link(
        node_sandbox: NodeSandbox, rootsafe: Any) -> None:
    box = node_sandbox
    textfile = Path(box.paths.metrics_file).parent
    # A link anywhere on the way: refused, nothing written where it points.
    as_user("prometheus", "mv", str(textfile), f"{textfile}.real")
    as_user("prometheus", "ln", "-s", str(box.sentinel_dir), str(textfile))
    with pytest.raises(rootsafe.UnsafePath, match="symbolic link"):
        rootsafe.write_atomically(str(textfile), "x.prom", "x 1\n", 0o644)
    with pytest.raises(rootsafe.UnsafePath, match="symbolic link"):
        rootsafe.read_bounded(f"{textfile}/inside", 1024)
    assert sorted(os.listdir(box.sentinel_dir)) == ["inside"]
    # A directory a group can write, or one inside another user's: no single user to write as.
    shared = box.root / "shared"
    shared.mkdir(mode=0o775)
    shared.chmod(0o775)
    os.chown(shared, 0, gid("postgres"))
    with pytest.raises(rootsafe.UnsafePath, match="writable by group"):
        rootsafe.write_atomically(str(shared), "x", "x", 0o644)
    nested = Path(box.paths.home) / "nested"
    as_user("postgres", "mkdir", str(nested))
    os.chown(Path(box.paths.home), uid("prometheus"), gid("prometheus"))
    with pytest.raises(rootsafe.UnsafePath, match="several users"):
        rootsafe.write_atomically(str(nested), "x", "x", 0o644)
    # A hard link to root's file (protected_hardlinks stops other users making one; root's reader does not
    # rely on it) and a file over the limit.
    os.link(box.sentinel, Path(box.paths.home) / "linked")
    with pytest.raises(rootsafe.UnsafePath, match="2 links"):
        rootsafe.read_bounded(f"{box.paths.home}/linked", 1 << 20)
    os.unlink(Path(box.paths.home) / "linked")
    with pytest.raises(rootsafe.UnsafePath, match="more than 10"):
        rootsafe.read_bounded(str(box.sentinel), 10)
    assert rootsafe.read_bounded(str(box.sentinel), 1 << 20) == box.sentinel.read_bytes()


def test_tmpfiles_makes_the_drill_s_metrics_file_without_following_what_prometheus_plants(
        node_sandbox: NodeSandbox) -> None:
    """The drill runs as postgres; root's part in its metrics is systemd-tmpfiles' `f` line, which makes the
    file in prometheus's directory for postgres (at boot and when the files step changes the entry)."""
    box = node_sandbox
    conf = box.root / "pgbackup.conf"
    conf.write_text(render("systemd/pgbackup.tmpfiles.j2", dataclasses.replace(
        template_context(valid_settings(), valid_settings().cluster.nodes[0]), paths=box.paths)))
    textfile = str(Path(box.paths.drill_metrics).parent)
    Path(box.paths.lock).mkdir(parents=True)  # the line before it: pgBackRest's lock directory, as it makes it
    os.chown(box.paths.lock, uid("postgres"), gid("postgres"))
    Path(box.paths.lock).chmod(0o750)
    before = box.snapshot()
    with box.adversary("prometheus", [textfile], names=[box.paths.drill_metrics]):
        start = sentinels(box)
        for number in range(1, 11):
            started = time.monotonic()
            subprocess.run(["systemd-tmpfiles", "--create", str(conf)], capture_output=True, text=True,
                           timeout=TIMEOUT, check=False)
            assert time.monotonic() - started < 10
            assert sentinels(box) == start, f"run {number} of 10 changed the sentinels"
    box.assert_untouched(before)


HOSTILE_CLUSTERS = {  # what GET /cluster may answer (the DCS is written as postgres by any member)
    "stranded, with a name that breaks a label": json.dumps({"scope": 'm"\n', "members": [
        {"name": "pg1", "role": "leader", "state": "running", "timeline": 4},
        {"name": 'pg9"} 1\nroot_owned{a="', "role": "replica", "state": "running", "timeline": 3}]}),
    "nested JSON": "[" * 100_000 + "]" * 100_000,
    "more than 1 MiB": json.dumps({"members": [
        {"name": "pg1", "role": "leader", "state": "running", "timeline": 4},
        {"name": "pg2", "role": "replica", "state": "running", "timeline": 3}], "pad": "x" * (2 << 20)}),
    "fields of other types": json.dumps({"members": [{"name": ["pg1"], "role": {}, "timeline": "4"}, 7, None]}),
}


@pytest.mark.parametrize("case", HOSTILE_CLUSTERS)
def test_the_collector_on_the_leader_judges_a_hostile_cluster_document_quickly(
        node_sandbox: NodeSandbox, case: str) -> None:
    """As leader (Patroni's REST API a local server answering /primary 200 and /cluster with `case`): the
    collector ends in time, writes well-formed metrics (promtool) and keeps its memory in root's own file."""
    import http.server
    import threading

    body = HOSTILE_CLUSTERS[case].encode()

    class Patroni(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body if self.path == "/cluster" else b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Patroni)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        box = node_sandbox
        state_dir = Path(box.paths.stranded_state).parent
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # as the files step makes it: root's, 0700
        programs(box)  # the stand-ins
        settings = valid_settings()
        ctx = dataclasses.replace(template_context(settings, settings.cluster.nodes[0]), paths=box.paths,
                                  primary_url=f"http://127.0.0.1:{server.server_port}/primary",
                                  cluster=settings.cluster.model_copy(update={"pg_data": box.pg_data}))
        metrics = box.root / "bin" / "metrics-leader"
        metrics.write_text(render("monitoring/pgbackup-metrics.py.j2", ctx))
        before = box.snapshot()
        with box.adversary("prometheus", [str(Path(box.paths.metrics_file).parent)], names=[box.paths.metrics_file]):
            race(box, [metrics], runs=3)
        as_user("prometheus", "rm", "-rf", box.paths.metrics_file)  # what the adversary left there
        result, _ = run(box, metrics)
        assert result.returncode == 0, result.stderr
        written = Path(box.paths.metrics_file).read_text()
        assert 'pgbackrest_is_leader{stanza="main"} 1' in written
        assert 'pgbackrest_repository_backup_bytes{stanza="main",repo="1"} 4194400' in written  # checked below
        check = subprocess.run(["promtool", "check", "metrics"], input=written, capture_output=True, text=True,
                               check=False)
        assert check.returncode in (0, 3), check.stdout + check.stderr  # 3: lint only (the older _count names)
        assert "parsing error" not in check.stderr, check.stderr
        assert "\nroot_owned" not in written
        state = Path(box.paths.stranded_state)
        if case.startswith("stranded"):
            assert 'pgbackup_stranded_member_since_timestamp_seconds{stanza="main",member="pg9\\"} 1\\nroot_owned' \
                   in written
            assert (state.stat().st_uid, oct(state.stat().st_mode)) == (0, "0o100600")
        if case == "more than 1 MiB":  # not read past its bound: unreadable, nothing judged
            assert 'pgbackup_patroni_cluster_readable{stanza="main"} 0' in written
            assert "pgbackup_stranded" not in written
        changed = {path for path, value in box.snapshot().items() if before.get(path) != value}
        assert changed <= {str(state)}, changed
    finally:
        server.shutdown()
