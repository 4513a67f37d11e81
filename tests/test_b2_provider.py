"""The B2 dynamic providers against b2sdk's own in-memory B2 simulator (no network)."""

from __future__ import annotations

import base64
import pickle
import time
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi.dynamic
import pytest
from b2sdk.v2 import B2Api, B2HttpApiConfig, FileRetentionSetting, InMemoryAccountInfo, RawSimulator, RetentionMode
from b2sdk.v2.exception import AccessDenied, B2Error, Unauthorized
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.output import Unknown
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings

from components import b2

PGBACKREST_CAPS = ["listFiles", "readFiles", "writeFiles"]


def repo_rule(days: int, prefix: str = "pgbackrest/") -> dict[str, Any]:
    return {"fileNamePrefix": prefix, "daysFromHidingToDeleting": days, "daysFromUploadingToHiding": None}


# What pgbackup set before it had a prefix: one rule over the whole bucket.
LEGACY_RULE = {"fileNamePrefix": "", "daysFromHidingToDeleting": 1, "daysFromUploadingToHiding": None}
OTHER_RULE = {"fileNamePrefix": "tmp/", "daysFromUploadingToHiding": 3, "daysFromHidingToDeleting": 3}
SIM_CONFIG = B2HttpApiConfig(_raw_api_class=RawSimulator)


def _api_on(raw: RawSimulator, key_id: str, key: str) -> B2Api:
    """A freshly authorized B2Api talking to the shared simulator `raw` (as the provider builds one per call)."""
    api = B2Api(InMemoryAccountInfo(), api_config=SIM_CONFIG)
    api.session.raw_api = raw
    api.authorize_account("production", key_id, key)
    return api


@dataclass
class Sim:
    raw: RawSimulator
    key_id: str
    master: str
    admin: B2Api  # the test's own view of the account

    def bucket(self, bucket_id: str) -> Any:
        (found,) = self.admin.list_buckets(bucket_id=bucket_id)
        return found


def _simulated_account() -> tuple[Any, Any, str, str]:
    """b2sdk's RawSimulator with one account, and an API authorized on it with the master key."""
    admin = B2Api(InMemoryAccountInfo(), api_config=SIM_CONFIG)
    raw = admin.session.raw_api
    key_id, master = raw.create_account()
    admin.authorize_account("production", key_id, master)
    return admin, raw, key_id, master


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Sim:
    """One simulated account; every provider call gets a new API on it through the patched factory."""
    admin, raw, key_id, master = _simulated_account()
    monkeypatch.setattr(b2, "_make_api", lambda *_names: _api_on(raw, key_id, master))
    return Sim(raw, key_id, master, admin)


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    messages: list[str] = []
    monkeypatch.setattr(pulumi.log, "info", lambda msg, *a, **k: messages.append(msg))
    return messages


def _bucket_props(name: str = "pg-backups-1", days: float = 30.0, prefix: str = "pgbackrest/") -> dict[str, Any]:
    # Numbers arrive from the engine as floats.
    return {"bucket_name": name, "file_name_prefix": prefix, "hidden_file_retention_days": days}


def _key_props(bucket_id: str, **overrides: Any) -> dict[str, Any]:
    props = {
        "key_name": "pgbackup-main",
        "bucket_id": bucket_id,
        "name_prefix": "pgbackrest/",
        "capabilities": list(PGBACKREST_CAPS),
    }
    props.update(overrides)
    return props


# --- bucket ---------------------------------------------------------------------------------------


def test_bucket_create_is_private_with_a_rule_for_the_repository_prefix(sim: Sim, logs: list[str]) -> None:
    result = b2._B2BucketProvider().create(_bucket_props())

    bucket = sim.bucket(result.id)
    assert bucket.name == "pg-backups-1"
    assert bucket.type_ == "allPrivate"
    assert bucket.lifecycle_rules == [repo_rule(30)]
    assert type(bucket.lifecycle_rules[0]["daysFromHidingToDeleting"]) is int
    assert result.outs == {"bucket_id": result.id, "bucket_name": "pg-backups-1", "file_name_prefix": "pgbackrest/",
                           "hidden_file_retention_days": 30}
    assert any("created" in m for m in logs)


def test_bucket_create_adopts_existing_bucket_and_keeps_its_other_rules(sim: Sim, logs: list[str]) -> None:
    """B2 keeps one list of rules per bucket: adoption merges ours by prefix, it never replaces the list."""
    existing = sim.admin.create_bucket(
        "pg-backups-old", "allPublic", lifecycle_rules=[OTHER_RULE, repo_rule(2)]
    )
    existing.upload_bytes(b"base backup", "pgbackrest/backup/db/backup.info")

    result = b2._B2BucketProvider().create(_bucket_props("pg-backups-old", 7.0))

    assert result.id == existing.id_
    bucket = sim.bucket(existing.id_)
    assert bucket.type_ == "allPrivate"
    assert bucket.lifecycle_rules == [OTHER_RULE, repo_rule(7)]
    assert [f.file_name for f, _ in bucket.ls("pgbackrest/", recursive=True)] == ["pgbackrest/backup/db/backup.info"]
    assert any("adopted" in m and "pg-backups-old" in m for m in logs)


def test_bucket_create_name_taken_by_another_account(sim: Sim, monkeypatch: pytest.MonkeyPatch) -> None:
    other = _api_on(sim.raw, *sim.raw.create_account())
    other.create_bucket("taken-name", "allPrivate")
    # Real B2 lists only the caller's buckets; the simulator lists every account's. Restore B2's behaviour.
    list_all = B2Api.list_buckets

    def list_own(self: B2Api, *args: Any, **kwargs: Any) -> list[Any]:
        own = self.account_info.get_account_id()
        return [b for b in list_all(self, *args, **kwargs) if b.bucket_dict["accountId"] == own]

    monkeypatch.setattr(B2Api, "list_buckets", list_own)

    with pytest.raises(b2.B2ProviderError, match=r"creation of bucket 'taken-name' failed: the name is taken"):
        b2._B2BucketProvider().create(_bucket_props("taken-name"))


def test_bucket_diff() -> None:
    provider = b2._B2BucketProvider()
    olds = {"bucket_id": "b1", **_bucket_props("pg-backups-1", 1.0), "__provider": "x"}

    moved = provider.diff("b1", olds, _bucket_props("pg-backups-1", 1.0, prefix="other/"))
    assert moved.changes is True
    assert moved.replaces == []

    legacy = provider.diff("b1", {"bucket_name": "pg-backups-1", "hidden_file_retention_days": 1.0},
                           _bucket_props("pg-backups-1", 1.0))
    assert legacy.changes is True

    renamed = provider.diff("b1", olds, _bucket_props("pg-backups-2", 1.0))
    assert renamed.changes is True
    assert renamed.replaces == ["bucket_name"]

    retention = provider.diff("b1", olds, _bucket_props("pg-backups-1", 30.0))
    assert retention.changes is True
    assert retention.replaces == []

    same = provider.diff("b1", olds, {**_bucket_props("pg-backups-1", 1), "__provider": "y"})
    assert same.changes is False
    assert same.replaces == []

    unknown = provider.diff("b1", olds, {**_bucket_props("pg-backups-1"), "hidden_file_retention_days": Unknown()})
    assert unknown.changes is True
    assert unknown.replaces == []


def test_bucket_update_changes_only_its_own_rule(sim: Sim) -> None:
    provider = b2._B2BucketProvider()
    created = provider.create(_bucket_props())
    sim.bucket(created.id).update(lifecycle_rules=[OTHER_RULE, *sim.bucket(created.id).lifecycle_rules])

    updated = provider.update(created.id, created.outs or {}, _bucket_props(days=14.0))

    assert updated.outs == {"bucket_id": created.id, "bucket_name": "pg-backups-1", "file_name_prefix": "pgbackrest/",
                            "hidden_file_retention_days": 14}
    bucket = sim.bucket(created.id)
    assert bucket.lifecycle_rules == [OTHER_RULE, repo_rule(14)]
    assert bucket.type_ == "allPrivate"

    provider.update(created.id, updated.outs or {}, _bucket_props(days=14.0, prefix="elsewhere/"))
    assert sim.bucket(created.id).lifecycle_rules == [OTHER_RULE, repo_rule(14, "elsewhere/")]


def test_bucket_update_from_a_bucket_wide_rule_narrows_it_to_the_prefix(sim: Sim) -> None:
    """A stack deployed before the prefix existed had one rule over the whole bucket (1 day): the update removes
    that rule and sets the repository's, leaving the bucket's other rules alone."""
    bucket = sim.admin.create_bucket("pg-backups-1", "allPrivate", lifecycle_rules=[LEGACY_RULE, OTHER_RULE])
    olds = {"bucket_id": bucket.id_, "bucket_name": "pg-backups-1", "hidden_file_retention_days": 1}

    b2._B2BucketProvider().update(bucket.id_, olds, _bucket_props())

    assert sim.bucket(bucket.id_).lifecycle_rules == [OTHER_RULE, repo_rule(30)]


def test_bucket_update_of_a_vanished_bucket_fails_clearly(sim: Sim) -> None:
    with pytest.raises(b2.B2ProviderError, match="the bucket is gone"):
        b2._B2BucketProvider().update("no-such-bucket", _bucket_props(), _bucket_props())


def test_bucket_delete_keeps_bucket_and_files(sim: Sim, logs: list[str]) -> None:
    provider = b2._B2BucketProvider()
    created = provider.create(_bucket_props())
    sim.bucket(created.id).upload_bytes(b"wal", "pgbackrest/archive/db/000000010000000000000001")

    provider.delete(created.id, created.outs or {})

    bucket = sim.bucket(created.id)
    assert [f.file_name for f, _ in bucket.ls("pgbackrest/", recursive=True)] == [
        "pgbackrest/archive/db/000000010000000000000001"
    ]
    assert any("retained" in m for m in logs)


def test_bucket_read_reports_drift_and_disappearance(sim: Sim) -> None:
    provider = b2._B2BucketProvider()
    created = provider.create(_bucket_props())
    outs = created.outs or {}

    assert provider.read(created.id, outs).outs == outs

    sim.bucket(created.id).update(lifecycle_rules=[OTHER_RULE])
    drifted = provider.read(created.id, outs)
    assert drifted.id == created.id
    assert drifted.outs is not None
    assert drifted.outs["hidden_file_retention_days"] is None
    assert provider.diff(created.id, drifted.outs, _bucket_props()).changes is True

    sim.admin.delete_bucket(sim.bucket(created.id))
    gone = provider.read(created.id, outs)
    assert not gone.id


def test_bucket_check() -> None:
    provider = b2._B2BucketProvider()
    assert provider.check({}, _bucket_props()).failures == []
    assert provider.check({}, {"bucket_name": Unknown(), "file_name_prefix": Unknown(),
                               "hidden_file_retention_days": Unknown()}).failures == []
    failures = provider.check({}, {"bucket_name": "my.bucket", "file_name_prefix": "", "hidden_file_retention_days": 0.0}
                              ).failures
    assert sorted(f.property for f in failures) == ["bucket_name", "file_name_prefix", "hidden_file_retention_days"]
    for prefix in ("", "/pgbackrest/", "pgbackrest"):
        assert [f.property for f in provider.check({}, _bucket_props(prefix=prefix)).failures] == ["file_name_prefix"]
    assert [f.property for f in provider.check({}, _bucket_props("b2-reserved")).failures] == ["bucket_name"]


# --- application key ------------------------------------------------------------------------------


def test_key_create_is_restricted_to_bucket_prefix_and_capabilities(sim: Sim) -> None:
    bucket = sim.admin.create_bucket("pg-backups-1", "allPrivate")

    result = b2._B2ApplicationKeyProvider().create(_key_props(bucket.id_))

    outs = result.outs or {}
    assert outs["application_key_id"] == result.id
    assert outs["application_key"]
    assert outs["key_name"] == "pgbackup-main"
    key = sim.admin.get_key(result.id)
    assert key is not None
    assert key.bucket_id == bucket.id_
    assert key.name_prefix == "pgbackrest/"
    assert sorted(key.capabilities) == sorted(PGBACKREST_CAPS)
    assert "listBuckets" not in key.capabilities


def test_default_capabilities_are_pgbackrest_minimum() -> None:
    args = b2.B2ApplicationKeyArgs(key_name="k", bucket_id="b")
    assert args.capabilities == PGBACKREST_CAPS
    assert args.name_prefix == ""


def test_created_key_works_only_in_its_bucket_and_prefix(sim: Sim) -> None:
    bucket = sim.admin.create_bucket("pg-backups-1", "allPrivate")
    other = sim.admin.create_bucket("someone-elses", "allPrivate")
    bucket.upload_bytes(b"info", "pgbackrest/backup/db/backup.info")
    bucket.upload_bytes(b"x", "unrelated/file")
    other.upload_bytes(b"y", "pgbackrest/backup/db/backup.info")
    outs = b2._B2ApplicationKeyProvider().create(_key_props(bucket.id_)).outs or {}

    key_api = _api_on(sim.raw, outs["application_key_id"], outs["application_key"])

    allowed = key_api.account_info.get_allowed()
    assert allowed["bucketId"] == bucket.id_
    assert allowed["namePrefix"] == "pgbackrest/"
    assert sorted(allowed["capabilities"]) == sorted(PGBACKREST_CAPS)
    # Used as pgBackRest does: by bucket, without listing buckets.
    own = key_api.BUCKET_CLASS(key_api, bucket.id_, name=bucket.name)
    assert [f.file_name for f, _ in own.ls("pgbackrest/", recursive=True)] == ["pgbackrest/backup/db/backup.info"]
    with pytest.raises(Unauthorized):
        list(own.ls("unrelated/", recursive=True))
    foreign = key_api.BUCKET_CLASS(key_api, other.id_, name=other.name)
    with pytest.raises(Unauthorized):
        list(foreign.ls("pgbackrest/", recursive=True))


def test_the_key_capabilities_hide_files_but_never_remove_a_version(sim: Sim) -> None:
    """What pgBackRest's delete by name becomes on B2 (a hide marker) works with the key's capabilities; removing
    a version for good needs deleteFiles and is refused. b2sdk's simulator checks a bucket-restricted key's bucket
    only where a call passes the bucket id (upload, hide and delete do not), so the key here has the program's
    capabilities without the bucket restriction: what is refused is refused for the capability."""
    bucket = sim.admin.create_bucket("pg-backups-1", "allPrivate")
    key = sim.admin.create_key(capabilities=list(b2.DEFAULT_KEY_CAPABILITIES), key_name="pgbackup-caps")
    key_api = _api_on(sim.raw, key.id_, key.application_key)
    own = key_api.BUCKET_CLASS(key_api, bucket.id_, name=bucket.name)
    name = "pgbackrest/archive/db/000000010000000000000001"
    uploaded = own.upload_bytes(b"wal", name)

    own.hide_file(name)

    assert [f.file_name for f, _ in own.ls("pgbackrest/", recursive=True)] == []
    assert sorted(v.action for v in bucket.list_file_versions(name)) == ["hide", "upload"]
    with pytest.raises(Unauthorized):
        key_api.delete_file_version(uploaded.id_, name)
    assert sorted(v.action for v in bucket.list_file_versions(name)) == ["hide", "upload"]
    # The same call with deleteFiles removes the version: the refusal above is the capability's.
    sim.admin.delete_file_version(uploaded.id_, name)
    assert [v.action for v in bucket.list_file_versions(name)] == ["hide"]


def test_key_check_refuses_capabilities_that_can_destroy_backups() -> None:
    provider = b2._B2ApplicationKeyProvider()
    for capability in ("deleteFiles", "writeBuckets", "writeKeys", "bypassGovernance", "deleteBuckets"):
        (failure,) = provider.check({}, _key_props("b1", capabilities=[*PGBACKREST_CAPS, capability])).failures
        assert failure.property == "capabilities"
        assert f"refused: {capability}" in failure.reason
    extra = provider.check({}, _key_props("b1", capabilities=[*PGBACKREST_CAPS, "listAllBucketNames"]))
    assert extra.failures == []


def test_key_with_empty_prefix_covers_whole_bucket(sim: Sim) -> None:
    bucket = sim.admin.create_bucket("pg-backups-1", "allPrivate")
    result = b2._B2ApplicationKeyProvider().create(_key_props(bucket.id_, name_prefix=""))
    key = sim.admin.get_key(result.id)
    assert key is not None
    assert key.name_prefix is None
    assert (result.outs or {})["name_prefix"] == ""


def test_key_delete_is_idempotent(sim: Sim, logs: list[str]) -> None:
    bucket = sim.admin.create_bucket("pg-backups-1", "allPrivate")
    provider = b2._B2ApplicationKeyProvider()
    created = provider.create(_key_props(bucket.id_))

    provider.delete(created.id, created.outs or {})
    assert sim.admin.get_key(created.id) is None
    with pytest.raises(B2Error):
        _api_on(sim.raw, created.id, (created.outs or {})["application_key"])

    provider.delete(created.id, created.outs or {})  # already gone: no error
    assert any("already deleted" in m for m in logs)


def test_key_read(sim: Sim) -> None:
    bucket = sim.admin.create_bucket("pg-backups-1", "allPrivate")
    provider = b2._B2ApplicationKeyProvider()
    created = provider.create(_key_props(bucket.id_))
    outs = created.outs or {}

    assert provider.read(created.id, outs).outs == outs
    sim.admin.delete_key_by_id(created.id)
    assert not provider.read(created.id, outs).id


def test_key_diff_replaces_on_any_change() -> None:
    provider = b2._B2ApplicationKeyProvider()
    olds = {**_key_props("b1"), "application_key_id": "k1", "application_key": "s", "__provider": "x"}

    for prop, value in [
        ("key_name", "other-name"),
        ("bucket_id", "b2"),
        ("name_prefix", "other/"),
        ("capabilities", ["listFiles", "readFiles"]),
        ("bucket_id", Unknown()),
    ]:
        result = provider.diff("k1", olds, {**_key_props("b1"), prop: value})
        assert result.changes is True, prop
        assert result.replaces == [prop], prop
        assert result.delete_before_replace is False

    reordered = provider.diff("k1", olds, _key_props("b1", capabilities=list(reversed(PGBACKREST_CAPS))))
    assert reordered.changes is False
    assert reordered.replaces == []


def test_key_check() -> None:
    provider = b2._B2ApplicationKeyProvider()
    assert provider.check({}, _key_props("b1")).failures == []
    failures = provider.check({}, _key_props("b1", key_name="bad name", name_prefix="/pgbackrest/", capabilities=[]))
    assert sorted(f.property for f in failures.failures) == ["capabilities", "key_name", "name_prefix"]


# --- credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "missing", [["B2_APPLICATION_KEY_ID"], ["B2_APPLICATION_KEY"], ["B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY"]]
)
def test_missing_credentials_fail_clearly_at_call_time(monkeypatch: pytest.MonkeyPatch, missing: list[str]) -> None:
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", "some-id")
    monkeypatch.setenv("B2_APPLICATION_KEY", "some-key")
    for name in missing:
        monkeypatch.delenv(name)
    bucket, key = b2._B2BucketProvider(), b2._B2ApplicationKeyProvider()  # constructing needs no credentials

    calls = [
        lambda: bucket.create(_bucket_props()),
        lambda: bucket.update("b1", _bucket_props(), _bucket_props(days=2.0)),
        lambda: bucket.read("b1", _bucket_props()),
        lambda: key.create(_key_props("b1")),
        lambda: key.delete("k1", _key_props("b1")),
    ]
    for call in calls:
        with pytest.raises(b2.B2CredentialsError) as raised:
            call()
        message = str(raised.value)
        assert "B2_APPLICATION_KEY_ID" in message
        assert "B2_APPLICATION_KEY " in message
        for name in missing:
            assert name in message.split("not set:")[1]
        assert "some-key" not in message


@pytest.fixture
def env_sim(monkeypatch: pytest.MonkeyPatch) -> Sim:
    """The real `_make_api` (credentials from the environment) with B2Api bound to a shared simulator."""
    admin, raw, key_id, master = _simulated_account()

    class SimulatedB2Api(B2Api):
        def __init__(self, account_info: InMemoryAccountInfo) -> None:
            super().__init__(account_info, api_config=SIM_CONFIG)
            self.session.raw_api = raw

    monkeypatch.setattr(b2, "B2Api", SimulatedB2Api)
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", key_id)
    monkeypatch.setenv("B2_APPLICATION_KEY", master)
    return Sim(raw, key_id, master, admin)


def test_credentials_come_from_environment(env_sim: Sim) -> None:
    created = b2._B2BucketProvider().create(_bucket_props())
    assert env_sim.bucket(created.id).name == "pg-backups-1"


def test_bad_credentials_error_names_operation_without_secret(
    env_sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("B2_APPLICATION_KEY", "wrong-secret-value")
    with pytest.raises(b2.B2ProviderError, match="authorization") as raised:
        b2._B2BucketProvider().create(_bucket_props())
    assert "wrong-secret-value" not in str(raised.value)


def test_providers_pickle_without_credentials(env_sim: Sim) -> None:
    bucket, key = b2._B2BucketProvider(), b2._B2ApplicationKeyProvider()
    created = bucket.create(_bucket_props())
    key_outs = key.create(_key_props(created.id)).outs or {}
    bucket.read(created.id, created.outs or {})

    secrets = [env_sim.master.encode(), key_outs["application_key"].encode()]
    for provider in (bucket, key):
        assert vars(provider) == {}
        # What Pulumi stores in the state (dill, base64), and a plain pickle.
        state_blob = base64.b64decode(serialize_provider(provider))
        # By reference: the provider host must import components.b2, so keep module and class names stable.
        assert b"components.b2" in state_blob
        for blob in (state_blob, pickle.dumps(provider)):
            for secret in secrets:
                assert secret not in blob
            assert b"B2Api" not in blob
            assert b"InMemoryAccountInfo" not in blob


# --- resources ------------------------------------------------------------------------------------


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        if args.typ.endswith(":Bucket"):
            outputs["bucket_id"] = "bucket-id-1"
        else:
            outputs.update(application_key_id="key-id-1", application_key="the-secret")
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


class _EngineLikeMonitor(pulumi_mocks.MockMonitor):
    """Records each registration's additionalSecretOutputs and applies them as the engine does."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.secret_outputs: dict[str, list[str]] = {}
        self.types: dict[str, str] = {}

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.secret_outputs[request.name] = list(request.additionalSecretOutputs)
            self.types[request.name] = request.type
            for prop in request.additionalSecretOutputs:
                if prop in response.object:
                    response.object[prop] = rpc.wrap_rpc_secret(response.object[prop])
        return response


def _secret_flag(output: pulumi.Output[Any]) -> pulumi.Output[bool]:
    # Input[U] cannot infer U from a coroutine, hence the ignore.
    return pulumi.Output.from_input(output.is_secret())  # type: ignore[arg-type]


@pytest.fixture
def monitor() -> Any:
    mon = _EngineLikeMonitor(_Mocks())
    pulumi.runtime.set_mocks(_Mocks(), preview=False, monitor=mon)
    yield mon
    pulumi_settings.reset_options()


def test_resources_mark_application_key_secret(monitor: _EngineLikeMonitor) -> None:
    @pulumi.runtime.test
    def program() -> Any:
        bucket = b2.B2Bucket("repo-bucket", b2.B2BucketArgs(bucket_name="pg-backups-1", file_name_prefix="pgbackrest/"))
        key = b2.B2ApplicationKey(
            "repo-key",
            b2.B2ApplicationKeyArgs(key_name="pgbackup-main", bucket_id=bucket.bucket_id, name_prefix="pgbackrest/"),
            opts=pulumi.ResourceOptions(additional_secret_outputs=["key_name"]),
        )

        def check(values: list[Any]) -> None:
            key_secret, id_secret, bucket_id, days = values
            assert key_secret is True
            assert id_secret is False
            assert bucket_id == "bucket-id-1"
            assert days == 30

        return pulumi.Output.all(
            _secret_flag(key.application_key),
            _secret_flag(key.application_key_id),
            bucket.bucket_id,
            bucket.hidden_file_retention_days,
        ).apply(check)

    program()
    assert sorted(monitor.secret_outputs["repo-key"]) == ["application_key", "key_name"]
    assert monitor.secret_outputs["repo-bucket"] == []
    assert monitor.types == {
        "repo-bucket": "pulumi-python:dynamic/b2:Bucket",
        "repo-key": "pulumi-python:dynamic/b2:ApplicationKey",
    }


# --- file lock (objectLockDays) -------------------------------------------------------------------


def test_bucket_create_with_file_lock_days_turns_file_lock_on_in_compliance_mode(sim: Sim, logs: list[str]) -> None:
    result = b2._B2BucketProvider().create({**_bucket_props(), "file_lock_days": 14.0})

    bucket = sim.bucket(result.id)
    assert bucket.is_file_lock_enabled is True
    assert bucket.default_retention.as_dict() == {"mode": "compliance", "period": {"duration": 14, "unit": "days"}}
    assert (result.outs or {})["file_lock_days"] == 14
    assert any("file lock: 14 days, compliance" in m for m in logs)


def test_bucket_without_file_lock_days_is_created_as_before(sim: Sim) -> None:
    result = b2._B2BucketProvider().create(_bucket_props())
    assert not sim.bucket(result.id).is_file_lock_enabled
    assert "file_lock_days" not in (result.outs or {})


def test_an_adopted_bucket_gets_file_lock_and_keeps_its_files(sim: Sim) -> None:
    existing = sim.admin.create_bucket("pg-backups-old", "allPrivate")
    existing.upload_bytes(b"base backup", "pgbackrest/backup/db/backup.info")

    b2._B2BucketProvider().create({**_bucket_props("pg-backups-old"), "file_lock_days": 7.0})

    bucket = sim.bucket(existing.id_)
    assert bucket.is_file_lock_enabled is True
    assert bucket.default_retention.as_dict()["period"] == {"duration": 7, "unit": "days"}
    assert [f.file_name for f, _ in bucket.ls("pgbackrest/", recursive=True)] == ["pgbackrest/backup/db/backup.info"]


def test_bucket_diff_and_update_of_file_lock_days(sim: Sim, logs: list[str]) -> None:
    provider = b2._B2BucketProvider()
    created = provider.create(_bucket_props())
    outs = created.outs or {}
    assert provider.diff(created.id, outs, _bucket_props()).changes is False  # a stack without a lock
    locked = {**_bucket_props(), "file_lock_days": 10.0}
    assert provider.diff(created.id, outs, locked).changes is True

    updated = provider.update(created.id, outs, locked)

    assert sim.bucket(created.id).default_retention.as_dict()["period"] == {"duration": 10, "unit": "days"}
    provider.update(created.id, updated.outs or {}, _bucket_props())  # back to 0: the lock stays, said so
    assert sim.bucket(created.id).is_file_lock_enabled is True
    assert sim.bucket(created.id).default_retention.as_dict()["period"] == {"duration": 10, "unit": "days"}
    assert any("pgbackup never lifts a lock" in m for m in logs)


@pytest.mark.parametrize("capability", ["writeFileRetentions", "writeFileLegalHolds", "writeBucketRetentions",
                                        "bypassGovernance"])
def test_key_check_refuses_every_capability_that_changes_a_lock(capability: str) -> None:
    (failure,) = b2._B2ApplicationKeyProvider().check(
        {}, _key_props("b1", capabilities=[*PGBACKREST_CAPS, capability])).failures
    assert failure.property == "capabilities"
    assert f"refused: {capability}" in failure.reason


def test_a_locked_version_cannot_be_removed_even_by_the_master_key(sim: Sim) -> None:
    """A COMPLIANCE-locked version refuses b2_delete_file_version from every key, the account's master key
    included. b2sdk's simulator does not apply a bucket's default retention to an upload: the upload carries the
    retention B2 gives it from the default."""
    result = b2._B2BucketProvider().create({**_bucket_props(), "file_lock_days": 14.0})
    bucket = sim.bucket(result.id)
    name = "pgbackrest/archive/db/000000010000000000000001"
    until = int((time.time() + 14 * 86400) * 1000)
    uploaded = bucket.upload_bytes(b"wal", name, file_retention=FileRetentionSetting(RetentionMode.COMPLIANCE, until))
    with pytest.raises(AccessDenied):
        sim.admin.delete_file_version(uploaded.id_, name)
    assert [v.action for v in bucket.list_file_versions(name)] == ["upload"]
    unlocked = bucket.upload_bytes(b"wal", f"{name}.partial")  # the refusal above is the lock's
    sim.admin.delete_file_version(unlocked.id_, f"{name}.partial")
