"""The cluster: every node set up in parallel, then the cluster-wide steps on whichever node is the
Patroni leader at apply time, then the backup schedule on every node.

Each cluster-wide step runs on every node and acts only where Patroni says the node is the leader, so no
node is special in the configuration and the steps follow the leader after a failover. The number of
sequential steps does not grow with the number of nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random
from pulumi_command import remote

from components import proofs, report
from components.config import Settings
from components.context import repository_prices
from components.node import NodeTls, PgBackRestNode, PgBackRestNodeArgs, RepositorySecrets
from components.pki import ClusterPki, ClusterPkiArgs
from components.plan import BARRIERS, NODE_STEPS, STAGES, plan_cluster
from components.remote import barrier, connection, remote_step
from components.render import sha256


@dataclass
class BackupClusterArgs:
    settings: Settings
    """The validated stack configuration."""
    access_key_id: pulumi.Output[str]
    """The repository key pgBackRest uses (from BackupRepository)."""
    secret_access_key: pulumi.Output[str]
    offsite_access_key_id: pulumi.Output[str] | None = None
    """repo2's key, with pgbackup:offsite (from the second BackupRepository)."""
    offsite_secret_access_key: pulumi.Output[str] | None = None


class BackupCluster(pulumi.ComponentResource):
    """pgBackRest on every node of a Patroni cluster, the stanza, archiving, and scheduled backups."""

    cipher_pass: pulumi.Output[str]
    nodes: pulumi.Output[list[report.NodeRole]]
    stanza_status: pulumi.Output[report.StanzaStatus]
    last_backup: pulumi.Output[report.LastBackup | None]
    wal_archive: pulumi.Output[report.WalArchive | None]
    storage_cost: pulumi.Output[report.StorageCost | None]
    pgbackrest_version: pulumi.Output[str]
    last_verify: pulumi.Output[proofs.LastVerify | None]
    last_drill: pulumi.Output[proofs.LastDrill | None]
    recovery_window: pulumi.Output[proofs.RecoveryWindow | None]

    def __init__(self, name: str, args: BackupClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgbackup:cluster:BackupCluster", name, None, opts)
        settings = args.settings
        cluster = settings.cluster
        child = pulumi.ResourceOptions(parent=self)

        cipher_pass: pulumi.Output[str]
        if settings.cipher_pass is not None:
            cipher_pass = pulumi.Output.secret(settings.cipher_pass)
        else:
            # Generated once and kept in the state as a secret: losing it loses the backups.
            generated = random.RandomPassword(f"{name}-cipher-pass", length=64, special=False, opts=child)
            cipher_pass = pulumi.Output.secret(generated.result)
        self.cipher_pass = cipher_pass
        secrets = RepositorySecrets(args.access_key_id, args.secret_access_key, cipher_pass,
                                    args.offsite_access_key_id, args.offsite_secret_access_key)

        pki = None
        if settings.pgbackrest.backup_standby:
            pki = ClusterPki(f"{name}-pki", ClusterPkiArgs(stanza=cluster.stanza, nodes=cluster.nodes), opts=child)

        plans = plan_cluster(settings)
        conns = {node.name: connection(node, settings.ssh_private_key) for node in cluster.nodes}
        nodes: dict[str, PgBackRestNode] = {}
        for node in cluster.nodes:
            tls = None
            if pki is not None:
                cert = pki.nodes[node.name]
                tls = NodeTls(pki.ca_cert_pem, cert.cert_pem, cert.key_pem)
            nodes[node.name] = PgBackRestNode(
                f"{name}-{node.name}",
                PgBackRestNodeArgs(plan=plans[node.name], secrets=secrets, connection=conns[node.name], tls=tls),
                opts=child,
            )

        # Re-create the stanza and re-check when any node's configuration changes (a new bucket or repo path
        # needs its stanza). The digests are secret: they hash the passphrase.
        config_digest: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(*[n.config_digest for n in nodes.values()]).apply(lambda d: sha256(*d))
        )

        # pgBackRest requires the same version on every host it talks to: one version, or the apply fails at
        # the first barrier, before any cluster-wide step (stanza, archiving, check) runs against mixed versions.
        names = [node.name for node in cluster.nodes]
        self.pgbackrest_version = pulumi.Output.all(*[n.install.stdout for n in nodes.values()]).apply(
            lambda outs: agreed_version(names, outs))

        # The stages of plan.STAGES, each of them on every node, with plan.BARRIERS between them.
        done: dict[str, list[remote.Command]] = {
            step: [n.steps[step] for n in nodes.values()] for step in NODE_STEPS}
        barriers: dict[str, pulumi.Resource] = {}
        for spec in BARRIERS:
            barriers[spec.name] = barrier(f"{name}-{spec.name}", after=[r for step in spec.after for r in done[step]],
                                          parent=self,
                                          requires=[self.pgbackrest_version] if spec is BARRIERS[0] else ())
            for stage in (stage for stage in STAGES if stage.after == spec.name):
                done[stage.step] = [
                    remote_step(
                        f"{name}-{node.name}-{stage.step}",
                        step=stage.step,
                        conn=conns[node.name],
                        script=plans[node.name].scripts[stage.step].create,
                        parent=self,
                        triggers=[config_digest] if stage.on_config else None,
                        delete=plans[node.name].scripts[stage.step].delete,
                        depends_on=[barriers[spec.name], *(nodes[node.name].steps[own] for own in stage.after_own)],
                    )
                    for node in cluster.nodes
                ]
        verify_steps = done["verify"]

        reports = pulumi.Output.all(*[s.stdout for s in verify_steps]).apply(
            lambda outs: [report.parse(out) for out in outs]
        )
        self.nodes = reports.apply(
            lambda rs: [
                report.NodeRole(name=node.name, host=node.host, role=r["role"])
                for node, r in zip(cluster.nodes, rs, strict=False)
            ]
        )
        info = reports.apply(report.leader_info)
        self.stanza_status = info.apply(report.stanza_status)
        self.last_backup = info.apply(report.last_backup)
        self.wal_archive = info.apply(report.wal_archive)
        prices = repository_prices(settings)
        self.storage_cost = reports.apply(lambda rs: report.storage_cost(rs, prices))
        # The clock is read here, when the reports arrive (at apply time), for these outputs only.
        found = reports.apply(lambda rs: proofs.proofs_of(rs, proofs.clock()))
        self.last_verify = found.apply(lambda p: p["lastVerify"])
        self.last_drill = found.apply(lambda p: p["lastDrill"])
        self.recovery_window = found.apply(lambda p: p["recoveryWindow"])
        self.register_outputs(
            {
                "cipher_pass": self.cipher_pass,
                "nodes": self.nodes,
                "stanza_status": self.stanza_status,
                "last_backup": self.last_backup,
                "wal_archive": self.wal_archive,
                "storage_cost": self.storage_cost,
                "pgbackrest_version": self.pgbackrest_version,
                "last_verify": self.last_verify,
                "last_drill": self.last_drill,
                "recovery_window": self.recovery_window,
            }
        )


class VersionMismatch(Exception):
    """The nodes run different pgBackRest versions (found by the install steps)."""


def agreed_version(names: Sequence[str], install_outputs: Sequence[str]) -> str:
    """The one pgBackRest version every install step reported ("pgbackrest <version>", its last such line);
    VersionMismatch names each node and its version when they differ."""
    versions: dict[str, str] = {}
    for name, out in zip(names, install_outputs, strict=True):
        found = [line.split(" ", 1)[1].strip() for line in out.splitlines() if line.startswith("pgbackrest ")]
        versions[name] = found[-1] if found else "unknown (the install step printed no version)"
    if len(set(versions.values())) != 1:
        raise VersionMismatch("pgBackRest must be the same version on every node, but "
                              + ", ".join(f"{name} runs {v}" for name, v in versions.items())
                              + ": set pgbackup:pgbackrest.version to pin one")
    return next(iter(versions.values()))
