import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.providers import ADMIN_ENV, admin_env
from pgbackup_testkit.adversary import NodeSandbox
from pgbackup_testkit.standins import Patroni

# pgbackup:offsite's administrator's key, as the environment of `pulumi up` holds it (PGBACKUP_OFFSITE_*): sentinel
# values, so a test can show where they go (and where they never go). repo1's variables are left unset.
OFFSITE_ADMIN_ENV = {name: f"SENTINEL-OFFSITE-ADMIN-{name}" for provider in ADMIN_ENV
                     for name in admin_env(provider, offsite=True)}


@pytest.fixture(autouse=True, scope="session")
def offsite_admin_key() -> Iterator[dict[str, str]]:
    """Set for the whole session (module-scoped fixtures run the program too); a test that needs them unset uses
    monkeypatch.delenv, which restores them."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in OFFSITE_ADMIN_ENV.items():
            patch.setenv(name, value)
        yield OFFSITE_ADMIN_ENV


@pytest.fixture
def node_sandbox() -> Iterator[NodeSandbox]:
    """A node's directories with Debian's owners, sentinels and an adversary (pgbackup_testkit/adversary.py)."""
    box = NodeSandbox.create()
    try:
        yield box
    finally:
        box.remove()



@pytest.fixture(scope="module")
def patroni() -> Iterator[Patroni]:
    """A stand-in for Patroni's REST API (/primary, /cluster), one per test module."""
    api = Patroni()
    try:
        yield api
    finally:
        api.close()
