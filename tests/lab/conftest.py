"""The lab fixture: a fresh lab (lab/up.sh), the program applied by the lab driver, torn down at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.control import Lab, start_lab, stop_lab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    assert os.geteuid() == 0, "the lab needs root"
    # LAB_REUSE=1: a developer's shortcut onto a running lab; LAB_KEEP=1: leave it running afterwards.
    lab = start_lab(fresh=not os.environ.get("LAB_REUSE"))
    try:
        yield lab
    finally:
        if not os.environ.get("LAB_KEEP"):
            stop_lab()
