"""Runs the real __main__.py under Pulumi's mocks and records what it declares.

`run_program(config)` returns a `Run`: every registered resource (type, name, inputs as the engine receives
them), the stack outputs (values and which are secret), in registration order. Remote commands get a
stdout from `command_stdout`, by default what a healthy cluster's steps print.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from components import report
from components.remote import parse_manifest
from pgbackup_testkit.engine import SECRET_SIG, unwrap
from pgbackup_testkit.mockrun import evaluate

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "__main__.py"

# Sentinels: if one of these strings shows up in a command string or an environment entry, a secret leaked.
SENTINELS = {
    "sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nSENTINEL-SSH-KEY-7f3a\n-----END OPENSSH PRIVATE KEY-----",
    "cipherPass": "SENTINEL-CIPHER-PASS-91bd-long-enough-4e7a",
    "accessKeyId": "SENTINELKEYID0042",
    "secretAccessKey": "SENTINEL-SECRET-ACCESS-KEY-5c2e",
    "providerSecret": "SENTINEL-PROVIDER-SECRET-e4d1",
    "tlsKey": "-----BEGIN PRIVATE KEY-----\nSENTINEL-TLS-KEY-3b8c\n-----END PRIVATE KEY-----",
}


def is_wrapped_secret(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_SIG in value and "value" in value


def verify_report(name: str, role: str, info: Any, repo_bytes: dict[str, int] | None = None) -> str:
    """What a node's verify step prints as its report (components.report owns the format)."""
    return report.line(name, role, info, repo_bytes)


# What the healthy leader's repositories hold (repo-ls of archive/ and backup/): 1.5 TB in repo1.
HEALTHY_REPO_BYTES = {"1": 1_500_000_000_000}


HEALTHY_INFO: list[dict[str, Any]] = [
    {
        "name": "stanza",
        "status": {"code": 0, "message": "ok"},
        "archive": [{"database": {"id": 1, "repo-key": 1}, "id": "15-1", "min": "000000010000000000000003",
                     "max": "000000010000000000000009"}],
        "backup": [
            {"label": "20261122-020000F", "type": "full", "database": {"id": 1, "repo-key": 1},
             "timestamp": {"start": 1795312800, "stop": 1795313000}},
            {"label": "20261122-020000F_20261123-020000I", "type": "incr", "database": {"id": 1, "repo-key": 1},
             "timestamp": {"start": 1795399200, "stop": 1795399300}},
        ],
    }
]


def healthy_stdout(args: pulumi.runtime.MockResourceArgs) -> str:
    """What a healthy cluster prints: the first node is the leader."""
    name = args.name
    if name.endswith("-verify"):
        node = name.removeprefix("cluster-").removesuffix("-verify")
        leader = node == LEADER.get("name")
        return verify_report(node, "leader" if leader else "replica", HEALTHY_INFO if leader else None,
                             HEALTHY_REPO_BYTES if leader else None) + "\n"
    if name.endswith("-install"):
        return "pgbackrest 2.45-1\n"
    return ""


LEADER: dict[str, str] = {}


@dataclass
class Resource:
    typ: str
    name: str
    inputs: dict[str, Any]
    raw_inputs: dict[str, Any]


@dataclass
class Run:
    resources: list[Resource] = field(default_factory=list)
    options: dict[str, pulumi.ResourceOptions] = field(default_factory=dict)
    """Each resource's options as the program gave them (recorded by a stack transformation)."""
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)

    def of_type(self, typ: str) -> list[Resource]:
        return [r for r in self.resources if r.typ == typ]

    def named(self, name: str) -> Resource:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"{name}: {len(matches)} resources ({[r.name for r in self.resources]})"
        return matches[0]

    @property
    def commands(self) -> list[Resource]:
        return self.of_type("command:remote:Command")


class ProgramMocks(pulumi.runtime.Mocks):
    def __init__(self, run: Run, command_stdout: Callable[[pulumi.runtime.MockResourceArgs], str],
                 preview: bool = False) -> None:
        self.run = run
        self.preview = preview
        self.command_stdout = command_stdout
        self.lock = threading.Lock()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        with self.lock:
            self.run.resources.append(Resource(args.typ, args.name, unwrap(args.inputs), args.inputs))
        state = dict(args.inputs)
        rid = f"{args.name}-id"
        if args.typ == "command:remote:Command":
            # In a preview nothing runs: stdout stays unknown, as the engine reports it.
            if not self.preview:
                state.update(stdout=self.command_stdout(args), stderr="")
        elif args.typ == "aws:iam/accessKey:AccessKey":
            rid = "AKIAMOCKKEYID"
            state.update(secret=SENTINELS["providerSecret"])
        elif args.typ == "random:index/randomPassword:RandomPassword":
            state.update(result=SENTINELS["providerSecret"] + "-" + args.name)
        elif args.typ == "tls:index/privateKey:PrivateKey":
            state.update(private_key_pem=SENTINELS["tlsKey"], public_key_pem="PUBLIC " + args.name)
        elif args.typ in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            state.update(cert_pem=f"-----BEGIN CERTIFICATE-----\n{args.name}\n-----END CERTIFICATE-----\n")
        elif args.typ == "tls:index/certRequest:CertRequest":
            state.update(cert_request_pem=f"CSR {args.name}")
        elif args.typ.startswith("pulumi-python:dynamic"):
            if "key_name" in args.inputs:
                state.update(application_key_id="b2keyid-" + args.name, application_key=SENTINELS["providerSecret"])
            else:
                state.update(bucket_id="b2bucketid-" + args.name)
        elif args.typ == "minio:index/iamUser:IamUser":
            rid = str(unwrap(args.inputs).get("name", args.name))
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


def host_key(name: str) -> str:
    """A real ed25519 public host key, the same for the same name: what `ssh-keyscan -t ed25519` prints for a
    node, without the host name."""
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"host key of {name}".encode()).digest())
    return private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()


def node_config(name: str, host: str | None = None, **fields: Any) -> dict[str, Any]:
    """A node of pgbackup:cluster.nodes with its pinned host key (host: <name>.example.net)."""
    return {"name": name, "host": host or f"{name}.example.net", "hostKey": host_key(name), **fields}


def stack_config(**overrides: Any) -> dict[str, Any]:
    """A valid three-node configuration on generic S3; keyword arguments replace whole keys."""
    config: dict[str, Any] = {
        "storage": {"provider": "s3", "endpoint": "s3.example.net", "region": "eu-central-1", "bucket": "pg-backups"},
        "cluster": {
            "stanza": "main",
            "pgVersion": 15,
            "nodes": [node_config("pg1"), node_config("pg2"), node_config("pg3")],
        },
    }
    config.update(overrides)
    return config


def run_program(
    config: dict[str, Any],
    *,
    secrets: dict[str, str] | None = None,
    command_stdout: Callable[[pulumi.runtime.MockResourceArgs], str] = healthy_stdout,
    preview: bool = False,
    stack: str = "test",
    run: Run | None = None,
) -> Run:
    """Evaluate __main__.py once with `config` (pgbackup:<key> -> object) and the given secrets."""
    secrets = {"sshPrivateKey": SENTINELS["sshPrivateKey"], "cipherPass": SENTINELS["cipherPass"]} if secrets is None \
        else secrets
    nodes = (config.get("cluster") or {}).get("nodes") or [{}]
    LEADER["name"] = nodes[0].get("name", "") if isinstance(nodes[0], dict) else ""
    run = Run() if run is None else run
    values = {f"pgbackup:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    values.update({f"pgbackup:{k}": v for k, v in secrets.items()})

    def record(args: pulumi.ResourceTransformationArgs) -> None:
        run.options[args.name] = args.opts

    run.outputs, run.secret_outputs = evaluate(
        MAIN, ProgramMocks(run, command_stdout, preview), project="pgbackup", stack=stack, config=values,
        secret_keys=[f"pgbackup:{k}" for k in secrets], preview=preview, transformation=record)
    return run


def node_files(run: Run, node: str) -> dict[str, dict[str, str]]:
    """The files the `files` step of `node` installs, decoded from its stdin manifest."""
    return parse_manifest(run.named(f"cluster-{node}-files").inputs["stdin"])


def script_of(command: Resource, key: str = "create") -> str:
    """The bash script inside a step's command string (`bash -c '<script>' pgbackup-<step>`)."""
    import shlex

    words = shlex.split(command.inputs[key])
    assert words[0:2] == ["bash", "-c"], words[:2]
    assert len(words) == 4, words
    return words[2]


def depends_on(run: Run, name: str) -> set[str]:
    deps: Any = run.options[name].depends_on or []
    return {dep._name for dep in deps}


def depth(run: Run) -> int:
    """The longest chain of remote steps (barriers run nothing and add no step)."""
    remote_names = {c.name for c in run.commands}
    memo: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in memo:
            below = max((level(d) for d in depends_on(run, name)), default=0)
            memo[name] = below + (1 if name in remote_names else 0)
        return memo[name]

    return max(level(c.name) for c in run.commands)
