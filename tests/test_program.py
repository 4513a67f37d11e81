"""The real __main__.py under Pulumi's mocks: what it declares for each provider, and its outputs."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pulumi.output import UNKNOWN

from components.storage import S3_DENIED_ACTIONS, S3_OBJECT_ACTIONS
from tests.harness import (
    HEALTHY_INFO,
    SENTINELS,
    Run,
    depends_on,
    healthy_stdout,
    node_files,
    run_program,
    stack_config,
    verify_report,
)

PROVIDERS = {
    "b2": {"provider": "b2", "region": "us-west-004", "bucket": "proposalsapp-db-backups", "repoPath": "/repo"},
    "wasabi": {"provider": "wasabi", "region": "eu-central-2", "bucket": "pg-backups", "repoPath": "/repo"},
    "minio": {"provider": "minio", "endpoint": "minio.lan:9000", "bucket": "pg-backups", "repoPath": "/repo"},
    "s3": {"provider": "s3", "endpoint": "s3.example.net", "region": "eu-1", "bucket": "pg-backups", "repoPath": "/repo"},
}


@pytest.fixture(scope="module", params=sorted(PROVIDERS))
def provider_run(request: pytest.FixtureRequest) -> tuple[str, Run]:
    return request.param, run_program(stack_config(storage=PROVIDERS[request.param]))


def types(run: Run) -> list[str]:
    return [r.typ for r in run.resources]


def assert_repository_policy(policy: dict[str, Any], bucket: str) -> None:
    """Exactly what pgBackRest needs: list the repo prefix; read, write, delete objects by name under it. Removing
    a version for good (or turning versioning or the lifecycle rule off) is never allowed, and denied outright."""
    list_stmt, object_stmt, deny_stmt = policy["Statement"]
    assert list_stmt["Action"] == ["s3:ListBucket"]
    assert list_stmt["Resource"] == [f"arn:aws:s3:::{bucket}"]
    assert list_stmt["Condition"] == {"StringLike": {"s3:prefix": ["repo", "repo/*"]}}
    assert object_stmt["Resource"] == [f"arn:aws:s3:::{bucket}/repo/*"]
    assert set(object_stmt["Action"]) == set(S3_OBJECT_ACTIONS)
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"} <= set(object_stmt["Action"])
    allowed = {a for stmt in policy["Statement"] if stmt["Effect"] == "Allow" for a in stmt["Action"]}
    assert not any("*" in a for a in allowed)
    assert not allowed & {"s3:DeleteObjectVersion", "s3:PutBucketVersioning", "s3:PutLifecycleConfiguration",
                          "s3:BypassGovernanceRetention", "s3:PutBucketPolicy"}
    assert deny_stmt["Effect"] == "Deny"
    assert "s3:DeleteObjectVersion" in deny_stmt["Action"]
    assert set(deny_stmt["Action"]) == set(S3_DENIED_ACTIONS)
    assert deny_stmt["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]


def lifecycle_rules(run: Run) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = run.named("repository-lifecycle").inputs["rules"]
    return rules


def test_b2_bucket_and_scoped_key() -> None:
    run = run_program(stack_config(storage=PROVIDERS["b2"]))
    bucket = run.named("repository-bucket")
    assert bucket.typ == "pulumi-python:dynamic/b2:Bucket"
    assert bucket.inputs["bucket_name"] == "proposalsapp-db-backups"
    assert bucket.inputs["file_name_prefix"] == "repo/"
    assert bucket.inputs["hidden_file_retention_days"] == 30
    key = run.named("repository-key")
    assert key.inputs["bucket_id"] == "b2bucketid-repository-bucket"
    assert key.inputs["name_prefix"] == "repo/"
    # Hide by name (writeFiles), never remove a version (deleteFiles).
    assert sorted(key.inputs["capabilities"]) == ["listFiles", "readFiles", "writeFiles"]
    assert run.outputs["accessKeyId"] == "b2keyid-repository-key"
    assert run.outputs["storage"]["endpoint"] == "s3.us-west-004.backblazeb2.com"
    assert not any(t.startswith(("aws:", "minio:")) for t in types(run))


@pytest.mark.parametrize("provider", ["wasabi", "s3"])
def test_aws_compatible_bucket_user_policy_key(provider: str) -> None:
    run = run_program(stack_config(storage=PROVIDERS[provider]))
    s3, iam = run.named("repository-s3"), run.named("repository-iam")
    endpoints = json.loads(s3.inputs["endpoints"])[0] if isinstance(s3.inputs["endpoints"], str) else s3.inputs["endpoints"][0]
    iam_endpoints = json.loads(iam.inputs["endpoints"])[0] if isinstance(iam.inputs["endpoints"], str) else iam.inputs["endpoints"][0]
    if provider == "wasabi":
        assert endpoints["s3"] == "https://s3.eu-central-2.wasabisys.com"
        assert iam_endpoints["iam"] == "https://iam.wasabisys.com"
        assert iam.inputs["region"] == "us-east-1"
    else:
        assert endpoints["s3"] == "https://s3.example.net"
        assert iam_endpoints["iam"] == "https://s3.example.net"
    assert run.named("repository-bucket").inputs["bucket"] == "pg-backups"
    assert run.named("repository-versioning").inputs["versioningConfiguration"] == {"status": "Enabled"}
    assert lifecycle_rules(run) == [{
        "id": "pgbackup-repo", "status": "Enabled", "filter": {"prefix": "repo/"},
        "noncurrentVersionExpiration": {"noncurrentDays": 30}, "expiration": {"expiredObjectDeleteMarker": True},
    }]
    assert run.named("repository-lifecycle").inputs["bucket"] == "repository-bucket-id"
    assert depends_on(run, "repository-lifecycle") == {"repository-versioning"}
    policy = json.loads(run.named("repository-policy").inputs["policy"])
    assert_repository_policy(policy, "pg-backups")
    assert run.named("repository-policy").inputs["user"] == run.named("repository-user").inputs["name"]
    assert run.named("repository-key").inputs["user"] == "pgbackup-test-main"
    assert run.outputs["accessKeyId"] == "AKIAMOCKKEYID"


def test_minio_bucket_user_policy() -> None:
    run = run_program(stack_config(storage=PROVIDERS["minio"]))
    provider = run.named("repository-minio")
    assert provider.inputs["minioServer"] == "minio.lan:9000"
    assert provider.inputs["minioSsl"] in (True, "true")
    assert_repository_policy(json.loads(run.named("repository-policy").inputs["policy"]), "pg-backups")
    assert run.named("repository-versioning").inputs["versioningConfiguration"] == {"status": "Enabled"}
    assert lifecycle_rules(run) == [{"id": "pgbackup-repo", "status": "Enabled", "filter": "repo/",
                                     "noncurrentVersionExpirationDays": 30, "expiration": "DeleteMarker"}]
    assert depends_on(run, "repository-lifecycle") == {"repository-versioning"}
    attachment = run.named("repository-attachment").inputs
    assert attachment == {"userName": "pgbackup-test-main", "policyName": "pgbackup-test-main"}
    assert run.outputs["accessKeyId"] == "pgbackup-test-main"


def test_bucket_is_retained_on_destroy(provider_run: tuple[str, Run]) -> None:
    """`pulumi destroy` never deletes backups: the bucket (and its versioning) are retained."""
    _, run = provider_run
    for name in ("repository-bucket", "repository-versioning", "repository-lifecycle"):
        if name in run.options:
            assert run.options[name].retain_on_delete is True, name
    assert run.options["repository-bucket"].retain_on_delete is True
    retained = {name for name, opts in run.options.items() if opts.retain_on_delete}
    assert retained <= {"repository-bucket", "repository-versioning", "repository-lifecycle"}
    assert run.named("repository-bucket").inputs.get("forceDestroy") in (None, False)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_versions_are_kept_for_the_configured_days_under_the_repository_prefix_only(provider: str) -> None:
    """noncurrentVersionDays reaches each provider's rule, which never covers more than the repository."""
    run = run_program(stack_config(storage={**PROVIDERS[provider], "noncurrentVersionDays": 45}))
    if provider == "b2":
        bucket = run.named("repository-bucket").inputs
        assert (bucket["file_name_prefix"], bucket["hidden_file_retention_days"]) == ("repo/", 45)
        return
    (rule,) = lifecycle_rules(run)
    if provider == "minio":
        assert (rule["filter"], rule["noncurrentVersionExpirationDays"]) == ("repo/", 45)
    else:
        assert (rule["filter"], rule["noncurrentVersionExpiration"]) == ({"prefix": "repo/"}, {"noncurrentDays": 45})


def test_no_key_can_remove_a_version(provider_run: tuple[str, Run]) -> None:
    """Fails if deleteFiles (B2) or s3:DeleteObjectVersion (S3, Wasabi, MinIO) is ever granted again."""
    provider, run = provider_run
    if provider == "b2":
        capabilities = run.named("repository-key").inputs["capabilities"]
        assert "deleteFiles" not in capabilities
        assert set(capabilities) <= {"listFiles", "readFiles", "writeFiles"}
    else:
        assert_repository_policy(json.loads(run.named("repository-policy").inputs["policy"]), "pg-backups")


def test_children_are_parented(provider_run: tuple[str, Run]) -> None:
    _, run = provider_run
    for name, opts in run.options.items():
        if name not in ("repository", "cluster"):
            assert opts.parent is not None, f"{name} has no parent"


def test_existing_bucket_declares_no_storage_resources() -> None:
    storage = {**PROVIDERS["s3"], "create": False}
    secrets = {"sshPrivateKey": SENTINELS["sshPrivateKey"], "accessKeyId": SENTINELS["accessKeyId"],
               "secretAccessKey": SENTINELS["secretAccessKey"]}
    run = run_program(stack_config(storage=storage), secrets=secrets)
    assert not any(t.startswith(("aws:", "minio:", "pulumi-python:dynamic")) for t in types(run))
    assert run.outputs["secretAccessKey"] == SENTINELS["secretAccessKey"]
    assert "secretAccessKey" in run.secret_outputs
    # No cipherPass given: one is generated and kept as a secret.
    assert run.named("cluster-cipher-pass").typ == "random:index/randomPassword:RandomPassword"
    assert run.outputs["cipherPass"].startswith(SENTINELS["providerSecret"])
    assert "cipherPass" in run.secret_outputs


def test_outputs_contract(provider_run: tuple[str, Run]) -> None:
    provider, run = provider_run
    outputs = run.outputs
    assert set(outputs) == {"storage", "accessKeyId", "secretAccessKey", "cipherPass", "stanza", "nodes",
                            "stanzaStatus", "lastBackup", "walArchive", "alertRules", "pgbackrestVersion",
                            "storageCost", "lastVerify", "lastDrill", "grafanaDashboard", "recoveryWindow"}
    assert outputs["pgbackrestVersion"] == "2.45-1"
    assert outputs["storage"]["provider"] == provider
    assert outputs["storage"]["repoPath"] == "/repo"
    assert set(outputs["storage"]) == {"provider", "endpoint", "region", "bucket", "repoPath", "uriStyle"}
    assert outputs["stanza"] == "main"
    assert outputs["nodes"] == [
        {"name": "pg1", "host": "pg1.example.net", "role": "leader"},
        {"name": "pg2", "host": "pg2.example.net", "role": "replica"},
        {"name": "pg3", "host": "pg3.example.net", "role": "replica"},
    ]
    assert outputs["stanzaStatus"] == {"code": 0, "message": "ok"}
    assert outputs["lastBackup"] == {"label": "20261122-020000F_20261123-020000I", "type": "incr", "repo": 1,
                                     "stopTime": "2026-11-23T02:01:40Z"}
    assert outputs["walArchive"] == {"min": "000000010000000000000003", "max": "000000010000000000000009"}
    assert run.secret_outputs == {"secretAccessKey", "cipherPass"}
    assert (outputs["lastVerify"], outputs["lastDrill"], outputs["recoveryWindow"]) == (None, None, None)  # no file yet


def test_outputs_with_monthly_archives_in_a_second_repository() -> None:
    """`pgbackrest info` with two repositories (its JSON lists archives and backups of both): lastBackup is the
    newest of either, with its repository; walArchive is repo1's."""
    info = copy.deepcopy(HEALTHY_INFO)
    info[0]["archive"].append({"database": {"id": 1, "repo-key": 2}, "id": "15-1",
                               "min": "000000010000000000000008", "max": "00000001000000000000000A"})
    info[0]["backup"].append({"label": "20261123-040000F", "type": "full", "database": {"id": 1, "repo-key": 2},
                              "timestamp": {"start": 1795400000, "stop": 1795400100}})
    run = run_program(stack_config(retention={"monthly": 12}), command_stdout=lambda args: (
        verify_report("pg1", "leader", info) + "\n" if args.name == "cluster-pg1-verify" else
        healthy_stdout(args)))
    assert run.outputs["lastBackup"] == {"label": "20261123-040000F", "type": "full", "repo": 2,
                                         "stopTime": "2026-11-23T02:15:00Z"}
    assert run.outputs["walArchive"] == {"min": "000000010000000000000003", "max": "000000010000000000000009"}


def test_outputs_when_no_leader_reports() -> None:
    run = run_program(stack_config(), command_stdout=lambda args: (
        json.dumps({"node": args.name.split("-")[1], "role": "replica", "info": None}) + "\n"
        if args.name.endswith("-verify") else ""))
    assert run.outputs["stanzaStatus"]["code"] == -1
    assert run.outputs["lastBackup"] is None
    assert run.outputs["walArchive"] is None
    assert run.outputs["storageCost"] is None


# ---- storageCost (issue 11, item 4) ----------------------------------------------------------------------

@pytest.mark.parametrize(("provider", "usd"), [("b2", 9.0), ("wasabi", 10.485), ("s3", 34.5), ("minio", 0.0)])
def test_storage_cost_prices_what_the_leader_measured_at_the_providers_dated_price(provider: str, usd: float) -> None:
    """1.5 TB in repo1 (the healthy leader's repo-ls): the provider's list price from components/providers.py,
    dated (B2 $6, Wasabi $6.99, S3 Standard $23 per TB and month as of 2026-04; a self-hosted MinIO $0)."""
    run = run_program(stack_config(storage=PROVIDERS[provider]))
    cost = run.outputs["storageCost"]
    assert cost["totalBytes"] == 1_500_000_000_000
    assert cost["monthlyUsd"] == pytest.approx(usd, abs=0.005)  # rounded to cents
    assert cost["repositories"]["1"]["provider"] == provider
    assert cost["repositories"]["1"]["priceAsOf"] == "2026-04"
    assert set(cost["repositories"]) == {"1"}


def test_storage_cost_per_repository_with_a_configured_price() -> None:
    storage = {**PROVIDERS["minio"], "pricePerTbMonth": 4}
    run = run_program(stack_config(storage=storage, retention={"monthly": 12}), command_stdout=lambda args: (
        verify_report("pg1", "leader", HEALTHY_INFO, {"1": 250_000_000_000, "2": 2_000_000_000_000}) + "\n"
        if args.name == "cluster-pg1-verify" else healthy_stdout(args)))
    cost = run.outputs["storageCost"]
    assert cost["repositories"]["1"]["monthlyUsd"] == 1.0
    assert cost["repositories"]["2"] == {"provider": "minio", "bytes": 2_000_000_000_000, "usdPerTbMonth": 4.0,
                                         "priceAsOf": "configured (pgbackup:storage.pricePerTbMonth)",
                                         "monthlyUsd": 8.0}
    assert (cost["totalBytes"], cost["monthlyUsd"]) == (2_250_000_000_000, 9.0)


def test_preview_leaves_apply_time_outputs_unknown() -> None:
    """During `pulumi preview` no command runs: stdout is unknown, so are the outputs built from it."""
    run = run_program(stack_config(), preview=True)
    assert run.outputs["stanza"] == "main"
    assert run.outputs["storage"]["bucket"] == "pg-backups"
    for key in ("nodes", "stanzaStatus", "lastBackup", "walArchive", "storageCost", "lastVerify", "lastDrill"):
        assert run.outputs[key] is UNKNOWN, key


def test_nodes_with_different_pgbackrest_versions_fail_the_apply_naming_them() -> None:
    def stdout(args: Any) -> str:
        if args.name == "cluster-pg2-install":
            return "installed: pgbackrest\npgbackrest 2.55.1-1\n"
        return healthy_stdout(args)

    run = Run()
    with pytest.raises(Exception, match=r"pg1 runs 2\.45-1, pg2 runs 2\.55\.1-1, pg3 runs 2\.45-1: set "
                                        r"pgbackup:pgbackrest\.version"):
        run_program(stack_config(), command_stdout=stdout, run=run)
    # The apply stops there: no cluster-wide step (stanza, archiving, check, schedule) is declared. (Whether the
    # nodes' patroni-local steps were registered before the failure ended the program varies from run to run
    # under the mocks; they do not wait for the version.)
    declared = {c.name.split("-", 2)[2] for c in run.commands}
    assert {"install", "files"} <= declared, declared
    assert not declared & {"stanza", "archiving", "verify", "schedule"}, declared


# ---- Key rotation (issue 11, item 3) ---------------------------------------------------------------------

KEY_RESOURCES = {  # provider -> the resources that are the key (renamed with each generation)
    "b2": {"repository-key"},
    "wasabi": {"repository-key"},
    "s3": {"repository-key"},
    "minio": {"repository-secret", "repository-user", "repository-attachment"},
}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_a_new_key_generation_is_a_new_key_and_the_old_one_is_gone_from_the_program(provider: str) -> None:
    """Pulumi deletes a resource gone from the program at the end of the update, after every create and
    update succeeded (the nodes' new pgbackrest.conf, the stanza and verify steps' `check`): a new name per
    generation is what makes the rotation create-then-prove-then-delete. Generation 0 keeps today's names;
    nothing else of the storage is renamed (bucket, rules, IAM user and policy)."""
    first = {r.name for r in run_program(stack_config(storage=PROVIDERS[provider])).resources
             if r.name.startswith("repository")}
    rotated = {r.name for r in run_program(stack_config(storage={**PROVIDERS[provider], "keyGeneration": 1})
                                           ).resources if r.name.startswith("repository")}
    assert KEY_RESOURCES[provider] <= first
    assert first - rotated == KEY_RESOURCES[provider]
    assert rotated - first == {f"{name}-g1" for name in KEY_RESOURCES[provider]}


def test_the_rotated_key_reaches_every_node_and_reruns_the_check() -> None:
    def config_of(run: Run, node: str) -> str:
        return node_files(run, node)["/etc/pgbackrest/pgbackrest.conf"]["content"]

    storage = PROVIDERS["minio"]
    before = run_program(stack_config(storage=storage))
    after = run_program(stack_config(storage={**storage, "keyGeneration": 1}))
    for node in ("pg1", "pg2", "pg3"):
        assert "repo1-s3-key=pgbackup-test-main\n" in config_of(before, node)
        assert "repo1-s3-key=pgbackup-test-main-g1\n" in config_of(after, node)
    # The stanza and verify steps re-run on a configuration change (their trigger is its digest).
    for step in ("stanza", "verify"):
        assert before.named(f"cluster-pg1-{step}").inputs["triggers"] != after.named(f"cluster-pg1-{step}").inputs["triggers"]


def test_key_generation_with_an_adopted_key_is_refused() -> None:
    storage = {**PROVIDERS["s3"], "create": False, "keyGeneration": 2}
    secrets = {k: SENTINELS[k] for k in ("sshPrivateKey", "cipherPass", "accessKeyId", "secretAccessKey")}
    with pytest.raises(Exception, match=r"pgbackup:storage.keyGeneration: rotates the key the program creates"):
        run_program(stack_config(storage=storage), secrets=secrets)
