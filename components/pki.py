"""The certificates of pgBackRest's TLS server: a private CA and one certificate per node (pulumi-tls).

Each node's certificate serves twice: as the server certificate of its TLS server (DNS name = the node's
host) and as the client certificate it shows to the other nodes (common name = the node's name, which the
servers authorize with tls-server-auth). Private keys are secrets in the Pulumi state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from components.config import NodeConfig

CA_VALIDITY_HOURS = 10 * 365 * 24
NODE_VALIDITY_HOURS = 2 * 365 * 24
# `pulumi up` re-issues a node certificate once it is this close to expiring.
NODE_EARLY_RENEWAL_HOURS = 60 * 24


@dataclass(frozen=True)
class NodeCertificate:
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]


@dataclass
class ClusterPkiArgs:
    stanza: str
    """Named in the CA's subject."""
    nodes: list[NodeConfig]
    """One certificate each."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class ClusterPki(pulumi.ComponentResource):
    """A CA and a certificate per node for pgBackRest's TLS server and client."""

    ca_cert_pem: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterPkiArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("pgbackup:tls:ClusterPki", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        ca = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(
                common_name=f"pgbackup {args.stanza} CA", organization="pgbackup"
            ),
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing"],
            opts=child,
        )
        self.ca_cert_pem = ca.cert_pem
        self.nodes: dict[str, NodeCertificate] = {}
        for node in args.nodes:
            key = tls.PrivateKey(f"{name}-{node.name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
            request = tls.CertRequest(
                f"{name}-{node.name}-csr",
                private_key_pem=key.private_key_pem,
                subject=tls.CertRequestSubjectArgs(common_name=node.name, organization="pgbackup"),
                dns_names=[] if _is_ip(node.host) else [node.host],
                ip_addresses=[node.host] if _is_ip(node.host) else [],
                opts=child,
            )
            cert = tls.LocallySignedCert(
                f"{name}-{node.name}-cert",
                cert_request_pem=request.cert_request_pem,
                ca_private_key_pem=ca_key.private_key_pem,
                ca_cert_pem=ca.cert_pem,
                validity_period_hours=NODE_VALIDITY_HOURS,
                early_renewal_hours=NODE_EARLY_RENEWAL_HOURS,
                allowed_uses=["digital_signature", "key_encipherment", "server_auth", "client_auth"],
                opts=child,
            )
            self.nodes[node.name] = NodeCertificate(cert.cert_pem, pulumi.Output.secret(key.private_key_pem))
        self.register_outputs({"ca_cert_pem": self.ca_cert_pem})
