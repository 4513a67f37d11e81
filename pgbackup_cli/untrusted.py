"""What the command reads from the nodes is untrusted: the state files the verification and drill services
write as postgres (and root's own recovery state), and any text a node sends back.

One reader (READER) opens a state file without following a link and without blocking, refuses anything but
a regular file, and reads at most NAMES.state_max_bytes; it runs as the file's owner (`postgres` for the
services' files, which root never opens) or, for root's own file in a root-owned directory, as root, and
then also refuses a file root does not own or that others may write. Its answer is parsed here with a
bounded depth and validated field by field: a damaged file reads as "unreadable: <why>", never as a result
and never as a crash. `printable` is the one way node-controlled text reaches the operator's terminal."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from components.layout import NAMES
from components.window import read_window

LIMIT = NAMES.state_max_bytes
MAX_DEPTH = 16  # the services write objects three levels deep ({"repos": {"1": {"errors": {...}}}})
FUTURE_SECONDS = 300.0  # a result dated later than the operator's clock plus this is refused (a forged time)

# On the node, with python3 -I: `READER LIMIT PATH...` prints {"PATH": null | {"text": ...} | {"error": ...}}.
READER = r"""
import errno, json, os, stat, sys
limit, answer = int(sys.argv[1]), {}
flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
for path in sys.argv[2:]:
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        answer[path] = None
        continue
    except OSError as error:
        answer[path] = {"error": "a symbolic link, not followed" if error.errno == errno.ELOOP
                        else "cannot open: %s" % (error.strerror or type(error).__name__)}
        continue
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            answer[path] = {"error": "not a regular file"}
        elif os.geteuid() == 0 and (info.st_uid != 0 or info.st_mode & 0o022):
            answer[path] = {"error": "not root's own file (owner uid %d, mode %o)" % (info.st_uid,
                                                                                     stat.S_IMODE(info.st_mode))}
        elif info.st_size > limit:
            answer[path] = {"error": "too large (%d bytes, at most %d)" % (info.st_size, limit)}
        else:
            data = b""
            while len(data) <= limit:
                chunk = os.read(fd, limit + 1 - len(data))
                if not chunk:
                    break
                data += chunk
            if len(data) > limit:
                answer[path] = {"error": "too large (more than %d bytes)" % limit}
            else:
                try:
                    answer[path] = {"text": data.decode("utf-8")}
                except UnicodeDecodeError:
                    answer[path] = {"error": "not UTF-8 text"}
    except OSError as error:
        answer[path] = {"error": "cannot read: %s" % (error.strerror or type(error).__name__)}
    finally:
        os.close(fd)
print(json.dumps(answer))
"""


@dataclass(frozen=True)
class Unreadable:
    """A state file that is there but not a result: why, in words."""

    reason: str

    def __str__(self) -> str:
        return f"unreadable: {self.reason}"


def reader_command(paths: Sequence[str], user: str | None) -> str:
    """The bash command that reads `paths` on a node, as `user` (root when None), its answer capped."""
    q = shlex.quote
    as_user = f"runuser -u {q(user)} -- env --chdir=/ " if user else ""
    return (f"{as_user}timeout -k 5 60 python3 -I -c {q(READER)} {LIMIT} {' '.join(q(p) for p in paths)} "
            f"| head -c {len(paths) * 6 * LIMIT + 4096}")  # JSON-escaped: at most 6 bytes a byte, and framing


def answers(out: str, paths: Sequence[str]) -> dict[str, str | Unreadable | None]:
    """The reader's answer for each path: its text, None (no such file) or Unreadable. The answer comes from
    a process running as the files' owner: it is checked as closely as the files themselves."""
    try:
        value = loads(out)
    except ValueError as error:
        value = Unreadable(f"the node's reader gave no answer ({error})")
    result: dict[str, str | Unreadable | None] = {}
    for path in paths:
        entry = value.get(path, Unreadable("the node's reader did not answer")) if isinstance(value, dict) else value
        if isinstance(entry, Unreadable) or entry is None:
            result[path] = entry
        elif isinstance(entry, dict) and isinstance(entry.get("text"), str) and len(entry["text"]) <= LIMIT:
            result[path] = entry["text"]
        elif isinstance(entry, dict) and isinstance(entry.get("error"), str):
            result[path] = Unreadable(entry["error"][:200])
        else:
            result[path] = Unreadable("the node's reader gave a malformed answer")
    return result


def depth(text: str) -> int:
    """How deep the JSON text's arrays and objects nest (brackets inside strings do not count)."""
    deepest = level = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest


def loads(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads for untrusted text: nesting deeper than max_depth, and anything json refuses (NaN and
    infinities too), is a ValueError."""
    if depth(text) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=constant)
    except RecursionError:  # unreachable after the depth check; kept so that no input can crash the caller
        raise ValueError("nested too deep") from None


def epoch(value: Any, now: float) -> float:
    """A result's `time`: an ISO 8601 time with its zone (the services write `2026-11-20T14:15:00Z`) or seconds
    since the epoch; no later than `now` plus FUTURE_SECONDS. ValueError saying why otherwise."""
    if type(value) in (int, float):
        if not math.isfinite(value) or not 0 <= value < 253402300800:  # up to year 9999
            raise ValueError(f"time: {value!r} is not a time")
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            raise ValueError(f"time: {value!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise ValueError(f"time: {value!r} has no time zone")
        seconds = parsed.timestamp()
    else:
        raise ValueError(f"time: expected an ISO 8601 time, got {type(value).__name__}")
    if seconds > now + FUTURE_SECONDS:
        raise ValueError(f"time: {iso(seconds)} is in the future (now {iso(now)}): a clock or the file is wrong")
    return seconds


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def _count(state: dict[str, Any], key: str, optional: bool = True) -> int | None:
    value = state.get(key)
    if value is None and optional:
        return None
    if type(value) is not int or not 0 <= value < 2**53:
        raise ValueError(f"{key}: expected a count, got {_kind(value)}")
    return value


def _seconds(state: dict[str, Any], key: str, label: str = "") -> float | None:
    value = state.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value < 10**9:
        raise ValueError(f"{label or key}: expected seconds, got {_kind(value)}")
    return float(value)


def _text(state: dict[str, Any], key: str, limit: int = 2000) -> str | None:
    value = state.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected text, got {_kind(value)}")
    return value[:limit]


def _flag(state: dict[str, Any], key: str, optional: bool = True) -> bool | None:
    value = state.get(key)
    if value is None and optional:
        return None
    if type(value) is not bool:
        raise ValueError(f"{key}: expected true or false, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _state(text: str) -> dict[str, Any]:
    value = loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {_kind(value)}")
    return value


ERROR_KINDS = ("checksum", "missing_wal", "other")
PHASE = re.compile(r"[a-z_]{1,32}")


def verify_result(text: str, node: str, now: float) -> dict[str, Any]:
    """{node, time, epoch, ok, errors: {checksum, missing_wal, other}, window: {repo: window}} of a
    pgbackup-verify.json; `ok` is what the counts say, whatever the file claims. ValueError saying which field
    is wrong."""
    state = _state(text)
    seconds = epoch(state.get("time"), now)
    ok = _flag(state, "ok", optional=False)
    errors = state.get("errors")
    if not isinstance(errors, dict):
        raise ValueError(f"errors: expected {{checksum, missing_wal, other}}, got {_kind(errors)}")
    counts = {kind: _count(errors, kind, optional=False) for kind in ERROR_KINDS}
    return {"node": node, "time": iso(seconds), "epoch": seconds, "ok": bool(ok) and not any(counts.values()),
            "errors": counts, "window": read_window(state)}  # components/window.py: the one validation


def drill_result(text: str, node: str, now: float) -> dict[str, Any]:
    """{node, time, epoch, ok, repo, reason, refused, phases, rtoSeconds, restoredBytes, replayedToArchiveEnd}
    of a pgbackup-drill.json. ValueError saying which field is wrong."""
    state = _state(text)
    seconds = epoch(state.get("time"), now)
    ok = _flag(state, "ok", optional=False)
    repo = state.get("repo")
    if type(repo) is not int or not 1 <= repo <= 256:
        raise ValueError(f"repo: expected a repository number, got {_kind(repo)}")
    raw = state.get("phases") if state.get("phases") is not None else {}
    if not isinstance(raw, dict) or len(raw) > 20 or not all(isinstance(k, str) and PHASE.fullmatch(k) for k in raw):
        raise ValueError(f"phases: expected {{phase: seconds}}, got {_kind(raw)}")
    phases = {name: _seconds(raw, name, f"phases.{name}") for name in raw}
    result = {"node": node, "time": iso(seconds), "epoch": seconds, "ok": ok, "repo": repo,
              "reason": _text(state, "reason"), "refused": _text(state, "refused", 64), "phases": phases,
              "rtoSeconds": _seconds(state, "rtoSeconds"), "restoredBytes": _count(state, "restoredBytes"),
              "replayedToArchiveEnd": _flag(state, "replayedToArchiveEnd")}
    if ok and (result["rtoSeconds"] is None or result["restoredBytes"] is None):
        raise ValueError("a success without its rtoSeconds and restoredBytes")
    return result


# C0 controls but newline and tab, DEL, C1 controls, and the characters that reorder or hide text: the
# bidirectional embeddings, overrides and isolates, the directional marks, the line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` safe for a terminal: every control character (ESC, CR, backspace, ...) and every bidirectional
    control written as an escape (`\\x1b`, `\\u202e`); newlines and tabs are kept."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)
