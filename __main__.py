"""pgbackup: pgBackRest backups of a Patroni cluster into S3-compatible object storage.

Load and validate the configuration, build the components, export the outputs (docs/operating.md: "Outputs").
"""

import pulumi

from components.cluster import BackupCluster, BackupClusterArgs
from components.config import StorageConfig, load_settings, repository_key_name
from components.dashboard import grafana_dashboard
from components.monitoring import alert_rules
from components.storage import BackupRepository, BackupRepositoryArgs

settings = load_settings()

repository = BackupRepository(
    "repository",
    BackupRepositoryArgs(
        storage=settings.storage,
        key_name=repository_key_name(pulumi.get_stack(), settings.cluster.stanza),
        access_key_id=settings.access_key_id,
        secret_access_key=settings.secret_access_key,
    ),
)
# pgbackup:offsite: repo2 (the monthly archives) in its own bucket, with its own key, at another provider or account.
offsite = None if settings.offsite is None else BackupRepository(
    "offsite",
    BackupRepositoryArgs(
        storage=settings.offsite,
        key_name=repository_key_name(pulumi.get_stack(), settings.cluster.stanza, offsite=True),
        access_key_id=settings.offsite_access_key_id,
        secret_access_key=settings.offsite_secret_access_key,
        setting="pgbackup:offsite",
    ),
)
cluster = BackupCluster(
    "cluster",
    BackupClusterArgs(
        settings=settings,
        access_key_id=repository.access_key_id,
        secret_access_key=repository.secret_access_key,
        offsite_access_key_id=offsite.access_key_id if offsite else None,
        offsite_secret_access_key=offsite.secret_access_key if offsite else None,
    ),
)

# The outputs contract (docs/operating.md: "Outputs"): keys are only ever added, never renamed.
def location(storage: StorageConfig) -> dict[str, str | None]:
    return {
        "provider": storage.provider,
        "endpoint": storage.endpoint,
        "region": storage.region,
        "bucket": storage.bucket,
        "repoPath": storage.repo_path,
        "uriStyle": storage.uri_style,
    }


pulumi.export("storage", location(settings.storage))
pulumi.export("accessKeyId", repository.access_key_id)
pulumi.export("secretAccessKey", repository.secret_access_key)
if settings.offsite is not None and offsite is not None:
    pulumi.export("offsite", location(settings.offsite))
    pulumi.export("offsiteAccessKeyId", pulumi.Output.secret(offsite.access_key_id))
    pulumi.export("offsiteSecretAccessKey", offsite.secret_access_key)
pulumi.export("cipherPass", cluster.cipher_pass)
pulumi.export("stanza", settings.cluster.stanza)
pulumi.export("nodes", cluster.nodes)
pulumi.export("stanzaStatus", cluster.stanza_status)
pulumi.export("lastBackup", cluster.last_backup)
pulumi.export("walArchive", cluster.wal_archive)
pulumi.export("storageCost", cluster.storage_cost)
pulumi.export("pgbackrestVersion", cluster.pgbackrest_version)
pulumi.export("lastVerify", cluster.last_verify)
pulumi.export("lastDrill", cluster.last_drill)
pulumi.export("recoveryWindow", cluster.recovery_window)
pulumi.export("alertRules", alert_rules(settings))
pulumi.export("grafanaDashboard", grafana_dashboard(settings))
