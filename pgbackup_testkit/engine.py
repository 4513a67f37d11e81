"""The shapes in which Pulumi's engine passes values to mocks: secrets wrapped in an envelope, numbers as
floats. Read the same way by the lab driver (which makes the resources) and the tests (which record them)."""

from __future__ import annotations

from typing import Any

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # noqa: S105 -- the engine's secret marker, not a secret


def unwrap(value: Any) -> Any:
    """`value` with every secret envelope replaced by the value inside it."""
    if isinstance(value, dict):
        if SECRET_SIG in value and "value" in value:
            return unwrap(value["value"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def s3_shape(value: Any) -> Any:
    """pulumi-aws inputs (camelCase) in the S3 API's shape (PascalCase, `id` as `ID`, whole numbers as int: the
    engine passes every number as a float)."""
    if isinstance(value, dict):
        return {("ID" if k == "id" else k[:1].upper() + k[1:]): s3_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [s3_shape(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
