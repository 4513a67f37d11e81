"""A stack's configuration read from Pulumi.<stack>.yaml without the Pulumi CLI, validated by the program's
own models (components.config.parse_settings). Secrets (`secure:` values) are neither read nor needed: the
command reaches the nodes with the operator's SSH key and the nodes hold the repository's configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import (
    NAMESPACE,
    OBJECT_KEYS,
    ClusterConfig,
    ConfigError,
    DrillConfig,
    PgBackRestConfig,
    RetentionConfig,
    ScheduleConfig,
    StorageConfig,
    check_known_keys,
    parse_offsite,
    parse_settings,
)


@dataclass(frozen=True)
class Stack:
    name: str
    storage: StorageConfig
    cluster: ClusterConfig
    schedule: ScheduleConfig
    retention: RetentionConfig
    pgbackrest: PgBackRestConfig
    drill: DrillConfig
    offsite: StorageConfig | None = None

    @property
    def pg_data(self) -> str:
        assert self.cluster.pg_data is not None  # derived by ClusterConfig
        return self.cluster.pg_data

    @property
    def pg_bin(self) -> str:
        """Debian's (postgresql-common) binaries of the stack's PostgreSQL version."""
        return f"/usr/lib/postgresql/{self.cluster.pg_version}/bin"


def stack_file(stack: str, directory: Path) -> Path:
    return directory / f"Pulumi.{stack}.yaml"


def load_stack(stack: str, directory: Path = Path()) -> Stack:
    """Pulumi.<stack>.yaml in `directory`, validated; ConfigError names the file or the key."""
    path = stack_file(stack, directory)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such stack file (run in the project's directory, or give -C DIR)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not YAML: {error}") from None
    config: Any = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a `config:` mapping of pgbackup:* keys")
    prefix = f"{NAMESPACE}:"
    # Every pgbackup:* key, the secrets included, so that a misspelt key is refused as `pulumi up` would.
    raw = {key.removeprefix(prefix): value for key, value in config.items() if key.startswith(prefix)}
    objects = {key: value for key, value in raw.items() if key in OBJECT_KEYS}
    check_known_keys(raw)
    storage, cluster, schedule, retention, pgbackrest, _monitoring, drill = parse_settings(objects, stack=stack)
    return Stack(stack, storage, cluster, schedule, retention, pgbackrest, drill, parse_offsite(objects, retention))
