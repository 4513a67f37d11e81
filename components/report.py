"""The verify step's report: what each node prints at the end of the apply, and what the stack outputs read
from it. The one owner of its format (templates/scripts/verify.sh.j2 prints it, `parse` reads it, `line` is
what the tests' mocks print in its place) and of reading pgBackRest's `info` document.

Format: the step's last line starting with "{" is a JSON object, keys sorted: {"node": <name>, "role": "leader"
| "replica" | ..., "info": <`pgbackrest --output=json info`> | null, "repo_bytes": {"<repo index>": <bytes of
its archive/ and backup/>} | null, "proofs": {"verify": <text of the node's pgbackup-verify.json> | null,
"drill": <text of its pgbackup-drill.json> | null}}; info and repo_bytes on the leader only, proofs on every node
(untrusted text: components/proofs.py parses it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NotRequired, TypedDict

from components.providers import Price


class VerifyReport(TypedDict):
    node: str
    role: str
    info: list[dict[str, Any]] | None
    repo_bytes: dict[str, int] | None
    proofs: NotRequired[dict[str, str | None]]


def line(node: str, role: str, info: list[dict[str, Any]] | None, repo_bytes: dict[str, int] | None = None,
         proofs: dict[str, str | None] | None = None) -> str:
    """The report as verify.sh.j2 prints it (without the line feed)."""
    return json.dumps({"node": node, "role": role, "info": info, "repo_bytes": repo_bytes,
                       "proofs": proofs or {"verify": None, "drill": None}}, sort_keys=True)


def parse(stdout: str) -> VerifyReport:
    """The report in a verify step's stdout: its last JSON line."""
    for text in reversed(stdout.strip().splitlines()):
        if text.startswith("{"):
            report: VerifyReport = json.loads(text)
            return report
    raise ValueError(f"the verify step printed no JSON line: {stdout[-400:]!r}")


def leader_info(reports: Sequence[VerifyReport]) -> dict[str, Any] | None:
    """The stanza's `info` as the leader reported it, or None when no leader did."""
    for report in reports:
        if report.get("role") == "leader" and report.get("info"):
            stanzas = report["info"] or []
            return stanzas[0] if stanzas else None
    return None


class StanzaStatus(TypedDict):
    code: int
    message: str


class LastBackup(TypedDict):
    label: str
    type: str
    repo: int
    stopTime: str


class WalArchive(TypedDict):
    min: str | None
    max: str | None


class RepositoryCost(TypedDict):
    provider: str
    bytes: int
    usdPerTbMonth: float
    priceAsOf: str
    monthlyUsd: float


class StorageCost(TypedDict):
    repositories: dict[str, RepositoryCost]
    totalBytes: int
    monthlyUsd: float


class NodeRole(TypedDict):
    name: str
    host: str
    role: str


def repo_of(entry: dict[str, Any]) -> int:
    """The repository (1, or 2 for monthly archives) an `info` backup or archive entry belongs to."""
    return int((entry.get("database") or {}).get("repo-key", 1))


def stanza_status(info: dict[str, Any] | None) -> StanzaStatus:
    """{code, message} as `pgbackrest info` reports them; code -1 when no leader reported."""
    if info is None:
        return {"code": -1, "message": "no leader reported pgbackrest info at apply time"}
    status = info["status"]
    return {"code": status["code"], "message": status["message"]}


def last_backup(info: dict[str, Any] | None) -> LastBackup | None:
    """{label, type, repo, stopTime} of the newest backup in any repository (stopTime in UTC, ISO 8601)."""
    backups = (info or {}).get("backup") or []
    if not backups:
        return None
    newest = max(backups, key=lambda b: b["timestamp"]["stop"])
    stop = datetime.fromtimestamp(newest["timestamp"]["stop"], tz=UTC)
    return {"label": newest["label"], "type": newest["type"], "repo": repo_of(newest),
            "stopTime": stop.isoformat().replace("+00:00", "Z")}


def wal_archive(info: dict[str, Any] | None) -> WalArchive | None:
    """{min, max} WAL segment of the current database's archive in repo1 (where every backup's WAL is), or
    None."""
    archives = [a for a in (info or {}).get("archive") or [] if repo_of(a) == 1]
    if not archives:
        return None
    current = archives[-1]
    return {"min": current.get("min"), "max": current.get("max")}


TB = 10**12


def storage_cost(reports: Sequence[VerifyReport], prices: Mapping[int, tuple[str, Price]]) -> StorageCost | None:
    """What the repositories hold and what that costs a month: per repository (by index) its provider, bytes,
    price and monthly estimate, then the totals; None when no leader reported. `prices`: each repository's
    provider and price. Storage only (requests, egress, providers' minimums and versions kept after a
    deletion are not counted)."""
    measured = next((r.get("repo_bytes") for r in reports if r.get("role") == "leader" and r.get("repo_bytes")),
                    None)
    if measured is None:
        return None
    repositories: dict[str, RepositoryCost] = {}
    for index, (provider, price) in sorted(prices.items()):
        size = int(measured.get(str(index), 0))
        repositories[str(index)] = {
            "provider": provider, "bytes": size, "usdPerTbMonth": price.usd_per_tb_month, "priceAsOf": price.as_of,
            "monthlyUsd": round(size / TB * price.usd_per_tb_month, 2)}
    return {
        "repositories": repositories,
        "totalBytes": sum(r["bytes"] for r in repositories.values()),
        "monthlyUsd": round(sum(r["bytes"] / TB * r["usdPerTbMonth"] for r in repositories.values()), 2),
    }
