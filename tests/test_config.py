"""The configuration contract: defaults, derivations, and one clear error per mistake, naming the key."""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any

import pulumi
import pytest
import yaml

from components.config import (
    CIPHER_PASS_MIN,
    ConfigError,
    check_known_keys,
    is_secret_key,
    parse_settings,
    stack_keys,
)
from tests.harness import ROOT, SENTINELS, Run, host_key, run_program, stack_config


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
    storage, cluster, schedule, retention, pgbackrest, monitoring, drill = parse()
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
    assert not monitoring.consul  # no Consul service unless asked
    assert (drill.verify_schedule, drill.schedule) == ("*-*-* 05:00:00", "Wed *-*-* 05:30:00")
    assert (drill.path, drill.node, drill.amcheck, drill.rto_budget_seconds) == (
        "/var/lib/postgresql/pgbackup-drill", None, False, 1800)


@pytest.mark.parametrize(("drill", "message"), [
    ({"node": "pg9"}, r"pgbackup:drill.node: 'pg9' is not a node of pgbackup:cluster.nodes \(expected one of "),
    ({"path": "/var/lib/postgresql/15/main/x"}, r"pgbackup:drill.path: .* overlaps the data directory"),
    ({"path": "/var/lib/postgresql"}, r"pgbackup:drill.path: .* overlaps the data directory"),
    ({"path": "/drill"}, r"pgbackup:drill.path: expected a directory at least two levels deep"),
    ({"schedule": "weekly-ish"}, r"pgbackup:drill.schedule: expected a systemd calendar expression"),
    ({"rtoBudgetSeconds": 10}, r"pgbackup:drill.rtoBudgetSeconds: "),
])
def test_drill_mistakes_name_the_key(drill: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(drill=drill)


def test_drill_node_pins_a_node_of_the_cluster() -> None:
    name = stack_config()["cluster"]["nodes"][1]["name"]
    assert parse(drill={"node": name})[6].node == name


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
    ("consul as text", {"monitoring": {"consul": "yes"}}, "pgbackup:monitoring.consul: Input should be a valid boolean"),
    ("monitoring typo", {"monitoring": {"consull": True}}, "pgbackup:monitoring.consull: unknown key"),
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


# ---- SSH host keys (issue 8, item 2) ---------------------------------------------------------------------

def test_a_node_without_host_key_is_refused_saying_how_to_pin_it() -> None:
    text = error_of(with_nodes([{"name": "a", "host": "h1"}, {"name": "b", "host": "h2", "hostKey": None},
                                {"name": "c", "host": "h3", "hostKey": None}]))
    lines = text.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["pgbackup:cluster.nodes[1].hostKey",
                                                       "pgbackup:cluster.nodes[2].hostKey"]
    assert "`ssh-keyscan -t ed25519 h2`" in lines[0]
    assert '"ssh-ed25519 AAAA..."' in lines[0]
    assert "pgbackup:cluster.insecureSkipHostKeyCheck: true" in lines[0]


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_the_shipped_stacks_fail_closed_until_their_keys_are_pinned(stack: str) -> None:
    document = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    config = {k.removeprefix("pgbackup:"): v for k, v in document["config"].items()}
    text = error_of(config)
    assert [line.split(": ")[0] for line in text.splitlines()] == [
        f"pgbackup:cluster.nodes[{i}].hostKey" for i in range(len(config["cluster"]["nodes"]))]


@pytest.mark.parametrize(("key", "why"), [
    ("ssh-ed25519 AAAA", "not a key"),
    (host_key("a").replace("ssh-ed25519", "ssh-rsa"), "type differs from the key's own"),
    ("ssh-dss " + host_key("a").split()[1], "DSA"),
    (host_key("a") + "\n", "trailing newline"),
])
def test_a_host_key_must_be_an_openssh_public_key(key: str, why: str) -> None:
    text = error_of(with_nodes([{"name": "a", "host": "h1", "hostKey": key}, {"name": "b", "host": "h2"}]))
    assert text.startswith("pgbackup:cluster.nodes[0].hostKey: "), why


def test_the_opt_out_warns_on_every_run_naming_the_unchecked_nodes(caplog: pytest.LogCaptureFixture) -> None:
    config = stack_config()
    nodes = config["cluster"]["nodes"]
    del nodes[1]["hostKey"], nodes[2]["hostKey"]
    config["cluster"]["insecureSkipHostKeyCheck"] = True
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            run = run_program(config)
        warnings = [r.getMessage() for r in caplog.records if "insecureSkipHostKeyCheck" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "host keys of pg2, pg3 are NOT checked" in warnings[0]
        assert "pg1" not in warnings[0]
    assert run.named("cluster-pg1-install").inputs["connection"]["hostKey"] == host_key("pg1")
    assert not run.named("cluster-pg2-install").inputs["connection"].get("hostKey")


def test_without_the_opt_out_nothing_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        run_program(stack_config())
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("pgbackup:")] == []


# ---- Limits, normalised hosts, the B2 key name (issue 8, item 3) ------------------------------------------

@pytest.mark.parametrize(("first", "second"), [
    ("db1.example.net", "DB1.Example.NET."), ("2001:db8::11", "2001:DB8:0::0011"), ("10.0.0.1", "10.0.0.1")])
def test_hosts_are_compared_normalised(first: str, second: str) -> None:
    text = error_of(with_nodes([{"name": "a", "host": first}, {"name": "b", "host": second}]))
    assert text.startswith("pgbackup:cluster.nodes[1].host: ")
    assert "is already used by nodes[0]" in text


@pytest.mark.parametrize("host", ["fe80::1%eth0", "fe80::1%25eth0", "010.1.1.1", "host..example"])
def test_zone_ids_and_look_alike_hosts_are_refused(host: str) -> None:
    text = error_of(with_nodes([{"name": "a", "host": host}, {"name": "b", "host": "h2"}]))
    assert text.startswith("pgbackup:cluster.nodes[0].host: "), text


def test_ipv6_endpoint_is_refused_with_a_clear_error() -> None:
    assert "IPv6 address is not accepted as the endpoint" in error_of(with_storage(endpoint="[2001:db8::1]:9000"))


def test_at_most_256_nodes_as_pgbackrest_numbers_them() -> None:
    assert len(parse_settings(with_nodes([{"name": f"n{i}", "host": f"h{i}"} for i in range(256)]))[1].nodes) == 256
    text = error_of(with_nodes([{"name": f"n{i}", "host": f"h{i}"} for i in range(257)]))
    assert text == "pgbackup:cluster.nodes: at most 256 nodes, got 257 (pgBackRest numbers a node's PostgreSQL " \
                   "hosts pg1..pg256)"


@pytest.mark.parametrize(("stanza", "stack"), [("main_db", "prod"), ("main.db", "prod"), ("a" * 64, "s" * 30)])
def test_a_stanza_the_b2_key_name_cannot_take_is_reported_under_the_stanza(stanza: str, stack: str) -> None:
    config = stack_config(storage={"provider": "b2", "region": "us-west-004", "bucket": "bucket-1"})
    config["cluster"]["stanza"] = stanza
    with pytest.raises(ConfigError, match=r"^pgbackup:cluster\.stanza: .* cannot name the B2 application key"):
        parse_settings(config, stack=stack)
    config["storage"] = stack_config()["storage"]  # other providers take it
    parse_settings(config, stack=stack)


def test_the_b2_key_name_is_checked_for_the_running_stack() -> None:
    config = stack_config(storage={"provider": "b2", "region": "us-west-004", "bucket": "bucket-1"})
    config["cluster"]["stanza"] = "main_db"
    with pytest.raises(Exception, match=r"pgbackup:cluster\.stanza: 'main_db' cannot name the B2 application key "
                                        r"'pgbackup-test-main_db'"):
        run_program(config)


# ---- Unknown keys and secrets (issue 8, item 4) ----------------------------------------------------------

def test_an_unknown_top_level_key_is_refused_listing_the_known_ones() -> None:
    run = Run()
    with pytest.raises(Exception, match=r"pgbackup:retension: unknown key \(known keys: storage, cluster, schedule, "
                                        r"retention, pgbackrest, monitoring, drill, offsite, sshPrivateKey, cipherPass, "
                                        r"accessKeyId, secretAccessKey, offsiteAccessKeyId, offsiteSecretAccessKey\)"):
        run_program(stack_config(retension={"full": 9}), run=run)
    assert run.resources == []


def test_the_stack_keys_are_read_where_the_language_host_puts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under `pulumi up` the language host passes the stack's configuration in PULUMI_CONFIG and its secret
    # keys in PULUMI_CONFIG_SECRET_KEYS; the mocks set the runtime's map instead (both are read).
    pulumi.runtime.set_all_config({}, [])
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({"pgbackup:retension": "{}", "pgbackup:cipherPass": "x",
                                                    "aws:region": "eu"}))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps(["pgbackup:cipherPass"]))
    assert stack_keys() == ["cipherPass", "retension"]
    assert is_secret_key("cipherPass")
    assert not is_secret_key("retension")
    with pytest.raises(ConfigError, match="pgbackup:retension: unknown key"):
        check_known_keys(stack_keys())


GOOD_PASS = "K9vLw2hXq7TzR4mN8bYc3JfD6sGa1PeU5kWx0VnQ"


@pytest.mark.parametrize(("case", "secrets", "message"), [
    ("wrapped over two lines", {"cipherPass": GOOD_PASS[:20] + "\n" + GOOD_PASS[20:]},
     "pgbackup:cipherPass: must not contain control characters or line breaks: found U+000A at position 20"),
    ("a space", {"cipherPass": GOOD_PASS[:20] + " " + GOOD_PASS[20:]}, "pgbackup:cipherPass: must not contain whitespace"),
    ("NUL in the key id", {"accessKeyId": "AKIA\x00X", "secretAccessKey": "s"},
     "pgbackup:accessKeyId: must not contain control characters"),
    ("newline after the secret key", {"accessKeyId": "AKIAX", "secretAccessKey": "abc\n"},
     "pgbackup:secretAccessKey: must not contain control characters"),
])
def test_secrets_with_control_characters_are_refused_without_showing_them(case: str, secrets: dict[str, str],
                                                                          message: str) -> None:
    config = stack_config()
    if "accessKeyId" in secrets:
        config["storage"] = {**config["storage"], "create": False}
    with pytest.raises(Exception, match=re.escape(message)) as info:
        run_program(config, secrets={"sshPrivateKey": SENTINELS["sshPrivateKey"], **secrets})
    assert all(value not in str(info.value) for value in secrets.values() if len(value) > 1)


def test_a_cipher_pass_set_without_secret_is_refused() -> None:
    with pytest.raises(Exception, match=r"pgbackup:cipherPass: must be set as a secret: pulumi config set --secret"):
        run_program(stack_config(cipherPass=GOOD_PASS), secrets={"sshPrivateKey": SENTINELS["sshPrivateKey"]})


def cipher_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cipherPass" in r.getMessage()]


@pytest.mark.parametrize("short", ["short-pass", GOOD_PASS[:31], ""])
def test_a_short_or_empty_cipher_pass_is_refused_before_anything_is_declared(short: str) -> None:
    """It was only warned about (an empty one too): the repository was created encrypted with it, for good."""
    run = Run()
    expected = (r"pgbackup:cipherPass: empty: expected a passphrase of 32 characters or more" if not short else
                r"pgbackup:cipherPass: shorter than 32 characters: a new repository needs 32 or more .*Only for a "
                r"repository that already exists encrypted with this passphrase \(it cannot change\), set "
                r"pgbackup:pgbackrest\.legacyShortCipherPass: true")
    with pytest.raises(Exception, match=expected) as info:
        run_program(stack_config(), secrets={"sshPrivateKey": SENTINELS["sshPrivateKey"], "cipherPass": short},
                    run=run)
    assert run.resources == []
    assert not short or short not in str(info.value)
    # The opt-out for an existing repository never takes an empty one.
    if not short:
        with pytest.raises(Exception, match="pgbackup:cipherPass: empty"):
            run_program(stack_config(pgbackrest={"legacyShortCipherPass": True}),
                        secrets={"sshPrivateKey": SENTINELS["sshPrivateKey"], "cipherPass": short})


def test_32_characters_are_enough_and_say_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        run_program(stack_config(), secrets={"sshPrivateKey": SENTINELS["sshPrivateKey"],
                                             "cipherPass": GOOD_PASS[:32]})
    assert cipher_warnings(caplog) == []


def test_an_existing_repositorys_short_cipher_pass_is_accepted_only_when_the_stack_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    legacy = stack_config(pgbackrest={"legacyShortCipherPass": True})
    with caplog.at_level(logging.WARNING):
        run_program(legacy, secrets={"sshPrivateKey": SENTINELS["sshPrivateKey"], "cipherPass": "short-pass"})
    assert cipher_warnings(caplog) == [
        "pgbackup:cipherPass: shorter than 32 characters, accepted by pgbackup:pgbackrest.legacyShortCipherPass for a "
        "repository that exists with it; move to a new repository (a new storage.repoPath) with a passphrase of 64 "
        "(`openssl rand -base64 48`)"]
    assert all("short-pass" not in message for message in cipher_warnings(caplog))
    # The setting with a long passphrase, or a generated one, is a leftover: refused.
    for secrets, given in (({"cipherPass": GOOD_PASS}, "has 32 characters or more"), ({}, "is generated")):
        with pytest.raises(Exception, match=re.escape(
                f"pgbackup:pgbackrest.legacyShortCipherPass: only for a pgbackup:cipherPass under 32 characters, and "
                f"this stack's {given}: remove the setting")):
            run_program(legacy, secrets={"sshPrivateKey": SENTINELS["sshPrivateKey"], **secrets})


def test_the_generated_cipher_pass_is_long_enough() -> None:
    run = run_program(stack_config(), secrets={"sshPrivateKey": SENTINELS["sshPrivateKey"]})
    generated = run.named("cluster-cipher-pass")
    assert generated.inputs["length"] >= CIPHER_PASS_MIN
    assert generated.inputs["special"] is False  # no character pgbackrest.conf or a shell would read otherwise


@pytest.mark.parametrize("stack", ["dev", "prod", "lab"])
def test_the_projects_stacks_pass_the_cipher_pass_rule(stack: str) -> None:
    """None sets cipherPass (a generated one is used) nor the opt-out: the rule leaves them valid."""
    config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    assert "pgbackup:cipherPass" not in config
    pgbackrest = config.get("pgbackup:pgbackrest") or {}
    assert "legacyShortCipherPass" not in pgbackrest


def tls_warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "verifyTls" in r.getMessage()]


def test_verify_tls_false_is_warned_about_on_every_run_naming_the_key_and_the_endpoint(
        caplog: pytest.LogCaptureFixture) -> None:
    storage = {**stack_config()["storage"], "verifyTls": False}
    offsite = {"provider": "minio", "endpoint": "minio.offsite.example:9000", "bucket": "pg-monthly",
               "verifyTls": False}
    for config in (stack_config(storage=storage), stack_config(storage=storage)):  # two runs, two warnings
        with caplog.at_level(logging.WARNING):
            run_program(config)
    expected = ("pgbackup:storage.verifyTls is false: the TLS certificate of s3.example.net (bucket pg-backups, "
                "/pgbackrest) is NOT checked, by the program nor by pgBackRest on the nodes: whoever answers there "
                "receives the provider's admin key (when the program creates the bucket and key) and the "
                "repository's key. Give the endpoint's CA in storage.caCert instead")
    assert tls_warnings_of(caplog) == [expected, expected]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_program(stack_config(offsite=offsite, retention={"full": 4, "monthly": 12}))
    assert [message.split(" is NOT")[0] for message in tls_warnings_of(caplog)] == [
        "pgbackup:offsite.verifyTls is false: the TLS certificate of minio.offsite.example:9000 (bucket pg-monthly, "
        "/pgbackrest)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_program(stack_config())
    assert tls_warnings_of(caplog) == []


def test_the_operator_command_warns_about_verify_tls_false(capsys: pytest.CaptureFixture[str]) -> None:
    from pgbackup_cli.cluster import Cluster
    from pgbackup_cli.stack import Stack

    storage, cluster, schedule, retention, pgbackrest, _monitoring, drill = parse_settings(
        stack_config(storage={**stack_config()["storage"], "verifyTls": False}))
    Cluster(Stack("test", storage, cluster, schedule, retention, pgbackrest, drill), None)
    assert "pgbackup: warning: pgbackup:storage.verifyTls is false: the TLS certificate of s3.example.net" in \
        capsys.readouterr().err
    Cluster(Stack("test", *parse_settings(stack_config())[:5], parse_settings(stack_config())[6]), None)
    assert "verifyTls" not in capsys.readouterr().err


@pytest.mark.parametrize("pem", [
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",  # the marker, no certificate
    "-----BEGIN CERTIFICATE-----\n" + "A" * 64 + "\n-----END CERTIFICATE-----\n",
])
def test_ca_cert_must_parse_as_x509(pem: str) -> None:
    assert error_of(with_storage(caCert=pem)).startswith("pgbackup:storage.caCert: expected a PEM certificate")


def test_ca_cert_takes_a_bundle() -> None:
    bundle = (ROOT / "tests" / "data" / "storage-ca.pem").read_text() * 2
    assert parse_settings(with_storage(caCert=bundle))[0].ca_cert == bundle
