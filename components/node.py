"""A node's pgBackRest set-up: the package, its files (configuration, certificates, units), and Patroni's
local replica-creation settings. Three remote steps, run on every node in parallel. What they run comes
from the node's plan (components/plan.py); this component only wires it to resources."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.context import RepositorySecretValues
from components.plan import NODE_STEPS, NodePlan, Source
from components.remote import NodeFile, manifest, remote_step
from components.render import sha256


@dataclass(frozen=True)
class RepositorySecrets:
    """What pgBackRest needs to reach and decrypt the repository. All secret."""

    access_key_id: pulumi.Output[str]
    secret_access_key: pulumi.Output[str]
    cipher_pass: pulumi.Output[str]
    offsite_access_key_id: pulumi.Output[str] | None = None
    """repo2's key, with pgbackup:offsite."""
    offsite_secret_access_key: pulumi.Output[str] | None = None


@dataclass(frozen=True)
class NodeTls:
    """This node's TLS material for pgBackRest's server and client."""

    ca_cert_pem: pulumi.Output[str]
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]


def render_config(plan: NodePlan, secrets: RepositorySecrets) -> pulumi.Output[str]:
    """This node's pgbackrest.conf. Secret: it holds the S3 key and the cipher passphrase."""
    return pulumi.Output.secret(
        pulumi.Output.all(secrets.access_key_id, secrets.secret_access_key, secrets.cipher_pass,
                          secrets.offsite_access_key_id or "", secrets.offsite_secret_access_key or "").apply(
            lambda values: plan.render_config(RepositorySecretValues(*values)))
    )


@dataclass
class PgBackRestNodeArgs:
    plan: NodePlan
    """What to install and run on the node (components.plan.plan_node)."""
    secrets: RepositorySecrets
    """Repository credentials and the cipher passphrase."""
    connection: remote.ConnectionArgs
    """How Pulumi reaches the node over SSH."""
    tls: NodeTls | None = None
    """TLS material, with backupStandby."""


class PgBackRestNode(pulumi.ComponentResource):
    """pgBackRest installed and configured on one Patroni node."""

    config_digest: pulumi.Output[str]
    """sha256 of the node's pgbackrest.conf (secret); cluster steps re-run when it changes."""

    def __init__(self, name: str, args: PgBackRestNodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgbackup:node:PgBackRestNode", name, None, opts)
        plan = args.plan
        config = render_config(plan, args.secrets)
        sources: dict[Source, pulumi.Input[str]] = {Source.CONFIG: config}
        if args.tls is not None:
            sources |= {Source.TLS_CA: args.tls.ca_cert_pem, Source.TLS_CERT: args.tls.cert_pem,
                        Source.TLS_KEY: args.tls.key_pem}
        files = [NodeFile(f.path, f.mode, f.owner, f.group,
                          sources[f.content] if isinstance(f.content, Source) else f.content,
                          secret=f.secret, actions=f.actions) for f in plan.files]
        steps: dict[str, remote.Command] = {}
        previous: list[pulumi.Resource] = []
        for step, suffix in NODE_STEPS.items():
            steps[step] = remote_step(
                f"{name}-{suffix}",
                step=step,
                conn=args.connection,
                script=plan.scripts[step].create,
                stdin=manifest(files) if step == "files" else None,
                parent=self,
                depends_on=previous,
            )
            previous = [steps[step]]
        self.install, self.files, self.patroni = steps["install"], steps["files"], steps["patroni-local"]
        self.steps = steps
        self.config_digest = pulumi.Output.secret(config.apply(sha256))
        self.units_digest = plan.units_digest
        self.register_outputs({"config_digest": self.config_digest, "units_digest": self.units_digest})
