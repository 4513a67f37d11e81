"""Each repository's administrator's key, and keys that work only from the nodes.

pgbackup:offsite's administrator's key comes from its own variables (PGBACKUP_OFFSITE_*), never from repo1's: the
offsite copy may be in another account of the same provider. Missing, they are one error naming them before
anything is declared. Sentinel values show where each key goes: B2's and the Object Lock's dynamic providers
authorize with their own repository's key, read at call time, and no key value is an input of theirs.

storage.allowedSourceIps / offsite.allowedSourceIps: a Deny statement (NotIpAddress on aws:SourceIp) in the node
key's policy. moto 5.2 (this venv's) does not evaluate IpAddress/NotIpAddress conditions (moto/iam/
policy_conditions.py implements only StringEquals and treats every other operator as satisfied), so it cannot
prove the refusal: these tests check the policy document the program declares, statement for statement, and
the validation (B2 refused, with the reason).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from components import b2, objectlock
from components.config import ConfigError, parse_settings
from components.objectlock import Target
from components.providers import admin_env
from components.storage import repository_policy
from pgbackup_testkit.harness import Run
from tests.conftest import OFFSITE_ADMIN_ENV
from tests.harness import SENTINELS, is_wrapped_secret, run_program, stack_config

REPO1_ADMIN_ENV = {name: f"SENTINEL-REPO1-ADMIN-{name}" for provider in ("b2", "s3", "minio")
                   for name in admin_env(provider)}
B2_STORAGE = {"provider": "b2", "region": "us-west-004", "bucket": "pg-backups"}
B2_OFFSITE = {"provider": "b2", "region": "eu-central-003", "bucket": "pg-offsite-archives", "repoPath": "/archives"}
S3_OFFSITE = {"provider": "s3", "endpoint": "offsite.example.org", "region": "eu-west-1", "bucket": "pg-off"}
MINIO_OFFSITE = {"provider": "minio", "endpoint": "minio.offsite.example.org:9000", "bucket": "pg-off"}


def with_offsite(offsite: dict[str, Any], storage: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    config = stack_config(retention={"full": 4, "monthly": 12}, offsite=offsite, **overrides)
    if storage is not None:
        config["storage"] = storage
    return config


@pytest.fixture
def repo1_admin_key(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in REPO1_ADMIN_ENV.items():
        monkeypatch.setenv(name, value)
    return REPO1_ADMIN_ENV


# --- the offsite repository's own administrator's key ----------------------------------------------------------


class _Authorized(Exception):
    """Raised by the stand-in B2Api once it knows which key it was given."""


class _RecordingB2Api:
    def __init__(self, _account_info: Any) -> None:
        pass

    def authorize_account(self, _realm: str, key_id: str, key: str) -> None:
        raise _Authorized(key_id, key)


def _authorized_with(provider: Any, props: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setattr(b2, "B2Api", _RecordingB2Api)
    with pytest.raises(_Authorized) as authorized:
        provider.create(props)
    key_id, key = authorized.value.args
    return key_id, key


def test_b2_repo1_and_offsite_authorize_each_with_its_own_admin_key(repo1_admin_key: dict[str, str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The props the program declares for each repository's bucket and key, given to the real providers: repo1's
    authorize with B2_APPLICATION_KEY_ID/B2_APPLICATION_KEY, the offsite's with PGBACKUP_OFFSITE_B2_*."""
    run = run_program(with_offsite(B2_OFFSITE, storage=B2_STORAGE))
    expected = {
        "repository": (repo1_admin_key["B2_APPLICATION_KEY_ID"], repo1_admin_key["B2_APPLICATION_KEY"]),
        "offsite": (OFFSITE_ADMIN_ENV["PGBACKUP_OFFSITE_B2_APPLICATION_KEY_ID"],
                    OFFSITE_ADMIN_ENV["PGBACKUP_OFFSITE_B2_APPLICATION_KEY"]),
    }
    for repository, key in expected.items():
        bucket = run.named(f"{repository}-bucket").inputs
        assert _authorized_with(b2._B2BucketProvider(), bucket, monkeypatch) == key, repository
        app_key = {**run.named(f"{repository}-key").inputs, "bucket_id": "b1"}
        assert _authorized_with(b2._B2ApplicationKeyProvider(), app_key, monkeypatch) == key, repository
        # Delete and read use what the resource recorded (its outputs carry the names).
        outputs = b2._admin_env_output(bucket)
        assert b2._admin_env(outputs) == b2._admin_env(bucket)
    # repo1's inputs are as they were before admin_env existed.
    assert "admin_env" not in run.named("repository-bucket").inputs
    assert run.named("offsite-key").inputs["admin_env"] == ["PGBACKUP_OFFSITE_B2_APPLICATION_KEY_ID",
                                                           "PGBACKUP_OFFSITE_B2_APPLICATION_KEY"]


def test_a_b2_offsite_key_missing_at_call_time_names_the_offsite_variables(monkeypatch: pytest.MonkeyPatch,
                                                                            repo1_admin_key: dict[str, str]) -> None:
    monkeypatch.delenv("PGBACKUP_OFFSITE_B2_APPLICATION_KEY")
    monkeypatch.setattr(b2, "B2Api", _RecordingB2Api)  # never the network, whatever key is used
    props = {"bucket_name": "pg-offsite-archives", "file_name_prefix": "archives/", "hidden_file_retention_days": 30,
             "admin_env": list(admin_env("b2", offsite=True))}
    with pytest.raises(b2.B2CredentialsError) as raised:
        b2._B2BucketProvider().create(props)
    assert "not set: PGBACKUP_OFFSITE_B2_APPLICATION_KEY" in str(raised.value)
    assert repo1_admin_key["B2_APPLICATION_KEY"] not in str(raised.value)


@pytest.mark.parametrize(("offsite", "names"), [
    (B2_OFFSITE, ("PGBACKUP_OFFSITE_B2_APPLICATION_KEY_ID", "PGBACKUP_OFFSITE_B2_APPLICATION_KEY")),
    (S3_OFFSITE, ("PGBACKUP_OFFSITE_AWS_ACCESS_KEY_ID", "PGBACKUP_OFFSITE_AWS_SECRET_ACCESS_KEY")),
    (MINIO_OFFSITE, ("PGBACKUP_OFFSITE_MINIO_USER", "PGBACKUP_OFFSITE_MINIO_PASSWORD")),
])
def test_without_its_variables_the_offsite_is_refused_before_anything_is_declared(
        offsite: dict[str, Any], names: tuple[str, str], repo1_admin_key: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """repo1's variables are set (the same provider's): no silent fallback to them."""
    monkeypatch.delenv(names[1])
    run = Run()
    with pytest.raises(ConfigError) as raised:
        run_program(with_offsite(offsite), run=run)
    message = str(raised.value)
    assert message.startswith(f"pgbackup:offsite: creating the offsite bucket and its key ({offsite['provider']}) "
                              f"needs the offsite administrator's key in {names[0]} and {names[1]}")
    assert f"(not set: {names[1]})" in message
    assert run.resources == []


def test_an_existing_offsite_bucket_needs_no_offsite_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OFFSITE_ADMIN_ENV:
        monkeypatch.delenv(name)
    secrets = {"sshPrivateKey": SENTINELS["sshPrivateKey"], "offsiteAccessKeyId": "OFFSITEKEYID",
               "offsiteSecretAccessKey": "OFFSITE-SECRET-9f2"}
    run = run_program(with_offsite({**S3_OFFSITE, "create": False}), secrets=secrets)
    assert not [r for r in run.resources if r.typ == "pulumi:providers:aws" and r.name.startswith("offsite")]


@pytest.mark.parametrize(("offsite", "provider_type", "fields"), [
    (S3_OFFSITE, "pulumi:providers:aws", {"accessKey": "PGBACKUP_OFFSITE_AWS_ACCESS_KEY_ID",
                                          "secretKey": "PGBACKUP_OFFSITE_AWS_SECRET_ACCESS_KEY"}),
    (MINIO_OFFSITE, "pulumi:providers:minio", {"minioUser": "PGBACKUP_OFFSITE_MINIO_USER",
                                               "minioPassword": "PGBACKUP_OFFSITE_MINIO_PASSWORD"}),
])
def test_the_offsite_providers_get_the_offsite_key_as_secrets_and_repo1s_get_none(
        offsite: dict[str, Any], provider_type: str, fields: dict[str, str], repo1_admin_key: dict[str, str]) -> None:
    """pulumi-aws and pulumi-minio take a second key only as provider configuration: the offsite's providers get
    PGBACKUP_OFFSITE_*'s values, each a secret (encrypted in the state); repo1's providers get no key (their plugin
    reads AWS_* / MINIO_* itself). No administrator's value reaches any other resource."""
    storage = {**stack_config()["storage"], "provider": offsite["provider"], "endpoint": "repo1.example.net",
               "region": "eu-central-1"}
    run = run_program(with_offsite(offsite, storage=storage))
    providers = run.of_type(provider_type)
    offsite_providers = [p for p in providers if p.name.startswith("offsite")]
    repo1_providers = [p for p in providers if p.name.startswith("repository")]
    assert offsite_providers
    assert repo1_providers
    for provider in offsite_providers:
        for field, name in fields.items():
            assert provider.inputs[field] == OFFSITE_ADMIN_ENV[name], (provider.name, field)
            assert is_wrapped_secret(provider.raw_inputs[field]), (provider.name, field)
    for provider in repo1_providers:
        assert not set(fields) & set(provider.inputs), provider.name
    admin_values = [*OFFSITE_ADMIN_ENV.values(), *repo1_admin_key.values()]
    for resource in run.resources:
        if resource in offsite_providers:
            continue
        text = json.dumps(resource.inputs)
        assert not [value for value in admin_values if value in text], resource.name
    for output in run.outputs.values():
        assert not [value for value in admin_values if value in json.dumps(output, default=str)]


@pytest.mark.parametrize("provider", ["s3", "minio"])
def test_object_lock_sets_each_repositorys_retention_with_its_own_admin_key(
        provider: str, repo1_admin_key: dict[str, str]) -> None:
    """The ObjectLock resources the program declares name their variables (never a key); the provider code reads
    repo1's from AWS_*/MINIO_*, the offsite's from PGBACKUP_OFFSITE_*."""
    endpoint = {"minio": {"endpoint": "minio.example.net:9000"}}.get(provider, {"endpoint": "s3.example.net"})
    storage = {"provider": provider, "region": "eu-central-1", "bucket": "pg-backups", "objectLockDays": 5, **endpoint}
    offsite = {**(MINIO_OFFSITE if provider == "minio" else S3_OFFSITE), "objectLockDays": 5}
    run = run_program(with_offsite(offsite, storage=storage, pgbackrest={"version": "2.55*"}))
    locks = {r.name: r for r in run.of_type("pulumi-python:dynamic/s3:ObjectLock")}
    repo1_names, offsite_names = admin_env(provider), admin_env(provider, offsite=True)
    environ = {**repo1_admin_key, **OFFSITE_ADMIN_ENV}
    for name, names in (("repository-object-lock", repo1_names), ("offsite-object-lock", offsite_names)):
        props = {k: v for k, v in locks[name].inputs.items() if k != "__provider"}
        assert "key_id" not in props
        assert "secret" not in props
        assert objectlock._credentials(Target.of(props), environ) == (environ[names[0]], environ[names[1]]), name
    assert "admin_env" not in locks["repository-object-lock"].inputs
    assert locks["offsite-object-lock"].inputs["admin_env"] == list(offsite_names)


# --- allowedSourceIps -------------------------------------------------------------------------------------------

ALLOWED_CANONICAL = ["203.0.113.7/32", "198.51.100.0/28", "2001:db8::/64"]
DENY_ELSEWHERE: dict[str, Any] = {
    "Sid": "OnlyFromAllowedSourceIps",
    "Effect": "Deny",
    "Action": ["s3:*"],
    "Resource": ["arn:aws:s3:::*"],
    "Condition": {"NotIpAddress": {"aws:SourceIp": ALLOWED_CANONICAL}},
}
ALLOWED = ["203.0.113.7", "198.51.100.0/28", "2001:DB8::/64"]


def test_the_policy_denies_every_s3_action_from_any_other_address() -> None:
    without = repository_policy("pg-backups", "pgbackrest")["Statement"]
    with_ips = repository_policy("pg-backups", "pgbackrest", allowed_source_ips=ALLOWED_CANONICAL)["Statement"]
    assert isinstance(without, list)
    assert with_ips == [*without, DENY_ELSEWHERE]


@pytest.mark.parametrize(("provider", "policy_type"), [("s3", "aws:iam/userPolicy:UserPolicy"),
                                                       ("wasabi", "aws:iam/userPolicy:UserPolicy"),
                                                       ("minio", "minio:index/iamPolicy:IamPolicy")])
def test_the_node_keys_policy_carries_the_deny_for_each_repository(provider: str, policy_type: str) -> None:
    endpoint = {"minio": {"endpoint": "minio.example.net:9000"}, "s3": {"endpoint": "s3.example.net"}}.get(provider, {})
    storage = {"provider": provider, "region": "eu-central-1", "bucket": "pg-backups", **endpoint,
               "allowedSourceIps": ALLOWED}
    offsite = {**(MINIO_OFFSITE if provider == "minio" else S3_OFFSITE), "allowedSourceIps": ["192.0.2.10"]}
    run = run_program(with_offsite(offsite, storage=storage))
    policies = {r.name: json.loads(r.inputs["policy"])["Statement"] for r in run.of_type(policy_type)}
    assert policies["repository-policy"][-1] == DENY_ELSEWHERE
    assert policies["offsite-policy"][-1] == {**DENY_ELSEWHERE,
                                              "Condition": {"NotIpAddress": {"aws:SourceIp": ["192.0.2.10/32"]}}}
    assert [s["Sid"] for s in policies["repository-policy"][:-1]] == [
        "ListRepository", "ReadWriteRepository", "NeverRemoveVersions"]


def test_without_allowed_source_ips_the_policy_is_as_before() -> None:
    run = run_program(stack_config())
    statements = json.loads(run.named("repository-policy").inputs["policy"])["Statement"]
    assert statements == repository_policy("pg-backups", "pgbackrest")["Statement"]
    assert "OnlyFromAllowedSourceIps" not in json.dumps(statements)


def storage_with(**fields: Any) -> dict[str, Any]:
    config = stack_config()
    config["storage"] = {**config["storage"], **fields}
    return config


@pytest.mark.parametrize(("value", "expected"), [
    (["203.0.113.7", "10.0.0.300"], "pgbackup:storage.allowedSourceIps: entry 1, '10.0.0.300': expected an IP "
                                    "address or a CIDR range"),
    (["10.0.0.1/24"], "pgbackup:storage.allowedSourceIps: entry 0, '10.0.0.1/24': expected an IP address or a CIDR "
                      "range"),
    (["db1.example.net"], "pgbackup:storage.allowedSourceIps: entry 0, 'db1.example.net'"),
    ([], "pgbackup:storage.allowedSourceIps: an empty list would refuse the node's key from everywhere"),
    ("203.0.113.7", "pgbackup:storage.allowedSourceIps: Input should be a valid list"),
])
def test_a_bad_entry_is_one_error_naming_the_key_and_the_entry(value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(storage_with(allowedSourceIps=value))
    assert str(raised.value).startswith(expected), str(raised.value)
    assert "\n" not in str(raised.value)


def test_entries_are_written_canonically() -> None:
    storage = parse_settings(storage_with(allowedSourceIps=ALLOWED))[0]
    assert storage.allowed_source_ips == ["203.0.113.7/32", "198.51.100.0/28", "2001:db8::/64"]


def test_b2_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(stack_config(storage={**B2_STORAGE, "allowedSourceIps": ["203.0.113.7"]}))
    assert str(raised.value).startswith(
        "pgbackup:storage.allowedSourceIps: B2 cannot limit a key to source addresses (an application key has only "
        "capabilities, a bucket and a name prefix; no address condition)")


def test_the_offsite_key_is_refused_for_b2_under_its_own_name() -> None:
    config = with_offsite({**B2_OFFSITE, "allowedSourceIps": ["203.0.113.7"]})
    with pytest.raises(ConfigError, match=r"^pgbackup:offsite\.allowedSourceIps: B2 cannot limit a key"):
        parse_settings(config, stack="test")


def test_a_key_the_program_does_not_create_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^pgbackup:storage\.allowedSourceIps: only for a key the program "
                                          r"creates \(create: true\)"):
        parse_settings(storage_with(create=False, allowedSourceIps=["203.0.113.7"]))
