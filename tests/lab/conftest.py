"""The lab fixture: a fresh lab (lab/up.sh) per test module, the program applied by the lab driver, torn down
at the end of the module."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.control import RELEASE, Lab, start_lab, stop_lab


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "releases(*names): lab releases the test is for (default: every one)")
    config.addinivalue_line(
        "markers", "same_on_every_release: what the test proves does not depend on the release's PostgreSQL, "
                   "Patroni or pgBackRest (the program's own logic, SSH, S3 keys): CI runs it on Debian 13 only "
                   "(.ci/run: Debian 12 runs `lab and not same_on_every_release`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Lab tests are marked `lab`; a test for other releases than LAB_RELEASE's is deselected (the feature
    it proves does not exist there), not skipped."""
    other_release: list[pytest.Item] = []
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
            marker = item.get_closest_marker("releases")
            if marker is not None and RELEASE not in marker.args:
                other_release.append(item)
    if other_release:
        config.hook.pytest_deselected(items=other_release)
        items[:] = [item for item in items if item not in other_release]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A fresh lab per test module: the tests of a module run in order on the cluster its earlier tests
    left (test_lab.py is one long story), and no module depends on another's history."""
    assert os.geteuid() == 0, "the lab needs root"
    # LAB_REUSE=1: a developer's shortcut onto a running lab; LAB_KEEP=1: leave it running afterwards.
    lab = start_lab(fresh=not os.environ.get("LAB_REUSE"))
    try:
        yield lab
    finally:
        if not os.environ.get("LAB_KEEP"):
            stop_lab()
