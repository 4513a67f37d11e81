"""pgbackup_cli/untrusted.py without nodes: the terminal escaping, the bounded JSON parser, times, and the
reader's answer checked as closely as the files (tests/test_operator_reads.py runs the reader for real)."""

from __future__ import annotations

import json

import pytest

from pgbackup_cli.untrusted import LIMIT, Unreadable, answers, epoch, loads, printable, verify_result

NOW = 1796000000.0  # 2026-11-30T00:53:20Z


def test_printable_escapes_every_control_and_reordering_character_and_keeps_lines() -> None:
    hostile = "a\x1b[2J\x9b31m\rb\x08\x7f\x00c\u202edcba\u2066x\u2069\u200f\u2028\n\tend"
    shown = printable(hostile)
    assert shown == ("a\\x1b[2J\\x9b31m\\x0db\\x08\\x7f\\x00c\\u202edcba\\u2066x\\u2069\\u200f\\u2028\n\tend")
    assert printable(shown) == shown  # idempotent: escaping twice changes nothing
    assert printable("pgnode1: ok — 12.5 s, données") == "pgnode1: ok — 12.5 s, données"


def test_loads_bounds_the_depth_and_refuses_what_json_is_not() -> None:
    assert loads('{"a": [[["]]]]]"]]]}') == {"a": [[["]]]]]"]]]}  # brackets in strings do not count
    with pytest.raises(ValueError, match="nested deeper than 16 levels"):
        loads("[" * 17 + "]" * 17)
    with pytest.raises(ValueError, match="nested deeper"):
        loads('{"a":' * 5000 + "1" + "}" * 5000)
    for text, why in (("NaN", "NaN is not JSON"), ('{"t": Infinity}', "Infinity is not JSON"),
                      ("{", "Expecting property name"), ('"\\ud800', "Invalid .uXXXX escape")):
        with pytest.raises(ValueError, match=why):
            loads(text)


@pytest.mark.parametrize(("value", "seconds"), [
    ("2026-11-30T00:00:00Z", 1795996800.0),
    ("2026-11-30T05:00:00+05:00", 1795996800.0),
    (1795000000, 1795000000.0),
])
def test_a_time_is_its_instant(value: object, seconds: float) -> None:
    assert epoch(value, NOW) == seconds


@pytest.mark.parametrize(("value", "why"), [
    ("2026-13-01T00:00:00Z", "is not an ISO 8601 time"),
    ("2026-11-30T00:00:00", "has no time zone"),
    ([2026], "got list"), (True, "got bool"), (None, "got NoneType"), (float("nan"), "is not a time"),
    ("2099-01-01T00:00:00Z", "is in the future"), (NOW + 301, "is in the future"),
])
def test_a_bad_or_future_time_is_refused(value: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        epoch(value, NOW)


def test_verify_ok_is_what_the_counts_say() -> None:
    text = json.dumps({"time": "2026-11-29T00:00:00Z", "ok": True, "errors": {"checksum": 1, "missing_wal": 0,
                                                                             "other": 0}})
    assert verify_result(text, "pgnode1", NOW)["ok"] is False


def test_the_readers_answer_is_checked_like_the_files() -> None:
    paths = ["/a", "/b", "/c", "/d"]
    out = json.dumps({"/a": {"text": "{}"}, "/b": None, "/c": {"error": "not a regular file"},
                      "/d": {"text": "x" * (LIMIT + 1)}})
    assert answers(out, paths) == {"/a": "{}", "/b": None, "/c": Unreadable("not a regular file"),
                                   "/d": Unreadable("the node's reader gave a malformed answer")}
    assert answers("", ["/a"])["/a"] == Unreadable("the node's reader gave no answer (Expecting value: line 1 "
                                                   "column 1 (char 0))")
    assert answers("[]", ["/a"])["/a"] == Unreadable("the node's reader gave a malformed answer")
    assert answers("{}", ["/a"])["/a"] == Unreadable("the node's reader did not answer")
