"""The calendar validator agrees with systemd itself (`systemd-analyze calendar`) on a corpus of expressions."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from datetime import datetime

import pytest

from components.calendar import CalendarError, longest_gap_days, validate_calendar

CORPUS = [
    # valid
    "Sun *-*-* 02:00:00", "Mon..Sat *-*-* 02:00:00", "Mon-Sat *-*-* 02:00:00", "Sun 02:00", "02:00", "*-*-* 2:0",
    "Sun", "Mon..Fri", "Sun,Wed 03:00", "Sat,Sun *-*-* 04:30:00", "*-*-1..7 02:00", "*-02~01", "2026-*-* 02:00",
    "*:0/15", "*-*-* *:00/15:00", "weekly", "daily", "monthly", "hourly", "Weekly", "quarterly", "semiannually",
    "Sunday 02:00:00 UTC", "Mon-Sun", "*-*-01 00:00:00", "*-01,07-01 03:00", "Fri *-*-1..7 23:59:59",
    "*-*-* 00:00:00.5", "12-25 00:00",
    # invalid
    "Sun *-*-* 25:00", "Funday 02:00", "every sunday", "Sun *-*-* 02:60:00", "*-13-01 00:00", "*-*-32 00:00",
    "daily Mon..Sat 02:00", "Sun *-*-* 02:00:00 02:00:00", "", "02", "*-*-* 1:2:3:4", "Mon..Bla", "*-*-* */0:00",
]


def systemd_accepts(expression: str) -> bool:
    result = subprocess.run(["systemd-analyze", "calendar", expression], capture_output=True, text=True, check=False)
    return result.returncode == 0


def validator_accepts(expression: str) -> bool:
    try:
        validate_calendar(expression)
    except CalendarError:
        return False
    return True


def test_systemd_analyze_is_installed() -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed (Debian package systemd)"


@pytest.mark.parametrize("expression", CORPUS)
def test_validator_agrees_with_systemd(expression: str) -> None:
    assert validator_accepts(expression) == systemd_accepts(expression), expression


def test_corpus_has_both_verdicts() -> None:
    verdicts = {systemd_accepts(e) for e in CORPUS}
    assert verdicts == {True, False}


GAP_CORPUS = ["*-*-* 05:00:00", "Wed *-*-* 05:30:00", "Sun *-*-08..14 06:00:00", "Sun *-*-01..07 04:00:00",
              "Mon..Sat *-*-* 02:00:00", "Sun 02:00", "02:00", "*:0/15", "*-*-01 00:00:00", "weekly", "daily",
              "monthly", "Sat,Sun *-*-* 04:30:00", "Fri *-*-1..7 23:59:59", "*-01,07-01 03:00", "quarterly",
              "*-*-1/2 01:00"]


def systemd_longest_gap(expression: str, iterations: int) -> float:
    """The longest time between consecutive runs among the next `iterations`, as systemd computes them."""
    result = subprocess.run(["systemd-analyze", "calendar", f"--iterations={iterations}", expression],
                            capture_output=True, text=True, check=True, env={"TZ": "UTC", "LANG": "C"})
    runs = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S")
            for m in re.findall(r"(?:Next elapse|Iter\. #\d+): \w{3} (\S+ \S+)", result.stdout)]
    assert len(runs) >= min(iterations, 100), result.stdout  # systemd stops at the year 2199
    return max((b - a).total_seconds() for a, b in itertools.pairwise(runs))


@pytest.mark.parametrize("expression", GAP_CORPUS)
def test_longest_gap_is_never_short_of_systemds(expression: str) -> None:
    validate_calendar(expression)
    bound = longest_gap_days(expression) * 86400
    assert systemd_longest_gap(expression, 400) <= bound, expression  # 400 runs: years of a weekly one


def test_longest_gap_of_the_default_schedules_is_tight() -> None:
    """The defaults' bounds are systemd's own gaps: a day, a week, and five weeks for the second Sunday."""
    for expression, days in (("*-*-* 05:00:00", 1), ("Wed *-*-* 05:30:00", 7), ("Sun *-*-08..14 06:00:00", 35)):
        assert longest_gap_days(expression) == days
        assert systemd_longest_gap(expression, 60) == days * 86400, expression
