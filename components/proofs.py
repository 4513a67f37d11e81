"""Backups that prove themselves (issue 9): what the scheduled verification's files on every node see, and the
`lastVerify` / `lastDrill` outputs read from the nodes' state files at apply time.

The state files are written by services running as postgres: to the program they are untrusted input. They
arrive as text in the verify step's report and are parsed here defensively (size and nesting depth bounded
before json.loads, every field checked, the time parsed as a date and refused when it is in the future):
a file not as the services write it is never an exception and never a good result, but an output marked
`unreadable` (which node, which file, why) with `ok` false."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, TypedDict, TypeVar

from components.config import Settings
from components.context import NodeContext, extend
from components.layout import NAMES, PATHS
from components.window import RepoWindow, read_window, window_ok

STATE_MAX_BYTES = NAMES.state_max_bytes
ERROR_KINDS = ("checksum", "missing_wal", "other")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z")
_NODE = re.compile(r"[a-z0-9-]{1,63}")


class VerifyErrors(TypedDict):
    checksum: int
    missing_wal: int
    other: int


class LastVerify(TypedDict):
    """The `lastVerify` output. With `unreadable` (a node's state file could not be read: which and why), `ok` is
    false and the rest is the newest readable result's, or null (errors) when there is none."""

    time: str | None
    ok: bool
    errors: VerifyErrors | None
    unreadable: NotRequired[str]


class LastDrill(TypedDict):
    """The `lastDrill` output; `unreadable` as in LastVerify."""

    time: str | None
    ok: bool
    rtoSeconds: float | None
    restoredBytes: int | None
    replayedToArchiveEnd: bool
    unreadable: NotRequired[str]


class RecoveryWindow(TypedDict):
    """The `recoveryWindow` output: the newest verification's window of each repository (components/window.py
    has the format); `unreadable` as in LastVerify. `ok`: every repository recovers to all its retention keeps,
    no damaged set."""

    time: str | None
    ok: bool
    repos: dict[str, RepoWindow | None] | None
    unreadable: NotRequired[str]


class Proofs(TypedDict):
    lastVerify: LastVerify | None
    lastDrill: LastDrill | None
    recoveryWindow: RecoveryWindow | None


@dataclass(frozen=True)
class VerifyContext(NodeContext):
    """templates/systemd/pgbackup-verify.service.j2 and .timer.j2, templates/monitoring/pgbackup-verify.py.j2:
    the calendar, and each repository with the backup its WAL is continuous from."""

    calendar: str
    randomized_delay_sec: int
    verify_repos: list[dict[str, Any]]


def verify_repos(settings: Settings) -> list[dict[str, Any]]:
    """The repositories the verification checks, and the backup their WAL is continuous from: repo1 keeps
    every segment since its oldest backup; repo2 (monthly archives, repo2-retention-archive=1) only since its
    newest."""
    repos: list[dict[str, Any]] = [{"index": 1, "continuous_from": "oldest"}]
    if settings.retention.monthly:
        repos.append({"index": 2, "continuous_from": "newest"})
    return repos


def verify_context(settings: Settings, ctx: NodeContext) -> VerifyContext:
    return extend(VerifyContext, ctx, calendar=settings.drill.verify_schedule,
                  randomized_delay_sec=settings.schedule.randomized_delay_sec, verify_repos=verify_repos(settings))


R = TypeVar("R", LastVerify, LastDrill, RecoveryWindow)

# The services write pgbackup-verify.json and pgbackup-drill.json four levels deep at most (repos -> "1" ->
# errors / phases). Deeper is refused before json.loads, whose recursion would end in a RecursionError.
MAX_DEPTH = 16
# A result whose time is further ahead of the program's clock than this is unreadable (a node's clock may run a
# little ahead of the operator's; more is a wrong clock or a forged time, which must not win "newest").
CLOCK_SKEW = timedelta(minutes=5)
_TOKEN = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


class Unreadable(ValueError):
    """A state file that is not as the services write it; the message says why (never quoting its content)."""


def clock() -> datetime:
    """The program's clock, read at apply time when the nodes' reports arrive (the tests replace it). It only
    ever decides the lastVerify / lastDrill outputs, never a resource's input: rendering stays deterministic."""
    return datetime.now(UTC)


def _too_deep(text: str) -> bool:
    """Whether `text` nests arrays or objects deeper than MAX_DEPTH (brackets inside strings do not count).
    Linear, no recursion: each string's escapes are skipped in pairs."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth, in_string = 0, False
    for match in _TOKEN.finditer(text):
        mark = match.group()
        if mark == '"':
            in_string = not in_string
        elif in_string or len(mark) == 2:
            continue
        elif mark in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _load(text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        raise Unreadable(f"not text ({type(text).__name__})")
    if len(text) > STATE_MAX_BYTES:
        raise Unreadable(f"larger than {STATE_MAX_BYTES} bytes")
    if _too_deep(text):
        raise Unreadable(f"nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: only if MAX_DEPTH were ever raised past the limit
        raise Unreadable("not JSON") from None
    if not isinstance(value, dict):
        raise Unreadable("not a JSON object")
    return value


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value < 2**53 else None


def _seconds(value: Any) -> float | None:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _time(value: Any) -> str | None:
    return value if isinstance(value, str) and _TIME.fullmatch(value) else None


def parse_time(value: str) -> datetime:
    """A state file's `time` (as _TIME matches it) as a UTC datetime; Unreadable for no such date (month 13)."""
    whole, _, fraction = value.removesuffix("Z").partition(".")
    try:
        when = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        raise Unreadable("time: no such date") from None
    return when + timedelta(microseconds=int(fraction[:6].ljust(6, "0"))) if fraction else when


def read_verify(text: Any) -> LastVerify:
    """{time, ok, errors: {checksum, missing_wal, other}} of a pgbackup-verify.json; Unreadable otherwise."""
    state = _load(text)
    time = _time(state.get("time"))
    if time is None:
        raise Unreadable("time: expected UTC ISO 8601 (2026-11-26T05:00:00Z)")
    parse_time(time)
    if type(state.get("ok")) is not bool:
        raise Unreadable("ok: expected true or false")
    raw = state.get("errors")
    errors = {kind: _count(raw.get(kind)) for kind in ERROR_KINDS} if isinstance(raw, dict) else {}
    checksum, missing_wal, other = (errors.get(kind) for kind in ERROR_KINDS)
    if checksum is None or missing_wal is None or other is None:
        raise Unreadable(f"errors: expected a count (0 or more) for each of {', '.join(ERROR_KINDS)}")
    # "ok" is what the counts say, whatever the file claims.
    return {"time": time, "ok": state["ok"] and not (checksum or missing_wal or other),
            "errors": {"checksum": checksum, "missing_wal": missing_wal, "other": other}}


def read_drill(text: Any) -> LastDrill:
    """{time, ok, rtoSeconds, restoredBytes, replayedToArchiveEnd} of a pgbackup-drill.json; Unreadable
    otherwise."""
    state = _load(text)
    time = _time(state.get("time"))
    if time is None:
        raise Unreadable("time: expected UTC ISO 8601 (2026-11-26T05:00:00Z)")
    parse_time(time)
    ok, rto, restored = state.get("ok"), _seconds(state.get("rtoSeconds")), _count(state.get("restoredBytes"))
    if type(ok) is not bool:
        raise Unreadable("ok: expected true or false")
    if type(state.get("replayedToArchiveEnd")) is not bool:
        raise Unreadable("replayedToArchiveEnd: expected true or false")
    if "rtoSeconds" in state and state["rtoSeconds"] is not None and rto is None:
        raise Unreadable("rtoSeconds: expected a number of seconds (0 or more)")
    if "restoredBytes" in state and state["restoredBytes"] is not None and restored is None:
        raise Unreadable("restoredBytes: expected a count of bytes (0 or more)")
    if ok and (rto is None or restored is None):
        raise Unreadable("ok is true without rtoSeconds and restoredBytes")  # a success without its numbers
    return {"time": time, "ok": ok, "rtoSeconds": rto, "restoredBytes": restored,
            "replayedToArchiveEnd": state["replayedToArchiveEnd"]}


def read_recovery_window(text: Any) -> RecoveryWindow:
    """{time, ok, repos} of a pgbackup-verify.json's windows (components/window.py's one validation);
    Unreadable otherwise."""
    state = _load(text)
    time = _time(state.get("time"))
    if time is None:
        raise Unreadable("time: expected UTC ISO 8601 (2026-11-26T05:00:00Z)")
    parse_time(time)
    try:
        repos = read_window(state)
    except ValueError as err:
        raise Unreadable(str(err)) from None
    return {"time": time, "ok": window_ok(repos), "repos": repos}


def last_verify(text: Any) -> LastVerify | None:
    """read_verify's result, or None for a file that is not as the service writes it."""
    try:
        return read_verify(text)
    except Unreadable:
        return None


def last_drill(text: Any) -> LastDrill | None:
    """read_drill's result, or None for a file that is not as the service writes it."""
    try:
        return read_drill(text)
    except Unreadable:
        return None


def newest(results: Sequence[R | None]) -> R | None:
    """The newest of the nodes' results by their parsed time (a failure before a success of the same second;
    then the first node), or None."""
    found = [r for r in results if r is not None]
    return max(found, key=lambda r: (parse_time(r["time"] or ""), not r["ok"])) if found else None


def choose(path: str, texts: Sequence[tuple[str, Any]], read: Any, now: datetime,
           unreadable: dict[str, Any]) -> Any:
    """An output from each node's (node, state file text): the newest readable result, or null when
    no node has one. Any node's file that cannot be read (damaged, wrong types, nested too deep, or dated
    more than CLOCK_SKEW past `now`) makes the output say so: `unreadable` names each such node and why, and
    `ok` is false (a file nobody can read proves nothing, and may hide a failure); the other fields are the
    newest readable result's (`unreadable`'s values: no result's)."""
    results, problems = [], []
    for node, text in texts:
        if text is None:
            continue  # no state file: that node never ran it
        try:
            result = read(text)
            when = parse_time(result["time"])
            if when > now + CLOCK_SKEW:
                raise Unreadable(f"time {result['time']} is more than {CLOCK_SKEW.seconds // 60} minutes past "
                                 f"this run's clock ({now:%Y-%m-%dT%H:%M:%SZ}): a wrong clock or a forged time")
            results.append(result)
        except Unreadable as err:
            problems.append(f"{node}: {path}: {err}")
    found = newest(results)
    if not problems:
        return found
    return {**(found or unreadable), "ok": False, "unreadable": "; ".join(problems)}


def proofs_of(reports: Sequence[Mapping[str, Any]], now: datetime) -> Proofs:
    """lastVerify and lastDrill from every node's verify report (its "proofs": the state files' text), `now`
    being the program's clock when the reports arrived.

    The newest result wins whichever node holds it, the current leader's or not: the verification runs on
    whichever node was the leader at the time (the drill on a replica), so after a failover the newest result
    is on a node that is no longer the leader, and the leader may hold an old one or none."""
    texts: list[tuple[str, dict[str, Any]]] = []
    for index, report in enumerate(reports):
        proofs, node = report.get("proofs"), report.get("node")
        texts.append((node if isinstance(node, str) and _NODE.fullmatch(node) else f"node {index + 1}",
                      proofs if isinstance(proofs, dict) else {}))
    return {
        "lastVerify": choose(PATHS.verify_state, [(n, t.get("verify")) for n, t in texts],
                             read_verify, now, {"time": None, "ok": False, "errors": None}),
        "lastDrill": choose(PATHS.drill_state, [(n, t.get("drill")) for n, t in texts],
                            read_drill, now, {"time": None, "ok": False, "rtoSeconds": None, "restoredBytes": None,
                                              "replayedToArchiveEnd": False}),
        "recoveryWindow": choose(PATHS.verify_state, [(n, t.get("verify")) for n, t in texts],
                                 read_recovery_window, now, {"time": None, "ok": False, "repos": None}),
    }
