"""Reads pgbackup's stack outputs (docs/operating.md "Outputs") and derives what a monitoring or restore stack needs."""

from __future__ import annotations

import datetime
from typing import Any

import pulumi

MAX_BACKUP_AGE = datetime.timedelta(hours=26)

# `backupStack` names the pgbackup stack as its backend does (Pulumi.yaml): `myorg/pgbackup/prod` on Pulumi
# Cloud, `organization/pgbackup/prod` on a self-managed backend; this stack must use the same backend.
backups = pulumi.StackReference(pulumi.Config().require("backupStack"))
storage = backups.get_output("storage")
stanza = backups.get_output("stanza")


def healthy(status: dict[str, Any] | None, last: dict[str, Any] | None, now: str) -> bool:
    """The stanza is ok and the newest backup is recent (as seen when pgbackup last applied)."""
    if not status or status.get("code") != 0 or not last:
        return False
    stop = datetime.datetime.fromisoformat(last["stopTime"].replace("Z", "+00:00"))
    return datetime.datetime.fromisoformat(now) - stop < MAX_BACKUP_AGE


def restore_config(values: list[Any]) -> str:
    """The [global] repository section a restore host needs (secret: it holds the key and passphrase)."""
    store, key_id, key_secret, cipher = values
    port = store["endpoint"].partition(":")[2]
    lines = [
        "[global]",
        "repo1-type=s3",
        f"repo1-s3-bucket={store['bucket']}",
        f"repo1-s3-endpoint={store['endpoint'].partition(':')[0]}",
        f"repo1-s3-region={store['region']}",
        f"repo1-s3-uri-style={store['uriStyle']}",
        f"repo1-path={store['repoPath']}",
        f"repo1-s3-key={key_id}",
        f"repo1-s3-key-secret={key_secret}",
        "repo1-cipher-type=aes-256-cbc",
        f"repo1-cipher-pass={cipher}",
    ]
    if port:
        lines.append(f"repo1-storage-port={port}")
    return "\n".join(lines) + "\n"


now = pulumi.Config().get("now") or datetime.datetime.now(datetime.UTC).isoformat()
pulumi.export(
    "backupHealthy",
    pulumi.Output.all(backups.get_output("stanzaStatus"), backups.get_output("lastBackup")).apply(
        lambda v: healthy(v[0], v[1], now)
    ),
)
pulumi.export("leader", backups.get_output("nodes").apply(
    lambda nodes: next((n["name"] for n in nodes or [] if n.get("role") == "leader"), None)))
pulumi.export("stanza", stanza)
pulumi.export(
    "restoreConfig",
    pulumi.Output.secret(
        pulumi.Output.all(
            storage,
            backups.get_output("accessKeyId"),
            backups.require_output("secretAccessKey"),
            backups.require_output("cipherPass"),
        ).apply(restore_config)
    ),
)
