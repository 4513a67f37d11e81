"""A validator for systemd calendar expressions (systemd.time(7), "Calendar Events").

It runs where `pulumi up` runs (which may have no systemd), so a typo in `pgbackup:schedule` is refused
before anything touches a node. The tests hold it against `systemd-analyze calendar` on a corpus of
valid and invalid expressions.
"""

from __future__ import annotations

import re

_SHORTHANDS = {
    "minutely", "hourly", "daily", "monthly", "weekly", "yearly", "annually", "quarterly", "semiannually",
}
_WEEKDAYS = {
    "mon": 0, "monday": 0, "tue": 1, "tuesday": 1, "wed": 2, "wednesday": 2, "thu": 3, "thursday": 3,
    "fri": 4, "friday": 4, "sat": 5, "saturday": 5, "sun": 6, "sunday": 6,
}
_NUM = r"\d+"


class CalendarError(ValueError):
    """The expression is not a systemd calendar event."""


def _component(text: str, low: int, high: int, what: str) -> None:
    """One date/time component: '*', or a comma list of values, ranges a..b, and /repetitions."""
    if text == "*":
        return
    for item in text.split(","):
        match = re.fullmatch(rf"(\*|{_NUM})(?:\.\.({_NUM}))?(?:/({_NUM}))?", item)
        if not match:
            raise CalendarError(f"{what} {item!r} is not a number, range a..b or repetition a/b")
        start, end, step = match.groups()
        for value in (start, end):
            if value not in (None, "*") and not low <= int(value) <= high:
                raise CalendarError(f"{what} {value} is outside {low}..{high}")
        if end is not None and start != "*" and int(end) < int(start):
            raise CalendarError(f"{what} range {item!r} runs backwards")
        if step is not None and int(step) == 0:
            raise CalendarError(f"{what} repetition /0 never advances")


def _weekdays(text: str) -> None:
    for item in text.split(","):
        bounds = re.split(r"\.\.|-", item)
        if len(bounds) > 2 or not all(b.lower() in _WEEKDAYS for b in bounds):
            raise CalendarError(f"weekday {item!r} is not Mon..Sun (or a range such as Mon..Fri)")


def _date(text: str) -> None:
    parts = re.split(r"-|~", text)
    if len(parts) == 2:
        parts = ["*", *parts]
    if len(parts) != 3:
        raise CalendarError(f"date {text!r} is not [YYYY-]MM-DD")
    year, month, day = parts
    if year != "*" and not re.fullmatch(rf"{_NUM}(\.\.{_NUM})?(/{_NUM})?(,{_NUM}(\.\.{_NUM})?(/{_NUM})?)*", year):
        raise CalendarError(f"year {year!r} is not a number")
    _component(month, 1, 12, "month")
    _component(day, 1, 31, "day")


def _time(text: str) -> None:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise CalendarError(f"time {text!r} is not HH:MM[:SS]")
    _component(parts[0], 0, 23, "hour")
    _component(parts[1], 0, 59, "minute")
    if len(parts) == 3:
        seconds = parts[2]
        if re.fullmatch(rf"{_NUM}\.\d+", seconds):
            seconds = seconds.split(".")[0]
        _component(seconds, 0, 59, "second")


def validate_calendar(expression: str) -> None:
    """Raise CalendarError unless `expression` is a systemd calendar event (no time zone suffix)."""
    text = expression.strip()
    if not text:
        raise CalendarError("empty expression")
    if text.lower() in _SHORTHANDS:
        return
    tokens = text.split()
    if tokens[-1].upper() in ("UTC",):
        tokens = tokens[:-1]
    if not tokens:
        raise CalendarError("only a time zone")
    if tokens[0][0].isalpha():
        _weekdays(tokens.pop(0))
    if not tokens:
        return
    if len(tokens) > 2:
        raise CalendarError(f"unexpected {' '.join(tokens[2:])!r}")
    if len(tokens) == 2:
        _date(tokens[0])
        _time(tokens[1])
    elif ":" in tokens[0]:
        _time(tokens[0])
    else:
        _date(tokens[0])


_DAY = 86400
# The shorthands' longest gap between two runs, in days (systemd.time(7): weekly is Mon 00:00, monthly the 1st,
# quarterly and semiannually the 1st of their months).
_SHORTHAND_GAP_DAYS = {"minutely": 1, "hourly": 1, "daily": 1, "weekly": 7, "monthly": 31, "quarterly": 92,
                       "semiannually": 184, "yearly": 366, "annually": 366}


def longest_gap_days(expression: str) -> int:
    """An upper bound, in whole days, on the time between two consecutive runs of a valid calendar expression.

    From what the expression restricts, not from its values: a year or month restricted, up to a year (366); a
    day of the month restricted, up to a month (31), or 35 with a weekday as well (the second Sunday of two
    months can be five weeks apart); only weekdays restricted, a week (7); neither, a day (1). The bound is
    never short of systemd's real gap (tests/test_calendar.py holds it against `systemd-analyze calendar`); it
    may be longer for an unusual expression (every other day counts as a month), which delays an alert on
    missed runs but never raises a false one."""
    text = expression.strip()
    if text.lower() in _SHORTHAND_GAP_DAYS:
        return _SHORTHAND_GAP_DAYS[text.lower()]
    tokens = [t for t in text.split() if t.upper() != "UTC"]
    weekday = bool(tokens) and tokens[0][0].isalpha()
    if weekday:
        tokens.pop(0)
    date = next((t for t in tokens if ":" not in t), None)
    if date is not None:
        parts = re.split(r"-|~", date)
        if len(parts) == 2:
            parts = ["*", *parts]
        year, month, day = parts
        if year != "*" or month != "*":
            return 366
        if day != "*":
            return 35 if weekday else 31
    return 7 if weekday else 1
