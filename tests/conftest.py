import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from collections.abc import Iterator

import pytest

from pgbackup_testkit.adversary import NodeSandbox


@pytest.fixture
def node_sandbox() -> Iterator[NodeSandbox]:
    """A node's directories with Debian's owners, sentinels and an adversary (pgbackup_testkit/adversary.py)."""
    box = NodeSandbox.create()
    try:
        yield box
    finally:
        box.remove()
