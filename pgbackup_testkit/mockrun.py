"""Evaluate a Pulumi program file under Pulumi's mocks and collect its stack outputs.

Shared by the lab driver (whose mocks really make each resource) and the tests (whose mocks record them).
"""

from __future__ import annotations

import asyncio
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import settings as pulumi_settings


def evaluate(
    program: Path,
    mocks: pulumi.runtime.Mocks,
    *,
    project: str,
    stack: str,
    config: dict[str, str],
    secret_keys: list[str],
    preview: bool = False,
    transformation: Callable[[pulumi.ResourceTransformationArgs], Any] | None = None,
    expected_failures: tuple[type[BaseException], ...] = (),
) -> tuple[dict[str, Any], set[str]]:
    """Run `program` as `pulumi up` (or preview) would; returns its outputs and the names of the secret ones.
    Unknown values (a preview) come back as pulumi.output.UNKNOWN. A failure of one of `expected_failures`
    is raised once, without asyncio's "Future exception was never retrieved" report for every resource
    that depended on the failed one."""
    _quiet(asyncio.get_event_loop(), expected_failures)
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview)
    pulumi.runtime.set_all_config(config, secret_keys=secret_keys)
    outputs: dict[str, Any] = {}
    secret: set[str] = set()

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def body() -> Any:
        if transformation is not None:
            pulumi.runtime.register_stack_transformation(transformation)
        runpy.run_path(str(program), run_name="__main__")
        exported = dict(getattr(pulumi_settings.get_root_resource(), "outputs", {}))

        async def collect() -> None:
            for key, value in exported.items():
                out = pulumi.Output.from_input(value)
                outputs[key] = await out.future(with_unknowns=True)
                if await out.is_secret():
                    secret.add(key)

        return pulumi.Output.from_input(asyncio.ensure_future(collect()))

    body()
    return outputs, secret


def _caused_by(error: BaseException | None, kinds: tuple[type[BaseException], ...]) -> bool:
    seen = 0
    while error is not None and seen < 100:
        if isinstance(error, kinds):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _quiet(loop: asyncio.AbstractEventLoop, kinds: tuple[type[BaseException], ...]) -> None:
    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if kinds and _caused_by(context.get("exception"), kinds):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
