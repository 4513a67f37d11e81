"""The documents (README.md, docs/, lab/README.md) against the project: every relative link between them reaches
a file and, with `#anchor`, a heading there (GitHub's heading ids); every `pgbackup ...` command they show uses
a subcommand and flags the operator's command has (its real parser, pgbackup_cli/cli.py); every `make X` is a
target of the Makefile; every `pgbackup:key.path` is a key of the configuration's models (components/config.py).
Each judge is also shown a planted mistake, so none can pass by finding nothing."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from components.config import NAMESPACE, OBJECT_KEYS, SECRET_KEYS
from pgbackup_cli.cli import parser as cli_parser

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "lab").rglob("README.md")])
FENCE = re.compile(r"^\s*(```|~~~)")  # indented too: a block inside a list item
# What the documents show on purpose although no model has it: the refusal table's misspelt examples, and file
# names that read like a key (pgbackrest.conf, the collector's pgbackrest.prom).
NOT_KEYS = {"retension", "storage.bukket", "pgbackrest.conf", "pgbackrest.prom"}


# -- reading Markdown ------------------------------------------------------------------------------------------------

def split_code(text: str) -> tuple[str, list[str]]:
    """(the prose with fenced blocks and inline code blanked, the code: each fenced block and inline span)."""
    prose: list[str] = []
    code: list[str] = []
    block: list[str] | None = None
    for line in text.splitlines():
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                code.append("\n".join(block))
                block = None
            prose.append("")
        elif block is not None:
            block.append(line)
            prose.append("")
        else:
            code += re.findall(r"`([^`\n]+)`", line)
            prose.append(re.sub(r"`[^`\n]+`", lambda m: "x" * len(m[0]), line))
    if block is not None:
        code.append("\n".join(block))
    return "\n".join(prose), code


def slug(heading: str) -> str:
    """GitHub's id for a heading: its text (links as their text, no code marks) lower-cased, every character
    but letters, digits, `_`, `-` and spaces dropped, each space a `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's id in a document; a repeated one gets `-1`, `-2`, ... as on GitHub."""
    seen: dict[str, int] = {}
    ids = set()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#{1,6} +(.*?)(?: +#+)? *$", line)):
            base = slug(heading[1])
            count = seen.get(base, 0)
            ids.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return ids


def links(text: str) -> list[str]:
    """The target of every inline link and image outside code."""
    prose, _ = split_code(text)
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose)


def broken_links(documents: dict[Path, str]) -> list[str]:
    """Each relative link that reaches no file, or no heading of the document it names."""
    problems = []
    for path, text in documents.items():
        for target in links(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(ROOT)}: ({target})"
            if file and not dest.exists():
                problems.append(f"{where}: no file {file}")
            elif anchor:
                heads = anchors(documents[dest] if dest in documents else dest.read_text()) \
                    if dest.suffix == ".md" else set()
                if anchor not in heads:
                    problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def code_of(documents: dict[Path, str]) -> Iterator[tuple[Path, str]]:
    for path, text in documents.items():
        for code in split_code(text)[1]:
            yield path, code


# -- pgbackup commands ------------------------------------------------------------------------------------------------

def commands(code: str, program: str) -> Iterator[list[str]]:
    """Each `program ...` command in a piece of code, as its words (comments dropped; a path before the program
    such as .venv/bin/ allowed)."""
    for raw in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw)  # a shell comment
        for match in re.finditer(rf"(?:^|[\s;&|(`$])(?:[\w./-]*/)?{program}(?= |$)(.*)", line):
            rest = match[1]
            try:
                words = shlex.split(rest)
            except ValueError:
                words = rest.split()
            yield [program, *words]


def subparsers(top: argparse.ArgumentParser, required: bool = True) -> dict[str, argparse.ArgumentParser]:
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    if required:
        raise AssertionError("pgbackup's parser has no subcommands")
    return {}


def bad_pgbackup_command(words: list[str]) -> str | None:
    """What the real parser does not have in a shown `pgbackup` command (placeholders such as `N`, `<time>`,
    `full|incr|diff` and `[--flag]` allowed), or None."""
    top = cli_parser()
    subs = subparsers(top)
    args = [word.strip("[]") for word in words[1:] if word.strip("[]") not in {"", "|", "..."}]
    if not args:
        return None
    if args[0].startswith("-"):
        command, options = top, args
    elif args[0] not in subs:
        return f"no subcommand {args[0]!r} (pgbackup has {', '.join(subs)})"
    else:
        command, options, name = subs[args[0]], args[1:], args[0]
        while (nested := subparsers(command, required=False)) and options and not options[0].startswith("-"):
            if options[0] not in nested:  # `pgbackup repository undelete`: a command group's own subcommands
                return f"no subcommand {options[0]!r} in `pgbackup {name}` (it has {', '.join(nested)})"
            command, name, options = nested[options[0]], f"{name} {options[0]}", options[1:]
        args = [name, *options]
    known = command._option_string_actions
    for number, word in enumerate(options):
        if not word.startswith("-") or word == "-":
            continue
        flag = word.split("=", 1)[0]
        if flag not in known:
            return f"no option {flag} in `pgbackup {args[0]}`"
        action = known[flag]
        value = word.split("=", 1)[1] if "=" in word else (options[number + 1] if number + 1 < len(options) else "")
        if action.choices is not None and value and not value.startswith("-") \
                and not re.fullmatch(r"[A-Z_]+|<[^>]*>", value):
            for choice in value.split("|"):
                if choice not in {str(c) for c in action.choices}:
                    return f"{flag} {choice!r} is not one of {', '.join(map(str, action.choices))}"
    return None


# -- make targets -----------------------------------------------------------------------------------------------------

def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w.-]*):(?!=)", (ROOT / "Makefile").read_text(), re.M))


def bad_make_targets(code: str, targets: set[str]) -> list[str]:
    """Each `make X` in a piece of code whose X is not a target (options and VAR=value skipped)."""
    bad = []
    for words in commands(code, "make"):
        names = [word for word in words[1:] if not word.startswith("-") and "=" not in word]
        bad += [name for name in names[:1] if name not in targets]
    return bad


# -- configuration keys -----------------------------------------------------------------------------------------------

def _entry(annotation: object) -> type[BaseModel] | None:
    """The model a field holds (directly, optionally, or as a list's entries), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((model for arg in get_args(annotation) if (model := _entry(arg)) is not None), None)


def bad_config_key(path: str) -> str | None:
    """Why `pgbackup:<path>` (dotted, `[0]` indexes allowed) is no key of the configuration, or None."""
    top, *rest = re.sub(r"\[\d*\]", "", path).split(".")
    if top in SECRET_KEYS and not rest:
        return None
    if top not in OBJECT_KEYS:
        return f"{NAMESPACE}:{top} is no key (known: {', '.join([*OBJECT_KEYS, *SECRET_KEYS])})"
    model: type[BaseModel] | None = OBJECT_KEYS[top][0]
    walked = top
    for name in rest:
        fields = {field.alias or key: field for key, field in (model.model_fields.items() if model else [])}
        if name not in fields:
            return f"{NAMESPACE}:{walked} has no key {name!r}"
        model = _entry(fields[name].annotation)
        walked += f".{name}"
    return None


PATH = r"(?:(?:\[\d*\])?\.\w+|\[\d*\])"  # .key or [0] after a key


def config_keys(text: str) -> list[str]:
    """Every `pgbackup:key.path` a document shows, in code or prose (URLs aside), and every key path in code
    that starts with an object's name (`drill.verifySchedule`, `cluster.nodes[0].hostKey`)."""
    prefixed = re.findall(rf"(?<![\w/-]){NAMESPACE}:([A-Za-z]\w*{PATH}*)", re.sub(r"https?://\S+", "", text))
    objects = "|".join(OBJECT_KEYS)
    bare = [key for code in split_code(text)[1] for key in re.findall(rf"(?<![\w/.:-])((?:{objects}){PATH}+)", code)]
    return prefixed + bare


# -- the documents ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def documents() -> dict[Path, str]:
    assert {ROOT / "README.md", ROOT / "docs" / "restoring.md", ROOT / "lab" / "README.md"} <= set(DOCUMENTS)
    return {path: path.read_text() for path in DOCUMENTS}


def test_every_link_between_the_documents_reaches_its_file_and_heading(documents: dict[Path, str]) -> None:
    assert broken_links(documents) == []
    # ... and the judge reads them: the README links into every document of docs/, with anchors
    readme_links = links(documents[ROOT / "README.md"])
    assert {f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md")} <= {t.split("#")[0] for t in readme_links}
    assert sum("#" in target for text in documents.values() for target in links(text)) >= 20


def test_the_link_judge_finds_a_broken_file_or_anchor(tmp_path: Path) -> None:
    doc = ROOT / "docs" / "x.md"
    text = ("# Title\n\n## The operator's command\n\n## Health checks (Consul, Nagios, ...)\n\n## Title\n\n"
            "```sh\n# not a heading\n```\n\n[a](#the-operators-command) [b](#health-checks-consul-nagios-) "
            "[c](#title-1) [d](restoring.md#restore-a-monthly-archive) [e](../README.md) [f](https://x.org/#y)\n"
            "`[g](#in-code)`\n")
    assert broken_links({doc: text}) == []
    planted = text + "[h](#not-a-heading) [i](#title-2) [j](missing.md) [k](restoring.md#gone)\n"
    assert broken_links({doc: planted}) == [
        "docs/x.md: (#not-a-heading): no heading #not-a-heading in docs/x.md",
        "docs/x.md: (#title-2): no heading #title-2 in docs/x.md",
        "docs/x.md: (missing.md): no file missing.md",
        "docs/x.md: (restoring.md#gone): no heading #gone in docs/restoring.md"]


def test_the_slugs_are_githubs() -> None:
    assert slug("The operator's command") == "the-operators-command"
    assert slug("`pgbackup:cluster` (required)") == "pgbackupcluster-required"
    assert slug("Keys that work only from the nodes (`allowedSourceIps`)") == \
        "keys-that-work-only-from-the-nodes-allowedsourceips"
    assert slug("After a deletion: the repository as it was (`objectLockDays`, pgBackRest 2.54+)") == \
        "after-a-deletion-the-repository-as-it-was-objectlockdays-pgbackrest-254"


def test_every_pgbackup_command_shown_is_one_the_program_has(documents: dict[Path, str]) -> None:
    shown = [(path, words) for path, code in code_of(documents) for words in commands(code, "pgbackup")]
    assert len(shown) >= 10
    assert {words[1] for _, words in shown if len(words) > 1} >= set(subparsers(cli_parser()))
    bad = [(str(path.relative_to(ROOT)), " ".join(words), why) for path, words in shown
           if (why := bad_pgbackup_command(words))]
    assert bad == []


@pytest.mark.parametrize(("command", "why"), [
    ("pgbackup restore -s prod", "no subcommand 'restore'"),
    ("pgbackup repository undelte -s prod", "no subcommand 'undelte' in `pgbackup repository`"),
    ("pgbackup repository undelete -s prod --befor T", "no option --befor in `pgbackup repository undelete`"),
    ("pgbackup status -s prod --verbose", "no option --verbose in `pgbackup status`"),
    ("pgbackup recover -s prod --to latest [--force]", "no option --force in `pgbackup recover`"),
    ("pgbackup backup -s prod --type full|snapshot", "--type 'snapshot' is not one of full, incr, diff"),
    ("pgbackup drill -s prod --json", "no option --json in `pgbackup drill`"),
])
def test_the_command_judge_finds_what_the_parser_lacks(command: str, why: str) -> None:
    (words,) = commands(command, "pgbackup")
    assert (bad_pgbackup_command(words) or "").startswith(why)


def test_the_command_judge_takes_the_documents_placeholders() -> None:
    shown = ("pgbackup status  -s prod [--json]   # per node\n"
             "pgbackup backup  -s prod --type full|incr|diff [--repo N]\n"
             "pgbackup recover -s prod --to '2026-11-20 14:15:00+00' | latest [--leader NODE] [--yes]\n"
             ".venv/bin/pgbackup status -s lab --identity \"$LAB_SSH_KEY\" -C /tmp/x\n")
    found = list(commands(shown, "pgbackup"))
    assert len(found) == 4
    assert [bad_pgbackup_command(words) for words in found] == [None] * 4
    assert list(commands("pgbackup-check backup-age; the pgbackup: warning", "pgbackup")) == []


def test_every_make_target_shown_is_in_the_makefile(documents: dict[Path, str]) -> None:
    targets = make_targets()
    assert {"test", "setup", "lab", "reference"} <= targets
    shown = [words for _, code in code_of(documents) for words in commands(code, "make")]
    assert len(shown) >= 10
    bad = [(str(path.relative_to(ROOT)), target) for path, code in code_of(documents)
           for target in bad_make_targets(code, targets)]
    assert bad == []


def test_the_make_judge_finds_a_missing_target() -> None:
    targets = make_targets()
    assert bad_make_targets("LAB_RELEASE=bookworm make lab   # then\nmake -j2 test", targets) == []
    assert bad_make_targets("make tests", targets) == ["tests"]
    assert bad_make_targets("LAB_RELEASE=bookworm make lab-up", targets) == ["lab-up"]


def test_every_config_key_shown_is_one_the_models_know(documents: dict[Path, str]) -> None:
    shown = [(path, key) for path, text in documents.items() for key in config_keys(text)]
    assert len(shown) >= 50
    assert {key.split(".")[0].split("[")[0] for _, key in shown} >= set(OBJECT_KEYS)
    bad = [(str(path.relative_to(ROOT)), key, why) for path, key in shown if key not in NOT_KEYS and (why := bad_config_key(key))]
    assert bad == []


def test_the_config_judge_finds_an_unknown_key() -> None:
    text = ("`pgbackup:cluster.nodes[0].hostKey`, `pgbackup:storage.objectLockDays`, pgbackup:sshPrivateKey, "
            "`pgbackup:drill.rtoBudgetSeconds`. `pgbackup:offsite` and https://example.org/pgbackup:x")
    assert [bad_config_key(key) for key in config_keys(text)] == [None] * 5
    assert bad_config_key("cluster.nodes[1].hostkey") == "pgbackup:cluster.nodes has no key 'hostkey'"
    assert bad_config_key("storage.hiddenVersionDays") == "pgbackup:storage has no key 'hiddenVersionDays'"
    assert (bad_config_key("schedules") or "").startswith("pgbackup:schedules is no key")
    assert bad_config_key("sshPrivateKey.x") is not None
    assert config_keys("set `pgbackup:retention.monthly: 0`.") == ["retention.monthly"]
    assert config_keys("`drill.verifySchedule` and `components/cluster.py`, drill.x in prose") == ["drill.verifySchedule"]
    assert bad_config_key("drill.verifyschedule") == "pgbackup:drill has no key 'verifyschedule'"
