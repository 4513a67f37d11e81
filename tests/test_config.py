"""The configuration contract: defaults, derivations, and one clear error per mistake, naming the key."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from components.config import ConfigError, parse_settings
from tests.harness import SENTINELS, Run, host_key, run_program, stack_config


def parse(**overrides: Any) -> Any:
    return parse_settings(stack_config(**overrides))


def error_of(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(config)
    return str(info.value)


def with_storage(**fields: Any) -> dict[str, Any]:
    config = stack_config()
    config["storage"] = {k: v for k, v in {**config["storage"], **fields}.items() if v is not None}
    return config


def with_nodes(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The nodes, each with a pinned host key unless it names one (or None: no hostKey)."""
    config = stack_config()
    pinned = [{k: v for k, v in {"hostKey": host_key(n.get("name", "x")), **n}.items() if v is not None}
              for n in nodes]
    config["cluster"] = {**config["cluster"], "nodes": pinned}
    return config


def test_defaults() -> None:
    storage, cluster, schedule, retention, pgbackrest = parse()
    assert storage.repo_path == "/pgbackrest"
    assert storage.uri_style == "path"
    assert storage.verify_tls
    assert storage.create
    assert storage.endpoint_port == 443
    assert cluster.pg_data == "/var/lib/postgresql/15/main"
    assert cluster.pg_port == 5432
    assert cluster.patroni_config == "/etc/patroni/patroni.yml"
    assert cluster.patroni_api_port == 8008
    assert [(n.user, n.port) for n in cluster.nodes] == [("root", 22)] * 3
    assert schedule.full == "Sun *-*-* 02:00:00"
    assert schedule.incremental == "Mon..Sat *-*-* 02:00:00"
    assert retention.full == 4
    assert retention.full_type == "count"
    assert retention.monthly == 0  # no second repository unless asked
    assert schedule.monthly == "Sun *-*-01..07 04:00:00"
    assert (pgbackrest.process_max, pgbackrest.compress_type, pgbackrest.compress_level) == (4, "zst", 3)
    assert pgbackrest.archive_async
    assert pgbackrest.backup_standby
    assert not pgbackrest.start_fast
    assert pgbackrest.archive_push_queue_max == "4GiB"
    assert pgbackrest.version is None


def test_pg_data_follows_pg_version() -> None:
    cluster = stack_config()["cluster"]
    del cluster["pgVersion"]
    assert parse(cluster=cluster)[1].pg_data == "/var/lib/postgresql/17/main"


@pytest.mark.parametrize(
    ("storage", "endpoint", "uri_style"),
    [
        ({"provider": "b2", "region": "us-west-004", "bucket": "bucket-1"}, "s3.us-west-004.backblazeb2.com", "host"),
        ({"provider": "wasabi", "region": "eu-central-2", "bucket": "bucket-1"}, "s3.eu-central-2.wasabisys.com", "host"),
        ({"provider": "minio", "endpoint": "https://minio.lan:9000", "bucket": "bucket-1"}, "minio.lan:9000", "path"),
        ({"provider": "s3", "endpoint": "s3.eu.example", "region": "eu", "bucket": "bucket-1", "uriStyle": "host"},
         "s3.eu.example", "host"),
    ],
)
def test_endpoint_and_uri_style_derived_per_provider(storage: dict[str, Any], endpoint: str, uri_style: str) -> None:
    parsed = parse(storage=storage)[0]
    assert (parsed.endpoint, parsed.uri_style) == (endpoint, uri_style)


BAD_CASES = [
    ("storage missing", {"storage": None}, "pgbackup:storage: required"),
    ("storage not an object", {"storage": "b2"}, "pgbackup:storage: expected an object"),
    ("unknown provider", with_storage(provider="gcs"), "pgbackup:storage.provider: Input should be 'b2'"),
    ("endpoint missing for s3", with_storage(endpoint=None), "pgbackup:storage.endpoint: required for provider s3"),
    ("endpoint missing for minio", with_storage(provider="minio", endpoint=None),
     "pgbackup:storage.endpoint: required for provider minio"),
    ("region missing for b2", {"storage": {"provider": "b2", "bucket": "bucket-1"}},
     "pgbackup:storage.region: required for provider b2"),
    ("plain http endpoint", with_storage(endpoint="http://minio:9000"), "pgbackup:storage.endpoint: pgBackRest reaches S3 over HTTPS only"),
    ("bad endpoint port", with_storage(endpoint="minio:99999"), "pgbackup:storage.endpoint: expected host[:port]"),
    ("bad bucket", with_storage(bucket="Bad_Bucket"), "pgbackup:storage.bucket: expected 3-63 lower-case"),
    ("b2 bucket name", {"storage": {"provider": "b2", "region": "us-west-004", "bucket": "my.bkt"}},
     "pgbackup:storage.bucket: B2 takes 6-63 lower-case letters"),
    ("bucket root as repo", with_storage(repoPath="/"), "pgbackup:storage.repoPath: expected a sub-path"),
    ("relative repo path", with_storage(repoPath="backups"), "pgbackup:storage.repoPath: expected an absolute path"),
    ("bad uri style", with_storage(uriStyle="virtual"), "pgbackup:storage.uriStyle: Input should be 'host' or 'path'"),
    ("ca not PEM", with_storage(caCert="hello"), "pgbackup:storage.caCert: expected a PEM certificate"),
    ("verifyTls a string", with_storage(verifyTls="yes"), "pgbackup:storage.verifyTls: Input should be a valid boolean"),
    ("unknown storage key", with_storage(bukket="x"), "pgbackup:storage.bukket: unknown key"),
    ("snake_case key", with_storage(repo_path="/x"), "pgbackup:storage.repo_path: unknown key"),
    ("cluster missing", {"cluster": None}, "pgbackup:cluster: required"),
    ("no nodes", with_nodes([]), "pgbackup:cluster.nodes: List should have at least 1 item"),
    ("duplicate node name", with_nodes([{"name": "a", "host": "h1"}, {"name": "a", "host": "h2"}]),
     "pgbackup:cluster.nodes[1].name: 'a' is already used by nodes[0]"),
    ("duplicate node host", with_nodes([{"name": "a", "host": "h1"}, {"name": "b", "host": "h1"}]),
     "pgbackup:cluster.nodes[1].host: 'h1' is already used by nodes[0]"),
    ("node without host", with_nodes([{"name": "a"}, {"name": "b", "host": "h"}]),
     "pgbackup:cluster.nodes[0].host: required"),
    ("bad node name", with_nodes([{"name": "DB_1", "host": "h1"}, {"name": "b", "host": "h2"}]),
     "pgbackup:cluster.nodes[0].name: expected lower-case letters"),
    ("bad node host", with_nodes([{"name": "a", "host": "bad host"}, {"name": "b", "host": "h2"}]),
     "pgbackup:cluster.nodes[0].host: expected a DNS name or an IP address"),
    ("bad ssh port", with_nodes([{"name": "a", "host": "h1", "port": 0}, {"name": "b", "host": "h2"}]),
     "pgbackup:cluster.nodes[0].port: Input should be greater than or equal to 1"),
    ("port as string", with_nodes([{"name": "a", "host": "h1", "port": "22"}, {"name": "b", "host": "h2"}]),
     "pgbackup:cluster.nodes[0].port: Input should be a valid integer"),
    ("bad host key", with_nodes([{"name": "a", "host": "h1", "hostKey": "AAAA"}, {"name": "b", "host": "h2"}]),
     "pgbackup:cluster.nodes[0].hostKey: expected an OpenSSH public host key"),
    ("bad stanza", {"cluster": {**stack_config()["cluster"], "stanza": "my stanza"}}, "pgbackup:cluster.stanza: expected"),
    ("bad calendar", {"schedule": {"full": "Sun *-*-* 25:00"}},
     "pgbackup:schedule.full: expected a systemd calendar expression (systemd.time(7)): hour 25 is outside 0..23"),
    ("two calendars in one", {"schedule": {"incremental": "daily Mon..Sat 02:00"}},
     "pgbackup:schedule.incremental: expected a systemd calendar expression"),
    ("retention zero", {"retention": {"full": 0}}, "pgbackup:retention.full: Input should be greater than or equal to 1"),
    ("monthly negative", {"retention": {"monthly": -1}},
     "pgbackup:retention.monthly: Input should be greater than or equal to 0"),
    ("monthly as text", {"retention": {"monthly": "12"}}, "pgbackup:retention.monthly: Input should be a valid integer"),
    ("monthly calendar", {"schedule": {"monthly": "first sunday"}},
     "pgbackup:schedule.monthly: expected a systemd calendar expression"),
    ("retention archive type", {"retention": {"archiveType": "days"}}, "pgbackup:retention.archiveType: unknown key"),
    ("compress type", {"pgbackrest": {"compressType": "xz"}}, "pgbackup:pgbackrest.compressType: Input should be"),
    ("compress level", {"pgbackrest": {"compressType": "gz", "compressLevel": 12}},
     "pgbackup:pgbackrest.compressLevel: gz takes 0..9, got 12"),
    ("queue size", {"pgbackrest": {"archivePushQueueMax": "4 gigs"}},
     "pgbackup:pgbackrest.archivePushQueueMax: expected a size such as 4GiB"),
    ("version pin", {"pgbackrest": {"version": "latest; rm -rf /"}}, "pgbackup:pgbackrest.version: expected a Debian version"),
    ("standby with one node", {**with_nodes([{"name": "a", "host": "h1"}])},
     "pgbackup:pgbackrest.backupStandby: needs at least two nodes"),
]


@pytest.mark.parametrize(("case", "config", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_configuration_gives_one_clear_error(case: str, config: dict[str, Any], message: str) -> None:
    full = stack_config()
    full.update(copy.deepcopy(config))
    full = {k: v for k, v in full.items() if v is not None}
    text = error_of(full)
    assert message in text, f"{case}: {text!r}"
    assert len(text.splitlines()) == 1, text


def test_single_node_without_standby_backups_is_valid() -> None:
    config = with_nodes([{"name": "a", "host": "h1"}])
    config["pgbackrest"] = {"backupStandby": False}
    assert parse_settings(config)[1].nodes[0].name == "a"


def test_bad_configuration_declares_no_resource() -> None:
    config = stack_config(schedule={"full": "every sunday"})
    run = Run()
    with pytest.raises(Exception, match=r"pgbackup:schedule\.full"):
        run_program(config, run=run)
    assert run.resources == []


def test_missing_ssh_key_is_named() -> None:
    with pytest.raises(Exception, match="pgbackup:sshPrivateKey: required"):
        run_program(stack_config(), secrets={"cipherPass": SENTINELS["cipherPass"]})


def test_existing_bucket_needs_both_key_secrets() -> None:
    config = stack_config(storage={**stack_config()["storage"], "create": False})
    with pytest.raises(Exception, match="pgbackup:accessKeyId / pgbackup:secretAccessKey: required"):
        run_program(config, secrets={"sshPrivateKey": SENTINELS["sshPrivateKey"],
                                     "accessKeyId": SENTINELS["accessKeyId"]})
