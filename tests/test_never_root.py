"""pgBackRest never runs as root (2.59 refuses to without allow-root, and a root pgBackRest writes root-owned
files into postgres's repository, spool and log directories).

Every rendered step script, unit, collector and check, for each variant of the configuration, and the lab's
and the documents' commands (README.md, docs/) are scanned for pgBackRest invocations; each must run as
postgres: in a script through `as_postgres` (runuser -u postgres), in a unit with User=postgres and no
privileged `+`/`!` prefix, in Python through `as_postgres(...)`, in the lab and the documents through
`runuser -u postgres --` or `sudo -u postgres`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from components.plan import replica_method
from tests.harness import Run, node_files, run_program, script_of, stack_config
from tests.test_rendered import PGBACKREST_COMMANDS, VARIANTS

ROOT = Path(__file__).resolve().parent.parent
# `pgbackrest` (or /usr/bin/pgbackrest) as a command: followed by an option or one of its commands. A message
# ("pgbackrest $(...)"), a pattern ('pgbackrest .*archive-push') or a package name is not an invocation.
INVOCATION = re.compile(r"(?<![\w/.-])(?:/usr/bin/)?pgbackrest\s+(?:--[a-z]|(?:"
                        + "|".join(map(re.escape, [*PGBACKREST_COMMANDS, "version"])) + r")\b)")
# Where a shell command starts: a new line, or after ; && || | $( (
SEPARATOR = re.compile(r"\|\||&&|;|\||\$\(|\(")
SHELL_WRAPPERS = ("as_postgres ", "runuser -u postgres ", "sudo -u postgres ")


def logical_lines(script: str) -> list[str]:
    """The script's commands: comments dropped, backslash continuations joined."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    return "\n".join(lines).replace("\\\n", " ").splitlines()


def root_invocations_in_shell(script: str, wrappers: tuple[str, ...] = SHELL_WRAPPERS,
                              invocation: re.Pattern[str] = INVOCATION) -> list[str]:
    """The commands that run pgBackRest without one of `wrappers` at the start of their command."""
    found = []
    for line in logical_lines(script):
        for match in invocation.finditer(line):
            command = SEPARATOR.split(line[:match.start()])[-1].strip()
            if not (command + " ").startswith(wrappers):
                found.append(line.strip())
    return found


# The backup services' program: it execs pgBackRest (templates/monitoring/pgbackup-backup.py.j2).
BACKUP_PROGRAM = "/usr/local/lib/pgbackup/pgbackup-backup"


def root_invocations_in_unit(unit: str) -> list[str]:
    """Exec lines that run pgBackRest in a unit that is not User=postgres, or with a privileged prefix."""
    section, user, execs = "", "root", []
    for line in unit.splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[Service]" and line.startswith("User="):
            user = line.removeprefix("User=").strip()
        elif section == "[Service]" and line.startswith("Exec") and (INVOCATION.search(line)
                                                                       or BACKUP_PROGRAM in line):
            execs.append(line)
    return [line for line in execs if user != "postgres" or re.match(r"Exec\w+=[-@:]*[+!]", line)]


def root_invocations_in_python(source: str) -> list[str]:
    """Lines naming pgbackrest as a program ("pgbackrest", "/usr/bin/pgbackrest") outside as_postgres(...)."""
    program = re.compile(r"""["'](?:/usr/bin/)?pgbackrest["']""")
    return [line.strip() for line in source.splitlines() if program.search(line) and "as_postgres(" not in line]


def as_postgres_defined(text: str) -> bool:
    return bool(re.search(r"as_postgres\(\) \{\n\s+runuser -u postgres -- ", text)
                or re.search(r"""\[\s*"runuser", "-u", "postgres", "--",""", text))


VARIANT_RUNS = {**VARIANTS, "pinned-2.55": stack_config(retention={"monthly": 12}, pgbackrest={"version": "2.55*"})}


@pytest.fixture(scope="module", params=sorted(VARIANT_RUNS))
def variant(request: pytest.FixtureRequest) -> Run:
    return run_program(VARIANT_RUNS[request.param])


def test_every_step_script_runs_pgbackrest_as_postgres(variant: Run) -> None:
    scanned = 0
    for command in variant.commands:
        for key in ("create", "delete"):
            if not command.inputs.get(key):
                continue
            script = script_of(command, key)
            # Data, not commands: the replica method Patroni will run, archive_command and restore_command
            # PostgreSQL will run (both as postgres).
            if command.name.endswith("-patroni"):
                method = json.dumps(json.dumps(replica_method(variant.outputs["stanza"])))
                assert method in script, command.name
                script = script.replace(method, "")
            if command.name.endswith("-archiving"):
                script, settings = re.subn(r"^ +(?:archive|restore)_command: .*$", "", script, flags=re.M)
                assert settings == 2, command.name
            assert root_invocations_in_shell(script) == [], f"{command.name} ({key})"
            if "as_postgres" in script:
                assert as_postgres_defined(script), command.name
            scanned += bool(INVOCATION.search(script))
    assert scanned >= 2 * len(variant.outputs["nodes"])  # stanza and verify on every node


def test_every_installed_unit_and_script_runs_pgbackrest_as_postgres(variant: Run) -> None:
    for node in [n["name"] for n in variant.outputs["nodes"]]:
        files = node_files(variant, node)
        units = {path: f["content"] for path, f in files.items() if path.endswith(".service")}
        # backups (and the TLS server) are units
        assert any(INVOCATION.search(text) or BACKUP_PROGRAM in text for text in units.values())
        for path, text in units.items():
            assert root_invocations_in_unit(text) == [], path
        for path in ("/usr/local/lib/pgbackup/pgbackup-metrics", "/usr/local/lib/pgbackup/pgbackup-check"):
            text = files[path]["content"]
            assert root_invocations_in_python(text) == [], path
            if "as_postgres(" in text:
                assert as_postgres_defined(text), path


def test_the_lab_and_the_readme_run_pgbackrest_as_postgres() -> None:
    sources = [*sorted((ROOT / "lab").glob("*.py")), *sorted((ROOT / "lab").glob("*.sh")),
               *sorted((ROOT / "tests" / "lab").glob("*.py"))]
    wrappers = ("runuser -u postgres -- ", "sudo -u postgres ")
    found = 0
    for path in sources:
        text = path.read_text()
        invocation = INVOCATION
        if path.suffix == ".py":
            # Commands in Python strings; messages and docstrings name commands too ("pgbackrest info failed",
            # `pgbackrest info`): there, an invocation is one with an option, or `version`.
            text = re.sub(r"`[^`\n]*`", "", text)
            invocation = re.compile(r"(?<![\w/.-])(?:/usr/bin/)?pgbackrest\s+(?:--[a-z]|version\b)")
            # The commands are string literals (a shell command line each): judge them, not the Python around.
            text = "\n".join(m.group(1) for m in re.finditer(r'f?"([^"\n]*)"', text))
        assert root_invocations_in_shell(text, wrappers, invocation) == [], path
        found += len(invocation.findall(text))
    assert found >= 2  # Lab.pgbackrest and the version test
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [block for document in documents
              for block in re.findall(r"```sh\n(.*?)```", document.read_text(), re.S)]
    assert sum(len(INVOCATION.findall(block)) for block in blocks) >= 5  # the restore procedures
    for block in blocks:
        assert root_invocations_in_shell(block, wrappers) == []


def test_the_judges_find_pgbackrest_run_as_root() -> None:
    assert root_invocations_in_shell("as_postgres true; pgbackrest --stanza=main check\n") != []
    assert root_invocations_in_shell("info=$(pgbackrest --stanza=main --output=json info)\n") != []
    assert root_invocations_in_shell("flock /run/x \\\n  pgbackrest --stanza=main backup\n") != []
    assert root_invocations_in_shell("as_postgres flock /run/x \\\n  pgbackrest --stanza=main backup\n") == []
    assert root_invocations_in_shell('echo "pgbackrest $(installed_version pgbackrest)"\n') == []
    unit = "[Service]\nUser=postgres\nExecStart=/usr/bin/pgbackrest server\n"
    assert root_invocations_in_unit(unit) == []
    assert root_invocations_in_unit(unit.replace("User=postgres\n", "")) != []
    assert root_invocations_in_unit(unit.replace("ExecStart=", "ExecStart=+")) != []
    backup = f"[Service]\nExecStart=/usr/bin/flock /x {BACKUP_PROGRAM} --repo=1 --type=full\n"
    assert root_invocations_in_unit(backup) != []
    assert root_invocations_in_unit(backup.replace("[Service]\n", "[Service]\nUser=postgres\n")) == []
    assert root_invocations_in_python('subprocess.run(["pgbackrest", "info"])\n') != []
    assert root_invocations_in_python('as_postgres("pgbackrest", "info")\n') == []
