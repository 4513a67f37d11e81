"""pgbackup: pgBackRest backups of a Patroni cluster into S3-compatible object storage.

Load and validate the configuration, build the components, export the outputs (README: "Outputs").
"""

import pulumi

from components.cluster import BackupCluster, BackupClusterArgs
from components.config import load_settings, repository_key_name
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
cluster = BackupCluster(
    "cluster",
    BackupClusterArgs(
        settings=settings,
        access_key_id=repository.access_key_id,
        secret_access_key=repository.secret_access_key,
    ),
)

# The outputs contract (README: "Outputs"): keys are only ever added, never renamed.
storage = settings.storage
pulumi.export("storage", {
    "provider": storage.provider,
    "endpoint": storage.endpoint,
    "region": storage.region,
    "bucket": storage.bucket,
    "repoPath": storage.repo_path,
    "uriStyle": storage.uri_style,
})
pulumi.export("accessKeyId", repository.access_key_id)
pulumi.export("secretAccessKey", repository.secret_access_key)
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
pulumi.export("alertRules", alert_rules(settings))
