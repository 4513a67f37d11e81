"""Backups that prove themselves (issue 9): what the scheduled verification's files on every node see, and the
`lastVerify` / `lastDrill` outputs read from the nodes' state files at apply time.

The state files are written by services running as postgres: to the program they are untrusted input. They
arrive as text in the verify step's report and are parsed here, field by field; anything not as the services
write it is dropped (a damaged file reads as no result, never as a good one)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

from components.config import Settings
from components.context import NodeContext, extend
from components.layout import NAMES

STATE_MAX_BYTES = NAMES.state_max_bytes
ERROR_KINDS = ("checksum", "missing_wal", "other")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class VerifyErrors(TypedDict):
    checksum: int
    missing_wal: int
    other: int


class LastVerify(TypedDict):
    """The `lastVerify` output."""

    time: str
    ok: bool
    errors: VerifyErrors


class LastDrill(TypedDict):
    """The `lastDrill` output."""

    time: str
    ok: bool
    rtoSeconds: float | None
    restoredBytes: int | None
    replayedToArchiveEnd: bool


class Proofs(TypedDict):
    lastVerify: LastVerify | None
    lastDrill: LastDrill | None


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


R = TypeVar("R", LastVerify, LastDrill)


def _load(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str) or len(text) > STATE_MAX_BYTES:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _count(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value < 2**53 else None


def _seconds(value: Any) -> float | None:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _time(value: Any) -> str | None:
    return value if isinstance(value, str) and _TIME.fullmatch(value) else None


def last_verify(text: Any) -> LastVerify | None:
    """{time, ok, errors: {checksum, missing_wal, other}} of a pgbackup-verify.json, or None."""
    state = _load(text)
    if state is None or _time(state.get("time")) is None or type(state.get("ok")) is not bool:
        return None
    raw = state.get("errors")
    errors = {kind: _count(raw.get(kind)) for kind in ERROR_KINDS} if isinstance(raw, dict) else {}
    checksum, missing_wal, other = (errors.get(kind) for kind in ERROR_KINDS)
    if checksum is None or missing_wal is None or other is None:
        return None
    # "ok" is what the counts say, whatever the file claims.
    return {"time": state["time"], "ok": state["ok"] and not (checksum or missing_wal or other),
            "errors": {"checksum": checksum, "missing_wal": missing_wal, "other": other}}


def last_drill(text: Any) -> LastDrill | None:
    """{time, ok, rtoSeconds, restoredBytes, replayedToArchiveEnd} of a pgbackup-drill.json, or None."""
    state = _load(text)
    if state is None:
        return None
    time, ok, rto, restored = (_time(state.get("time")), state.get("ok"), _seconds(state.get("rtoSeconds")),
                               _count(state.get("restoredBytes")))
    replayed = state.get("replayedToArchiveEnd")
    if time is None or type(ok) is not bool or type(replayed) is not bool:
        return None
    if ok and (rto is None or restored is None):
        return None  # a success without its numbers is not one
    return {"time": time, "ok": ok, "rtoSeconds": rto, "restoredBytes": restored, "replayedToArchiveEnd": replayed}


def newest(results: Sequence[R | None]) -> R | None:
    """The newest of the nodes' results (ISO 8601 UTC times of one format compare as text), or None."""
    found = [r for r in results if r is not None]
    return max(found, key=lambda r: r["time"]) if found else None


def proofs_of(reports: Sequence[Mapping[str, Any]]) -> Proofs:
    """lastVerify and lastDrill from every node's verify report (its "proofs": the state files' text)."""
    texts: list[dict[str, Any]] = []
    for report in reports:
        proofs = report.get("proofs")
        texts.append(proofs if isinstance(proofs, dict) else {})
    return {"lastVerify": newest([last_verify(t.get("verify")) for t in texts]),
            "lastDrill": newest([last_drill(t.get("drill")) for t in texts])}
