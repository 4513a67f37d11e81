"""What a repository holds, from `pgbackrest --output=json info` (one stanza's document), and whether a
recovery target lies within it. Pure functions: the unit tests feed them known documents."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from components.report import repo_of
from components.window import RepoWindow

LATEST = "latest"
# The first filter of a target's text (the leader's PostgreSQL is the judge): a calendar date, a time, a zone.
TARGET_FORM = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?\s*(Z|[+-]\d{2}(:?\d{2})?)")


class TargetRefused(ValueError):
    """The target is outside what the repository can restore to; the message says what it holds."""


def parse_target(text: str) -> datetime | None:
    """`latest` (None), or a time with its zone: '2026-11-20 14:15:00+00', '2026-11-20T14:15:00Z'."""
    if text == LATEST:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--to {text!r}: expected 'latest' or a time such as '2026-11-20 14:15:00+00'") from None
    if moment.tzinfo is None:
        raise ValueError(f"--to {text!r}: give the time zone too, e.g. '{text}+00' (UTC)")
    return moment


def shown(epoch: float | None) -> str:
    if epoch is None:
        return "unknown"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def backups(info: dict[str, Any], repo: int = 1) -> list[dict[str, Any]]:
    """The repository's backups, oldest first."""
    found = [b for b in info.get("backup") or [] if repo_of(b) == repo]
    return sorted(found, key=lambda b: b["timestamp"]["stop"])


def current_archive(info: dict[str, Any], repo: int = 1) -> dict[str, Any] | None:
    """The archive entry ({id: '17-1', min, max}) of the current database in `repo`."""
    archives = [a for a in info.get("archive") or [] if repo_of(a) == repo]
    return archives[-1] if archives else None


def newest_backups(info: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """Per repository ("1", "2"...): the newest backup {label, type, stopTime}, or None."""
    repos = sorted({repo_of(b) for b in info.get("backup") or []} | {repo_of(a) for a in info.get("archive") or []})
    result: dict[str, dict[str, Any] | None] = {}
    for repo in repos or [1]:
        found = backups(info, repo)
        result[str(repo)] = None if not found else {
            "label": found[-1]["label"], "type": found[-1]["type"],
            "stopTime": datetime.fromtimestamp(found[-1]["timestamp"]["stop"], tz=UTC).isoformat()
            .replace("+00:00", "Z")}
    return result


@dataclass(frozen=True)
class Holdings:
    """repo1's restorable span: its backups, and the newest archived WAL segment with the time it was
    written to the repository (None when unknown)."""

    backups: list[dict[str, Any]]
    newest_wal: str | None
    newest_wal_time: float | None

    def describe(self) -> str:
        if not self.backups:
            return "the repository (repo1) holds no backup"
        oldest, newest = self.backups[0], self.backups[-1]
        return (f"the repository (repo1) holds {len(self.backups)} backups, the oldest {oldest['label']} "
                f"(ended {shown(oldest['timestamp']['stop'])}), the newest {newest['label']} "
                f"(ended {shown(newest['timestamp']['stop'])}), and WAL up to {self.newest_wal or 'none'} "
                f"(archived {shown(self.newest_wal_time)})")


def holdings(info: dict[str, Any], newest_wal_time: float | None) -> Holdings:
    archive = current_archive(info)
    return Holdings(backups(info), (archive or {}).get("max"), newest_wal_time)


def choose_backup(held: Holdings, target: datetime | None) -> dict[str, Any]:
    """The backup a restore to `target` starts from (pgBackRest's own choice: the newest that ended before
    the target; the newest for `latest`), or TargetRefused when the target is outside the repository."""
    if not held.backups:
        raise TargetRefused(f"nothing to recover from: {held.describe()}")
    if target is None:
        return held.backups[-1]
    epoch = target.timestamp()
    reach = (f"the reachable range is {shown(held.backups[0]['timestamp']['stop'])} to "
             f"{shown(held.newest_wal_time)}; {held.describe()}")
    if epoch < held.backups[0]["timestamp"]["stop"]:
        raise TargetRefused(f"{target.isoformat()} is older than the oldest backup's end: {reach}")
    if held.newest_wal_time is None or epoch > held.newest_wal_time:
        raise TargetRefused(f"{target.isoformat()} is newer than the newest archived WAL: {reach}")
    return [b for b in held.backups if b["timestamp"]["stop"] <= epoch][-1]


def narrow(window: RepoWindow, verified: str, target: datetime | None, backup: dict[str, Any]) -> None:
    """The recoverable window of repo1 the newest verification computed (components/window.py) narrows what
    choose_backup allowed. A verification runs daily: what came after it, the live check alone judges (a target
    after the window's end, a window with no piece). TargetRefused when the backup a restore starts from is a
    set it found damaged (or one depending on it), or when the target lies before its first piece or between
    two, naming the pieces."""
    where = f"the recoverable window of repo1 (the verification at {verified})"
    pieces = window["pieces"]
    reach = "; ".join(f"{p['fromTime']} to {p['toTime']}" for p in pieces) or "none"
    listed = "" if len(pieces) == window["pieceCount"] else f" (the first and the newest of {window['pieceCount']})"
    damaged = {d["label"]: d["reason"] for d in window["damaged"]}
    when = "the latest state" if target is None else target.isoformat()
    if backup["label"] in damaged:
        raise TargetRefused(f"the backup a restore to {when} starts from, {backup['label']}, cannot start a recovery: "
                            f"{damaged[backup['label']]}, as {where} found. Choose a target in its pieces{listed}: "
                            f"{reach}; or take a new full backup (`pgbackup backup --type full`) and expire the "
                            "damaged set (`pgbackup status` says how)")
    if target is None or not pieces or target.timestamp() > pieces[-1]["to"]:
        return
    epoch = target.timestamp()
    if any(p["from"] <= epoch <= p["to"] for p in pieces) or (listed and epoch >= pieces[0]["from"]):
        return  # in a piece (or maybe in one the file does not list)
    raise TargetRefused(f"{when} lies outside {where}: no backup with continuous WAL after it reaches it; "
                        f"its pieces{listed}: {reach}")


def wal_listing_path(stanza: str, info: dict[str, Any]) -> tuple[str, str] | None:
    """For `pgbackrest repo-ls`: the directory of repo1's newest WAL segment and the segment's name."""
    archive = current_archive(info)
    if not archive or not archive.get("max"):
        return None
    segment: str = archive["max"]
    return f"archive/{stanza}/{archive['id']}/{segment[:16]}", segment


def newest_wal_time(listing: dict[str, Any], segment: str) -> float | None:
    """The time `segment` was written to the repository, from `repo-ls --output=json` of its directory."""
    times = [float(entry["time"]) for name, entry in listing.items()
             if name.startswith(segment) and entry.get("type") == "file" and "time" in entry]
    return max(times) if times else None
