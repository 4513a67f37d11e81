"""The lab driver: `pulumi up` for the lab, without the Pulumi CLI.

It evaluates the real __main__.py with the stack configuration of Pulumi.lab.yaml under Pulumi's mocks, in
which registering a resource really makes it:

- `command:remote:Command` runs its `create` (or `update`, or `delete` then `create` on a trigger change)
  over SSH with its stdin, as pulumi-command does, and returns the real stdout. A step whose inputs have not
  changed since the last successful run is not run again, as with Pulumi's own diff;
- the S3 resources (bucket, versioning, lifecycle rule, IAM user, policy, access key) are created in the lab's
  S3 through the endpoints of the program's own aws provider;
- random passwords and the pulumi-tls keys and certificates are generated for real (cryptography).

What a real `pulumi up` keeps in its state (ids, generated secrets, inputs of the last run) the driver keeps
in $LAB_DIR/driver-state.json (0600). Every command it runs is appended to $LAB_DIR/driver-runs.jsonl.

Usage: python -m lab.driver up | destroy | outputs [--json] [--stack-file DIR/Pulumi.lab.yaml]
       (after lab/up.sh; reads $LAB_DIR/env.json). The outputs print as YAML, the alert rules and the dashboard as
       blocks of text; --json prints them as JSON.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import io
import ipaddress
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import paramiko
import pulumi
import yaml
from botocore.config import Config as BotoConfig
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from components import objectlock
from components.cluster import VersionMismatch
from components.providers import OFFSITE_ENV_PREFIX
from pgbackup_testkit.engine import s3_shape, unwrap
from pgbackup_testkit.mockrun import evaluate

ROOT = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT = 1800


class StepFailed(RuntimeError):
    """A remote command exited non-zero (message as pulumi-command words it, with the output's tail)."""


class NotStarted(RuntimeError):
    """A step that was due after another step had failed: like Pulumi's engine, the driver starts nothing
    new once a step has failed, and reports the first failure."""


# components/objectlock.py's dynamic resource: the driver runs its provider's code against the lab's S3.
OBJECT_LOCK = "pulumi-python:dynamic/s3:ObjectLock"


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- SSH


def load_private_key(text: str) -> paramiko.PKey:
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except paramiko.SSHException:
            continue
    raise StepFailed("the SSH private key is not an ed25519, ECDSA or RSA key")


def run_ssh(connection: dict[str, Any], command: str, stdin: str | None) -> tuple[int, str, str]:
    """Run `command` in one SSH session with `stdin`, as pulumi-command does. Returns (status, out, err).

    Like pulumi-command, the host key is checked only when the connection pins one (`hostKey`); the program
    pins it on every node unless pgbackup:cluster.insecureSkipHostKeyCheck says otherwise. A host that
    answers with another key is refused before anything (a command, its stdin) is sent."""
    client = paramiko.SSHClient()
    if connection.get("hostKey"):
        kind, blob = connection["hostKey"].split()[:2]
        host_key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        client.get_host_keys().add(_known_hosts_name(connection), kind, host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        # As pulumi-command does without hostKey.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507
    key = load_private_key(connection["privateKey"])
    client.connect(connection["host"], port=int(connection.get("port") or 22),
                   username=connection.get("user") or "root", pkey=key,
                   timeout=float(connection.get("perDialTimeout") or 15), allow_agent=False, look_for_keys=False)
    try:
        transport = client.get_transport()
        assert transport is not None
        channel = transport.open_session()
        channel.settimeout(COMMAND_TIMEOUT)
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin.encode())
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                raise StepFailed(f"timed out after {COMMAND_TIMEOUT} s")
            time.sleep(0.05)
        return channel.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace")
    finally:
        client.close()


def _known_hosts_name(connection: dict[str, Any]) -> str:
    """The name paramiko looks the host key up by: host, or [host]:port off port 22."""
    port = int(connection.get("port") or 22)
    return connection["host"] if port == 22 else f"[{connection['host']}]:{port}"


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


# ---------------------------------------------------------------------------------------------- TLS


def _name(subject: dict[str, Any] | None) -> x509.Name:
    subject = subject or {}
    attrs = []
    if subject.get("organization"):
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject["organization"]))
    if subject.get("commonName"):
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, subject["commonName"]))
    return x509.Name(attrs)


def _usages(builder: x509.CertificateBuilder, uses: list[str], is_ca: bool) -> x509.CertificateBuilder:
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature="digital_signature" in uses, content_commitment=False,
        key_encipherment="key_encipherment" in uses, data_encipherment=False, key_agreement=False,
        key_cert_sign="cert_signing" in uses, crl_sign="crl_signing" in uses, encipher_only=False,
        decipher_only=False), critical=True)
    extended = [oid for use, oid in (("server_auth", ExtendedKeyUsageOID.SERVER_AUTH),
                                     ("client_auth", ExtendedKeyUsageOID.CLIENT_AUTH)) if use in uses]
    if extended:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
    return builder


def _cert(subject: x509.Name, issuer: x509.Name, public_key: Any, signing_key: Any, hours: int, uses: list[str],
          is_ca: bool, sans: list[x509.GeneralName]) -> str:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=hours)))
    builder = _usages(builder, uses, is_ca)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def make_tls(typ: str, inputs: dict[str, Any]) -> dict[str, Any]:
    load = serialization.load_pem_private_key
    if typ == "tls:index/privateKey:PrivateKey":
        generated = ec.generate_private_key(ec.SECP256R1())
        pem = generated.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
        public = generated.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return {"private_key_pem": pem, "public_key_pem": public}
    if typ == "tls:index/selfSignedCert:SelfSignedCert":
        key = load(inputs["privateKeyPem"].encode(), None)
        name = _name(inputs.get("subject"))
        return {"cert_pem": _cert(name, name, key.public_key(), key, int(inputs["validityPeriodHours"]),
                                  inputs["allowedUses"], bool(inputs.get("isCaCertificate")), [])}
    if typ == "tls:index/certRequest:CertRequest":
        key = load(inputs["privateKeyPem"].encode(), None)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in inputs.get("dnsNames") or []]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses") or []]
        builder = x509.CertificateSigningRequestBuilder().subject_name(_name(inputs.get("subject")))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        csr = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]  # an EC key: make_tls made it
        return {"cert_request_pem": csr.public_bytes(serialization.Encoding.PEM).decode()}
    if typ == "tls:index/locallySignedCert:LocallySignedCert":
        csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        ca_key = load(inputs["caPrivateKeyPem"].encode(), None)
        try:
            sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = []
        return {"cert_pem": _cert(csr.subject, ca.subject, csr.public_key(), ca_key,
                                  int(inputs["validityPeriodHours"]), inputs["allowedUses"], False, sans)}
    raise NotImplementedError(typ)


# ---------------------------------------------------------------------------------------------- engine


class LabEngine(pulumi.runtime.Mocks):
    """Pulumi's mocks, with every resource made for real."""

    def __init__(self, lab_dir: Path, env: dict[str, str]) -> None:
        self.lab_dir = lab_dir
        self.env = env
        self.state_path = lab_dir / "driver-state.json"
        self.log_path = lab_dir / "driver-runs.jsonl"
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.providers: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.ran: list[str] = []
        # Pulumi's engine on a failed step: start nothing new, let the steps already running finish.
        self.first_failure: StepFailed | None = None
        self.running = 0
        self.idle = threading.Condition(self.lock)
        self.declared: set[str] = set()

    def wait_idle(self, timeout: float = COMMAND_TIMEOUT) -> None:
        """Until no command runs on any node (the steps in flight when another failed have finished)."""
        with self.idle:
            self.idle.wait_for(lambda: self.running == 0, timeout=timeout)

    # -- bookkeeping
    def save(self) -> None:
        with self.lock:
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
            tmp.chmod(0o600)
            tmp.replace(self.state_path)

    def remember(self, name: str, inputs_digest: str, outputs: dict[str, Any], extra: dict[str, Any] | None = None
                 ) -> None:
        with self.lock:
            self.state[name] = {"inputs": inputs_digest, "outputs": outputs, **(extra or {})}
        self.save()

    def record_run(self, name: str, action: str, command: str, status: int, seconds: float) -> None:
        with self.lock:
            self.ran.append(name)
            with self.log_path.open("a") as log:
                log.write(json.dumps({"time": time.time(), "resource": name, "action": action,
                                      "command": command, "status": status, "seconds": round(seconds, 2)}) + "\n")

    # -- resources
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = unwrap(args.inputs)
        typ = args.typ
        with self.lock:
            self.declared.add(args.name)
        if typ.startswith("pgbackup:") or typ == "pulumi:pulumi:Stack":
            return f"{args.name}-id", {}
        if typ.startswith("pulumi:providers:"):
            self.providers[args.name] = inputs
            return f"{args.name}-id", inputs
        if typ == "command:remote:Command":
            return self.remote_command(args.name, inputs)
        if typ == "command:local:Command":
            if any(inputs.get(k) for k in ("create", "update", "delete")):
                raise NotImplementedError("the lab driver runs no local command with a script")
            return f"{args.name}-id", inputs
        if typ.startswith(("random:", "tls:")):
            return self.generated(args.name, typ, inputs)
        if typ.startswith("aws:") or typ == OBJECT_LOCK:
            return self.object_lock(args.name, inputs) if typ == OBJECT_LOCK else self.aws_resource(args, inputs)
        raise NotImplementedError(f"lab driver: no real implementation for {typ} ({args.name})")

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        raise NotImplementedError(f"lab driver: no function {args.token}")

    def generated(self, name: str, typ: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Random and TLS material: made once, then kept (as Pulumi's state keeps it) while inputs hold."""
        key = digest([typ, inputs])
        old = self.state.get(name)
        if old and old["inputs"] == key:
            return f"{name}-id", {**inputs, **old["outputs"]}
        if typ == "random:index/randomPassword:RandomPassword":
            outputs = {"result": secrets.token_urlsafe(48)[: int(inputs.get("length") or 32)]}
        else:
            outputs = make_tls(typ, inputs)
        self.remember(name, key, outputs)
        return f"{name}-id", {**inputs, **outputs}

    def object_lock(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """components/objectlock.py's resource, run for real as its dynamic provider does (create and update do
        the same), with the environment of `pulumi up`."""
        props = {k: v for k, v in inputs.items() if k != "__provider"}
        key = digest(["object-lock", props])
        old = self.state.get(name)
        if not (old and old["inputs"] == key):
            objectlock.apply(objectlock.Target.of(props), environ=self.env)
            self.remember(name, key, {})
        return f"{name}-id", inputs

    def provider_inputs(self, provider_ref: str | None) -> dict[str, Any]:
        provider = next((p for n, p in self.providers.items() if provider_ref and f"::{n}::" in provider_ref), None)
        if provider is None:
            raise RuntimeError(f"lab driver: no aws provider for {provider_ref}")
        return provider

    def boto(self, service: str, provider_ref: str | None) -> Any:
        return self.client(service, self.provider_inputs(provider_ref))

    def client(self, service: str, provider: dict[str, Any]) -> Any:
        endpoints = provider["endpoints"]
        endpoints = json.loads(endpoints) if isinstance(endpoints, str) else endpoints
        url = endpoints[0][service]
        style = "path" if str(provider.get("s3UsePathStyle")).lower() == "true" else "virtual"
        # As pulumi-aws: the provider's own key when it has one (pgbackup:offsite's, from PGBACKUP_OFFSITE_AWS_*),
        # else AWS_* from the environment of `pulumi up` (repo1's).
        # A provider remembered in the driver's state (a delete after the program stopped declaring it) has its
        # key replaced by "ownKey": Pulumi would decrypt it from the state; the driver reads it again from the
        # environment it was given (PGBACKUP_OFFSITE_AWS_*).
        key_id = provider.get("accessKey") or (self.env[f"{OFFSITE_ENV_PREFIX}AWS_ACCESS_KEY_ID"]
                                               if provider.get("ownKey") else self.env["AWS_ACCESS_KEY_ID"])
        secret = provider.get("secretKey") or (self.env[f"{OFFSITE_ENV_PREFIX}AWS_SECRET_ACCESS_KEY"]
                                               if provider.get("ownKey") else self.env["AWS_SECRET_ACCESS_KEY"])
        return boto3.client(service, endpoint_url=url, region_name=provider.get("region"),
                            aws_access_key_id=key_id, aws_secret_access_key=secret,
                            verify=self.env["LAB_CA_FILE"], config=BotoConfig(s3={"addressing_style": style}))

    def aws_resource(self, args: pulumi.runtime.MockResourceArgs, inputs: dict[str, Any]
                     ) -> tuple[str, dict[str, Any]]:
        typ, name = args.typ, args.name
        old = self.state.get(name)
        # Another provider (endpoint, region) is another resource, as Pulumi replaces it.
        provider = self.provider_inputs(args.provider)
        key = digest([typ, inputs, provider])
        if old and old["inputs"] == key:
            return old["outputs"]["id"], {**inputs, **old["outputs"]}
        if typ == "aws:s3/bucket:Bucket":
            s3 = self.boto("s3", args.provider)
            existing = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
            if inputs["bucket"] not in existing:
                # objectLockEnabled: CreateBucket's x-amz-bucket-object-lock-enabled, as pulumi-aws sends it.
                lock = {"ObjectLockEnabledForBucket": True} if inputs.get("objectLockEnabled") else {}
                s3.create_bucket(Bucket=inputs["bucket"], **lock)
            outputs = {"id": inputs["bucket"], "arn": f"arn:aws:s3:::{inputs['bucket']}"}
        elif typ == "aws:s3/bucketVersioning:BucketVersioning":
            status = inputs["versioningConfiguration"]["status"]
            self.boto("s3", args.provider).put_bucket_versioning(
                Bucket=inputs["bucket"], VersioningConfiguration={"Status": status})
            outputs = {"id": inputs["bucket"]}
        elif typ == "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration":
            # As pulumi-aws does: PutBucketLifecycleConfiguration with the rules declared (the whole document).
            self.boto("s3", args.provider).put_bucket_lifecycle_configuration(
                Bucket=inputs["bucket"], LifecycleConfiguration={"Rules": s3_shape(inputs["rules"])})
            outputs = {"id": inputs["bucket"]}
        elif typ == "aws:iam/user:User":
            iam = self.boto("iam", args.provider)
            with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
                iam.create_user(UserName=inputs["name"])
            outputs = {"id": inputs["name"], "name": inputs["name"]}
        elif typ == "aws:iam/userPolicy:UserPolicy":
            self.boto("iam", args.provider).put_user_policy(UserName=inputs["user"], PolicyName=name,
                                                            PolicyDocument=inputs["policy"])
            outputs = {"id": f"{inputs['user']}:{name}"}
        elif typ == "aws:iam/accessKey:AccessKey":
            iam = self.boto("iam", args.provider)
            if old:  # replaced: the old key goes (where it was made), as pulumi-aws deletes it
                old_iam = self.client("iam", old.get("provider") or provider)
                with contextlib.suppress(old_iam.exceptions.NoSuchEntityException):
                    old_iam.delete_access_key(UserName=old["outputs"]["user"], AccessKeyId=old["outputs"]["id"])
            created = iam.create_access_key(UserName=inputs["user"])["AccessKey"]
            outputs = {"id": created["AccessKeyId"], "secret": created["SecretAccessKey"], "user": inputs["user"]}
        else:
            raise NotImplementedError(f"lab driver: no real implementation for {typ} ({name})")
        # The provider's key stays out of the driver's state file (Pulumi's state would hold it encrypted).
        remembered = {k: v for k, v in provider.items() if k not in ("accessKey", "secretKey")}
        if provider.get("accessKey"):
            remembered["ownKey"] = True
        self.remember(name, key, outputs, {"type": typ, "provider": remembered})
        return outputs["id"], {**inputs, **outputs}

    def remote_command(self, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """pulumi-command's lifecycle: create once; on an input change run update (or create); on a trigger
        change replace (delete, then create). Unchanged inputs: nothing runs, the last stdout stands."""
        connection = inputs["connection"]
        watched = {k: inputs.get(k) for k in ("create", "update", "delete", "stdin", "triggers")}
        watched["connection"] = {k: connection.get(k) for k in ("host", "port", "user")}
        key = digest(watched)
        old = self.state.get(name)
        if old and old["inputs"] == key:
            return f"{name}-id", {**inputs, "stdout": old["outputs"]["stdout"], "stderr": old["outputs"]["stderr"]}
        if old and old.get("triggers") != digest(inputs.get("triggers")) and old.get("delete"):
            self.execute(name, "delete", old["delete"], None, old["connection"])
        command = inputs.get("update") if old and old.get("triggers") == digest(inputs.get("triggers")) else None
        command = command or inputs.get("create")
        stdout, stderr = ("", "")
        if command:
            stdout, stderr = self.execute(name, "create" if not old else "update", command, inputs.get("stdin"),
                                          connection)
        self.remember(name, key, {"stdout": stdout, "stderr": stderr},
                      {"triggers": digest(inputs.get("triggers")), "delete": inputs.get("delete"),
                       "connection": connection})
        return f"{name}-id", {**inputs, "stdout": stdout, "stderr": stderr}

    def execute(self, name: str, action: str, command: str, stdin: str | None, connection: dict[str, Any]
                ) -> tuple[str, str]:
        with self.lock:
            if self.first_failure is not None:
                raise NotStarted(f"{name}: not started, {self.first_failure}")
            self.running += 1
        try:
            return self._execute(name, action, command, stdin, connection)
        except StepFailed as error:
            with self.lock:
                self.first_failure = self.first_failure or error
            raise
        finally:
            with self.idle:
                self.running -= 1
                self.idle.notify_all()

    def _execute(self, name: str, action: str, command: str, stdin: str | None, connection: dict[str, Any]
                 ) -> tuple[str, str]:
        started = time.monotonic()
        try:
            status, out, err = run_ssh(connection, command, stdin)
        except paramiko.BadHostKeyException as error:
            self.record_run(name, action, command, -1, time.monotonic() - started)
            raise StepFailed(f"{name}: {connection['host']} answered with host key {_fingerprint(error.key)}, not "
                             f"the pinned hostKey {_fingerprint(error.expected_key)}: refused, nothing was sent"
                             ) from None
        except (OSError, paramiko.SSHException) as error:
            self.record_run(name, action, command, -1, time.monotonic() - started)
            raise StepFailed(f"{name}: cannot reach {connection['host']}:{connection.get('port') or 22} over SSH: "
                             f"{error}") from None
        self.record_run(name, action, command, status, time.monotonic() - started)
        if status != 0:
            # pulumi-command shows the whole output; keep its error lines and its end.
            lines = (out + "\n" + err).strip().splitlines()
            # pgBackRest's own lines carry a timestamp and process first ("2026-... P00  ERROR: [039]: ..."),
            # and 2.55 follows an HTTP error with a dozen lines of response headers.
            errors = [line for line in lines
                      if line.startswith(("ERROR", "WARN", "pgbackup:")) or re.search(r" P\d+ +(ERROR|WARN): ", line)]
            shown = list(dict.fromkeys(errors[:6] + lines[-10:]))
            raise StepFailed(f"{name}: Process exited with status {status}\n" + "\n".join(shown))
        # pulumi-command returns the output without its trailing newline.
        return out.rstrip("\n"), err.rstrip("\n")

    def delete_gone(self) -> list[str]:
        """After a successful update, as Pulumi's engine does last: delete what the program no longer declares.
        Done for real for access keys (key rotation: storage.keyGeneration renames the key, so the old one is
        deleted only once everything else succeeded); any other resource gone from the program is forgotten."""
        deleted = []
        for name, entry in sorted(self.state.items()):
            if name in self.declared:
                continue
            if entry.get("type") == "aws:iam/accessKey:AccessKey":
                iam = self.client("iam", entry["provider"])
                with contextlib.suppress(iam.exceptions.NoSuchEntityException):
                    iam.delete_access_key(UserName=entry["outputs"]["user"], AccessKeyId=entry["outputs"]["id"])
                deleted.append(name)
                del self.state[name]
        self.save()
        return deleted

    def destroy_all(self) -> None:
        """`pulumi destroy`: run the delete command of every remote step that has one; forget the rest.
        Storage is retained (retainOnDelete), like the program says."""
        for name, entry in sorted(self.state.items()):
            if entry.get("delete"):
                self.execute(name, "delete", entry["delete"], None, entry["connection"])
        self.state = {}
        self.save()


# ---------------------------------------------------------------------------------------------- program


def stack_config(stack_file: Path) -> dict[str, Any]:
    document = yaml.safe_load(stack_file.read_text()) or {}
    config: dict[str, Any] = document.get("config") or {}
    return config


def mask(value: Any, secret: bool) -> Any:
    return "[secret]" if secret else value


def apply(lab_dir: Path, env: dict[str, str], stack_file: Path, show_secrets: bool = False,
          extra_secrets: dict[str, str] | None = None) -> dict[str, Any]:
    """Evaluate __main__.py against the lab. Returns {"outputs": the stack outputs (secrets masked unless
    asked), "ran": the resources that really did something}. `extra_secrets` are secret config keys
    (pgbackup:<key>), as `pulumi config set --secret` would give them."""
    engine = LabEngine(lab_dir, env)
    config = stack_config(stack_file)
    if "LAB_PG_VERSION" in env:
        # The nodes' PostgreSQL is the lab release's (lab/common.sh): as `pulumi config set --path
        # pgbackup:cluster.pgVersion <it>` would set it. Pulumi.lab.yaml says the default release's.
        config["pgbackup:cluster"] = {**config.get("pgbackup:cluster", {}), "pgVersion": int(env["LAB_PG_VERSION"])}
    values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    values["pgbackup:sshPrivateKey"] = Path(env["LAB_SSH_KEY"]).read_text()
    for key, value in (extra_secrets or {}).items():
        values[f"pgbackup:{key}"] = value
    # The program reads pgbackup:offsite's administrator's key (PGBACKUP_OFFSITE_*) from its environment, as
    # `pulumi up` gives it: set for the evaluation only.
    offsite_admin = {k: v for k, v in env.items() if k.startswith(OFFSITE_ENV_PREFIX)}
    saved = {k: os.environ.get(k) for k in offsite_admin}
    os.environ.update(offsite_admin)
    try:
        outputs, secret = evaluate(
            ROOT / "__main__.py", engine, project="pgbackup", stack=stack_file.stem.split(".", 1)[1],
            config=values, secret_keys=["pgbackup:sshPrivateKey", *(f"pgbackup:{k}" for k in extra_secrets or {})],
            expected_failures=(StepFailed, NotStarted, VersionMismatch))
    except Exception:
        # As `pulumi up` ends: the steps already running finish; the first failure is what is reported.
        engine.wait_idle()
        if engine.first_failure is not None:
            raise engine.first_failure from None
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    engine.delete_gone()
    shown = {k: v if show_secrets else mask(v, k in secret) for k, v in outputs.items()}
    (lab_dir / "outputs.json").write_text(json.dumps({k: mask(v, k in secret) for k, v in outputs.items()},
                                                     indent=2, sort_keys=True))
    return {"outputs": shown, "ran": engine.ran}


class _ReadableDumper(yaml.SafeDumper):
    """YAML whose multi-line strings are literal blocks."""


def _readable_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_ReadableDumper.add_representer(str, _readable_str)


def readable(outputs: dict[str, Any]) -> str:
    """The stack outputs as a person reads them (`make lab`): YAML, each multi-line text (the alert rules, the
    Grafana dashboard's JSON) a block of its own lines rather than one escaped string. Loads back to the same
    values (yaml.safe_load)."""
    text: str = yaml.dump(outputs, Dumper=_ReadableDumper, sort_keys=True, allow_unicode=True, width=120,
                          default_flow_style=False)
    return text


def lab_env() -> tuple[Path, dict[str, str]]:
    lab_dir = Path(os.environ.get("LAB_DIR", "/var/tmp/pgbackup-lab"))  # noqa: S108 -- the lab's own state
    env_file = lab_dir / "env.json"
    if not env_file.exists():
        sys.exit(f"lab driver: {env_file} is missing: run lab/up.sh first")
    env: dict[str, str] = json.loads(env_file.read_text())
    return lab_dir, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "destroy", "outputs"])
    parser.add_argument("--stack-file", default=str(ROOT / "Pulumi.lab.yaml"),
                        help="the stack's configuration: a changed copy keeps the name Pulumi.lab.yaml (the stack's "
                             "name is read from it)")
    parser.add_argument("--json", action="store_true", help="print the outputs as JSON (default: readable YAML)")
    options = parser.parse_args()
    lab_dir, env = lab_env()
    show: Callable[[dict[str, Any]], str] = (
        (lambda outputs: json.dumps(outputs, indent=2, sort_keys=True)) if options.json else readable)
    if options.action == "outputs":
        print(show(json.loads((lab_dir / "outputs.json").read_text())))
        return
    if options.action == "destroy":
        LabEngine(lab_dir, env).destroy_all()
        print("destroyed: backup timers disabled on every node; bucket, repository and data kept")
        return
    started = time.monotonic()
    try:
        result = apply(lab_dir, env, Path(options.stack_file))
    except Exception as error:  # the program's own error, or a step's
        sys.exit(f"lab driver: pulumi up failed: {error}")
    print(show(result["outputs"]))
    print(f"lab driver: {len(result['ran'])} remote or storage operations ran, {time.monotonic() - started:.1f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
