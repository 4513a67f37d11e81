"""The recoverable window as the nodes publish it, read defensively: the one validation that both the stack
output `recoveryWindow` (components/proofs.py) and `pgbackup status` (pgbackup_cli/untrusted.py) use.

pgbackup-verify (templates/monitoring/pgbackup-verify.py.j2, recovery_window: the one computation) writes, per
repository, under `repos.<n>.window` of pgbackup-verify.json:

    {"pieces": [{"from": epoch, "to": epoch, "fromTime": ISO, "toTime": ISO}, ...],  oldest first, disjoint
     "pieceCount": n,            all the pieces (the file lists the first and the newest, at most MAX_PIECES)
     "damaged": [{"label": backup label, "reason": text}, ...],  sets that cannot start a recovery
     "promisedFrom": epoch | null, "missingSeconds": n, "endLagSeconds": n | null}

The file is written by a service running as postgres: every field is checked, the ISO times are rebuilt from
the epochs (never the file's text), and anything not as written is a ValueError saying which field."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, TypedDict

MAX_PIECES = 32
MAX_DAMAGED = 16
MAX_REPOS = 16
LATEST = 253402300800  # 10000-01-01: no later time is one
LABEL = re.compile(r"[0-9]{8}-[0-9]{6}F(?:_[0-9]{8}-[0-9]{6}[DI])?")
_REPO = re.compile(r"[1-9][0-9]?")
_REASON = re.compile(r"[A-Za-z0-9 _.-]{1,120}")


# A stretch of time a recovery can reach: `from` and `to` in seconds since the epoch, and as ISO 8601.
Piece = TypedDict("Piece", {"from": int, "to": int, "fromTime": str, "toTime": str})


class Damaged(TypedDict):
    label: str
    reason: str


class RepoWindow(TypedDict):
    pieces: list[Piece]
    pieceCount: int
    damaged: list[Damaged]
    promisedFrom: int | None
    missingSeconds: int
    endLagSeconds: int | None


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value < LATEST:
        raise ValueError(f"{where}: expected seconds since the epoch")
    return value


def _seconds(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value < 2**53:
        raise ValueError(f"{where}: expected a number of seconds (0 or more)")
    return value


def repo_window(value: Any, where: str) -> RepoWindow:
    """One repository's window, checked field by field."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object")
    raw = value.get("pieces")
    if not isinstance(raw, list) or len(raw) > MAX_PIECES:
        raise ValueError(f"{where}.pieces: expected a list of at most {MAX_PIECES} {{from, to}}")
    pieces: list[Piece] = []
    for number, piece in enumerate(raw):
        if not isinstance(piece, dict):
            raise ValueError(f"{where}.pieces[{number}]: expected {{from, to}}")
        start = _epoch(piece.get("from"), f"{where}.pieces[{number}].from")
        end = _epoch(piece.get("to"), f"{where}.pieces[{number}].to")
        if end < start or (pieces and start <= pieces[-1]["to"]):
            raise ValueError(f"{where}.pieces[{number}]: expected to >= from, after the piece before it")
        pieces.append({"from": start, "to": end, "fromTime": iso(start), "toTime": iso(end)})
    count = _seconds(value.get("pieceCount"), f"{where}.pieceCount")
    if count < len(pieces):
        raise ValueError(f"{where}.pieceCount: fewer than the pieces listed")
    raw = value.get("damaged")
    if not isinstance(raw, list) or len(raw) > MAX_DAMAGED:
        raise ValueError(f"{where}.damaged: expected a list of at most {MAX_DAMAGED} {{label, reason}}")
    damaged: list[Damaged] = []
    for number, entry in enumerate(raw):
        label = entry.get("label") if isinstance(entry, dict) else None
        reason = entry.get("reason") if isinstance(entry, dict) else None
        if not (isinstance(label, str) and LABEL.fullmatch(label)):
            raise ValueError(f"{where}.damaged[{number}].label: expected a backup label (20261126-050000F)")
        if not (isinstance(reason, str) and _REASON.fullmatch(reason)):
            raise ValueError(f"{where}.damaged[{number}].reason: expected a short text")
        damaged.append({"label": label, "reason": reason})
    promised, lag = value.get("promisedFrom"), value.get("endLagSeconds")
    return {"pieces": pieces, "pieceCount": count, "damaged": damaged,
            "promisedFrom": None if promised is None else _epoch(promised, f"{where}.promisedFrom"),
            "missingSeconds": _seconds(value.get("missingSeconds"), f"{where}.missingSeconds"),
            "endLagSeconds": None if lag is None else _seconds(lag, f"{where}.endLagSeconds")}


def read_window(state: dict[str, Any]) -> dict[str, RepoWindow | None]:
    """Every repository's window in a pgbackup-verify.json's content ({} for a file written before windows
    were; a repository's None: its window could not be computed). ValueError saying which field is wrong."""
    repos = state.get("repos", {})
    if not isinstance(repos, dict) or len(repos) > MAX_REPOS:
        raise ValueError(f"repos: expected an object of at most {MAX_REPOS} repositories")
    found: dict[str, RepoWindow | None] = {}
    for index, report in repos.items():
        if not (isinstance(index, str) and _REPO.fullmatch(index)) or not isinstance(report, dict):
            raise ValueError("repos: expected {repository number: report}")
        if "window" in report:
            found[index] = None if report["window"] is None else repo_window(report["window"],
                                                                             f"repos.{index}.window")
    return dict(sorted(found.items(), key=lambda item: int(item[0])))


def window_ok(windows: dict[str, RepoWindow | None]) -> bool:
    """Whether every repository can recover to all its retention keeps, with no damaged set."""
    return all(w is not None and not w["missingSeconds"] and not w["damaged"] for w in windows.values())


def describe(index: str, window: RepoWindow | None) -> list[str]:
    """`pgbackup status`'s lines of one repository's window (the stanza's remedy for a damaged set)."""
    if window is None:
        return [f"recoverable window of repo{index}: not computed (pgbackrest info or the archive listing failed)"]
    pieces = window["pieces"]
    if not pieces:
        lines = [f"recoverable window of repo{index}: none (no backup with continuous WAL after it)"]
    elif len(pieces) == 1:
        lines = [f"recoverable window of repo{index}: from {pieces[0]['fromTime']} to {pieces[0]['toTime']}"]
    else:
        lines = [f"recoverable window of repo{index}: from {pieces[0]['fromTime']} to {pieces[-1]['toTime']}, "
                 f"in {window['pieceCount']} pieces (a WAL gap splits it):"]
        lines += [f"  piece {p['fromTime']} to {p['toTime']}" for p in pieces]
    if window["pieceCount"] > len(pieces):
        lines.append(f"  ({window['pieceCount'] - len(pieces)} more pieces between the first and the newest)")
    return lines


def remedies(stanza: str, index: str, window: RepoWindow | None) -> list[str]:
    """What `pgbackup status` says of each damaged set: which, and how to be rid of it (pgBackRest's
    `expire --set` removes the set and every backup that depends on it, keeping at least one full backup)."""
    if window is None:
        return []
    found = []
    for entry in window["damaged"]:
        if entry["reason"].startswith("depends on"):
            continue  # expired with the set it depends on
        dependents = [d["label"] for d in window["damaged"] if d["reason"].endswith(f" {entry['label']}")]
        found.append(f"backup set {entry['label']} in repo{index} is damaged"
                     + (f" (and so are its dependents {', '.join(dependents)})" if dependents else "")
                     + f": it cannot start a recovery. After a new full backup (`pgbackup backup --type full "
                       f"--repo {index}`), remove it on the leader: `sudo -u postgres pgbackrest --stanza={stanza} "
                       f"--repo={index} expire --set={entry['label']}`")
    return found
