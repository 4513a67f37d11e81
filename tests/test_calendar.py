"""The calendar validator agrees with systemd itself (`systemd-analyze calendar`) on a corpus of expressions."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from components.calendar import CalendarError, validate_calendar

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
