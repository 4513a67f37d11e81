import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from collections.abc import Iterator  # noqa: E402 -- after the path is set

import pytest  # noqa: E402

from pgbackup_testkit.adversary import NodeSandbox  # noqa: E402


@pytest.fixture
def node_sandbox() -> Iterator[NodeSandbox]:
    """A node's directories with Debian's owners, sentinels and an adversary (pgbackup_testkit/adversary.py)."""
    box = NodeSandbox.create()
    try:
        yield box
    finally:
        box.remove()
