"""Stand-ins for what a node program talks to, for the fast suite's behaviour tests (issue 26): Patroni's REST API
on 127.0.0.1, and binaries on PATH (pgBackRest, psql, pg_ctl, pg_amcheck, ...) whose answers a test sets.

    api = Patroni(); api.status = 503; api.members = [...]     # GET /primary, GET /cluster; api.close()
    bins = Binaries(tmp / "bin", tmp / "standin")
    bins.answer("pgbackrest", "info", stdout=json.dumps(info))  # the first rule whose words all occur wins
    bins.answer("pg_ctl", "start", code=1, stderr="could not start")
    env = bins.env()                                            # PATH with the stand-ins first
    bins.calls()                                                # [[name, arg, ...], ...] in order

A stand-in with no matching rule prints nothing and exits 0. Side effects a real binary has, which the program
relies on (pgBackRest's restore writes a data directory, pg_ctl's start a postmaster.pid), are played by the
stand-in when its rule exits 0 (`effect`: "restore", "start", "stop").
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path
from typing import Any

STANDIN = r'''#!{python} -IS
import json, os, sys
state = {state!r}
name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
with open(os.path.join(state, "calls.jsonl"), "a") as log:
    log.write(json.dumps([name, *args]) + "\n")
with open(os.path.join(state, "rules.json")) as handle:
    rules = json.load(handle)
line = " ".join(args)
for rule in rules:
    if rule["name"] == name and all(word in line for word in rule["words"]):
        break
else:
    sys.exit(0)
def option(prefix):
    return next((a[len(prefix):] for a in args if a.startswith(prefix)), None)
if rule["code"] == 0 and rule["effect"] == "restore":
    data = option("--pg1-path=")
    os.makedirs(os.path.join(data, "pg_replslot", "slot1"), exist_ok=True)
    for file in ("PG_VERSION", "postgresql.conf", "standby.signal", "patroni.dynamic.json"):
        with open(os.path.join(data, file), "w") as out:
            out.write("15\n" if file == "PG_VERSION" else "")
elif rule["code"] == 0 and rule["effect"] in ("start", "stop"):
    data = args[args.index("-D") + 1]
    pid = os.path.join(data, "postmaster.pid")
    running = os.path.join(state, "running")  # the stand-in's record that a copy runs (in no data directory)
    if rule["effect"] == "start":
        open(pid, "w").close()
        open(running, "w").close()
    else:
        for path in (pid, running):
            if os.path.exists(path):
                os.unlink(path)
sys.stdout.write(rule["stdout"])
sys.stderr.write(rule["stderr"])
sys.exit(rule["code"])
'''


class Binaries:
    """Stand-in binaries in `bin_dir`; their rules and the calls they received in `state_dir`."""

    def __init__(self, bin_dir: Path, state_dir: Path, names: tuple[str, ...] = ()) -> None:
        self.bin_dir, self.state_dir = bin_dir, state_dir
        bin_dir.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.rules: list[dict[str, Any]] = []
        self._save()
        for name in names:
            self.add(name)

    def add(self, name: str) -> Path:
        path = self.bin_dir / name
        path.write_text(STANDIN.format(python="/usr/bin/python3", state=str(self.state_dir)))  # -S: no site, faster
        path.chmod(0o755)
        return path

    def answer(self, name: str, *words: str, code: int = 0, stdout: str = "", stderr: str = "",
               effect: str = "") -> None:
        """The stand-in `name`, called with arguments that contain every one of `words`, answers so. Rules added
        later win over earlier ones."""
        self.rules.insert(0, {"name": name, "words": list(words), "code": code, "stdout": stdout, "stderr": stderr,
                              "effect": effect})
        self._save()

    def _save(self) -> None:
        (self.state_dir / "rules.json").write_text(json.dumps(self.rules))

    def calls(self, name: str | None = None) -> list[list[str]]:
        log = self.state_dir / "calls.jsonl"
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [call for call in calls if name is None or call[0] == name]

    def running(self) -> bool:
        """A PostgreSQL that pg_ctl started and did not stop (the stand-in's "start" and "stop" effects)."""
        return (self.state_dir / "running").exists()

    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


class Patroni:
    """Patroni's REST API on 127.0.0.1: GET /primary answers `status` (200 on the leader, 503 elsewhere), GET
    /cluster {"members": members}. `requests` lists the paths asked."""

    def __init__(self) -> None:
        self.status = 200
        self.members: list[dict[str, Any]] = []
        self.requests: list[str] = []
        patroni = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                patroni.requests.append(self.path)
                if self.path == "/primary":
                    status, body = patroni.status, b"{}"
                elif self.path == "/cluster":
                    status, body = 200, json.dumps({"members": patroni.members}).encode()
                else:
                    status, body = 404, b"{}"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
