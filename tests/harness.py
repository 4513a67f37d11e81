"""The tests' harness: the real __main__.py under Pulumi's mocks. It lives in pgbackup_testkit.harness,
shared with the benchmarks; the tests keep importing it from here."""

from pgbackup_testkit.harness import *  # noqa: F403
