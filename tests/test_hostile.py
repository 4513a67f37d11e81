"""Hostile values (issue 8, item 3): the configuration refuses each, naming the key; what got past it
anyway cannot reach a unit, pgbackrest.conf, the Patroni YAML, the alert rules or the metrics script as
anything but its own value; legal but unusual values reach the files as the tools read them."""

from __future__ import annotations

import ast
import copy
import re
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from components.config import ConfigError, Settings, parse_settings
from components.context import (
    BackupProgramContext,
    ConfigContext,
    RepositorySecretValues,
    UnitContext,
    extend,
    primary_url,
)
from components.context import node_context as template_context
from components.drill import drill_files
from components.layout import FULL, METRICS_CALENDAR, PATHS
from components.monitoring import alert_rules, check_script
from components.plan import dynamic_config
from components.proofs import verify_context
from components.render import TEMPLATES, RenderError, render, render_values
from components.text import unsafe_character
from tests.harness import node_config, node_files, run_program, stack_config
from tests.test_rendered import option_lines, pgbackrest_judge, verify_units

CA = (Path(__file__).parent / "data" / "storage-ca.pem").read_text()

# What an attacker (or a careless paste) puts into a value: each is appended to (or replaces) a valid one.
HOSTILE: dict[str, Callable[[str], str]] = {
    "newline + unit line": lambda v: v + "\nExecStartPre=+/bin/sh -c id",
    "newline + ini option": lambda v: v + "\nrepo1-path=/elsewhere",
    "trailing newline": lambda v: v + "\n",
    "carriage return": lambda v: v + "\rX=1",
    "NUL": lambda v: v + "\x00",
    "unicode line separator": lambda v: v + "\u2028X=1",
    "paragraph separator": lambda v: v + "\u2029",
    "next line (C1)": lambda v: v + "\x85X=1",
    "bidi override": lambda v: "\u202e" + v,
    "escape sequence": lambda v: v + "\x1b[2J",
    "tab": lambda v: v + "\tX",
    "DEL": lambda v: v + "\x7f",
    "systemd specifier": lambda v: v + "%n",
    "IPv6 zone id + newline": lambda v: "fe80::1%eth0\nX=1",
}

# Every string key of the configuration, as the error names it, with a valid value.
VALID = stack_config(
    storage={"provider": "s3", "endpoint": "s3.example.net:9000", "region": "eu-central-1", "bucket": "pg-backups",
             "repoPath": "/pgbackrest"},
    schedule={"full": "Sun *-*-* 02:00:00", "incremental": "Mon..Sat *-*-* 02:00:00",
              "monthly": "Sun *-*-01..07 04:00:00"},
    pgbackrest={"archivePushQueueMax": "4GiB", "version": "2.45-1"},
)
VALID["cluster"].update(pgData="/var/lib/postgresql/15/main", pgSocketPath="/var/run/postgresql",
                        patroniConfig="/etc/patroni/patroni.yml")
VALID["cluster"]["nodes"][0]["user"] = "root"
STRING_KEYS = [
    "storage.bucket", "storage.region", "storage.endpoint", "storage.repoPath",
    "cluster.stanza", "cluster.pgData", "cluster.pgSocketPath", "cluster.patroniConfig",
    "cluster.nodes[0].name", "cluster.nodes[0].host", "cluster.nodes[0].user", "cluster.nodes[0].hostKey",
    "schedule.full", "schedule.incremental", "schedule.monthly",
    "pgbackrest.archivePushQueueMax", "pgbackrest.version",
]


def path_of(key: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in re.findall(r"[A-Za-z]+|\d+", key)]


def with_value(key: str, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(VALID)
    *parents, last = path_of(key)
    target: Any = config
    for part in parents:
        target = target[part]
    target[last] = value
    return config


def value_of(key: str) -> str:
    target: Any = VALID
    for part in path_of(key):
        target = target[part]
    return str(target)


def test_the_valid_table_is_valid() -> None:
    parse_settings(VALID)
    assert len(STRING_KEYS) == len({*STRING_KEYS})


@pytest.mark.parametrize("hostile", sorted(HOSTILE))
@pytest.mark.parametrize("key", STRING_KEYS)
def test_every_hostile_value_is_refused_naming_its_key(key: str, hostile: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(with_value(key, HOSTILE[hostile](value_of(key))))
    text = str(info.value)
    assert text.startswith(f"pgbackup:{key}: "), text
    assert len(text.splitlines()) == 1, text
    assert unsafe_character(text) is None, ascii(text)  # the error cannot carry the payload into a log


@pytest.mark.parametrize("hostile", ["NUL", "carriage return", "unicode line separator", "escape sequence", "tab"])
def test_ca_certificate_takes_line_feeds_but_no_other_control_character(hostile: str) -> None:
    parse_settings(with_value("storage.caCert", CA))
    with pytest.raises(ConfigError, match=r"^pgbackup:storage\.caCert: must not contain control characters"):
        parse_settings(with_value("storage.caCert", HOSTILE[hostile](CA)))


def test_a_hostile_key_name_is_shown_escaped() -> None:
    config = copy.deepcopy(VALID)
    config["storage"]["bucket\nExecStartPre=+/bin/sh"] = "x"
    with pytest.raises(ConfigError) as info:
        parse_settings(config)
    assert str(info.value) == "pgbackup:storage.'bucket\\nExecStartPre=+/bin/sh': unknown key (check the spelling; " \
                              "keys are camelCase)"


# ---- What gets past validation anyway cannot escape its place in a file ----------------------------------

def renderings(settings: Settings) -> dict[str, Callable[[], str]]:
    """Every non-script template, rendered as the program renders it for the first node."""
    node = settings.cluster.nodes[0]
    ctx = template_context(settings, node)
    secrets = RepositorySecretValues(access_key_id="AKIA", secret_access_key="secret", cipher_pass="pass")
    backup_ctx = extend(UnitContext, ctx, backup=FULL, calendar=settings.schedule.full,
                        randomized_delay_sec=settings.schedule.randomized_delay_sec)

    def drill_file(suffix: str) -> Callable[[], str]:
        return lambda: next(content for path, content in drill_files(settings, ctx) if path.endswith(suffix))

    return {
        "systemd/pgbackup-backup.service.j2": lambda: render("systemd/pgbackup-backup.service.j2", backup_ctx),
        "systemd/pgbackup-backup.timer.j2": lambda: render("systemd/pgbackup-backup.timer.j2", backup_ctx),
        "systemd/pgbackup-metrics.service.j2": lambda: render("systemd/pgbackup-metrics.service.j2", ctx),
        "systemd/pgbackup-metrics.timer.j2": lambda: render("systemd/pgbackup-metrics.timer.j2", extend(
            UnitContext, ctx, backup=None, calendar=METRICS_CALENDAR, randomized_delay_sec=0)),
        "systemd/pgbackup-tls-server.service.j2": lambda: render("systemd/pgbackup-tls-server.service.j2", ctx),
        "systemd/pgbackup.tmpfiles.j2": lambda: render("systemd/pgbackup.tmpfiles.j2", ctx),
        "pgbackrest/pgbackrest.conf.j2": lambda: render("pgbackrest/pgbackrest.conf.j2",
                                                       extend(ConfigContext, ctx, secrets=secrets)),
        "patroni/dynamic.yaml.j2": lambda: dynamic_config(settings),
        "monitoring/pgbackrest.rules.yml.j2": lambda: alert_rules(settings),
        "monitoring/pgbackup-metrics.py.j2": lambda: render("monitoring/pgbackup-metrics.py.j2", ctx),
        "monitoring/pgbackup-check.py.j2": lambda: check_script(settings, ctx),
        # Included by the three above (one source); it reads no value.
        "monitoring/_rootsafe.py.j2": lambda: render_values("monitoring/_rootsafe.py.j2", {}),
        "monitoring/pgbackup-backup.py.j2": lambda: render("monitoring/pgbackup-backup.py.j2", extend(
            BackupProgramContext, ctx, peers_hosts={peer.name: peer.host for peer in ctx.peers})),
        # Included by the backup program and the collector (one source); it reads no value.
        "monitoring/_members.py.j2": lambda: render_values("monitoring/_members.py.j2", {}),
        "drill/pgbackup-drill.py.j2": drill_file("/pgbackup-drill"),
        "systemd/pgbackup-drill.service.j2": drill_file("/pgbackup-drill.service"),
        "systemd/pgbackup-drill.timer.j2": drill_file("/pgbackup-drill.timer"),
        **{template: partial(render, template, verify_context(settings, ctx)) for template in (
            "systemd/pgbackup-verify.service.j2", "systemd/pgbackup-verify.timer.j2",
            "monitoring/pgbackup-verify.py.j2")},
    }


def valid_settings(config: dict[str, Any] | None = None) -> Settings:
    storage, cluster, schedule, retention, pgbackrest, monitoring, drill = parse_settings(config or stack_config())
    nothing = cast(Any, None)
    return Settings(storage, cluster, schedule, retention, pgbackrest, monitoring, drill, nothing, nothing, nothing,
                    nothing)


def bypassing_validation(settings: Settings, field: str, value: str) -> Settings:
    """`settings` with one value set as validation would never let it through (model_copy does not validate)."""
    cluster, storage, schedule = settings.cluster, settings.storage, settings.schedule
    if field == "host":
        nodes = [cluster.nodes[0].model_copy(update={"host": value}), *cluster.nodes[1:]]
        cluster = cluster.model_copy(update={"nodes": nodes})
    elif field in ("stanza", "pg_data"):
        cluster = cluster.model_copy(update={field: value})
    elif field == "bucket":
        storage = storage.model_copy(update={field: value})
    else:
        schedule = schedule.model_copy(update={field: value})
    return Settings(storage, cluster, schedule, settings.retention, settings.pgbackrest, settings.monitoring,
                    settings.drill, settings.ssh_private_key,
                    settings.cipher_pass, settings.access_key_id, settings.secret_access_key)


def test_every_template_but_the_scripts_is_rendered_here() -> None:
    # The scripts quote every value with |q (shlex.quote), and are judged by shellcheck in test_rendered.
    templates = {str(p.relative_to(TEMPLATES)) for p in TEMPLATES.rglob("*.j2") if p.parent.name != "scripts"}
    assert set(renderings(valid_settings())) == templates


def test_every_value_in_units_and_pgbackrest_conf_goes_through_its_filter() -> None:
    for path, name in [*((p, "systemd") for p in (TEMPLATES / "systemd").glob("*.j2")),
                       (TEMPLATES / "pgbackrest" / "pgbackrest.conf.j2", "ini")]:
        for expression in re.findall(r"\{\{(.*?)\}\}(-?)", path.read_text()):
            if not expression[1]:  # `{{ r }}-path`: the option's name, not a value
                assert expression[0].rstrip().endswith(f"| {name}"), f"{path.name}: {{{{{expression[0]}}}}}"


LINE_BREAKING = [name for name, make in HOSTILE.items() if unsafe_character(make("x"))]


@pytest.mark.parametrize("hostile", LINE_BREAKING)
@pytest.mark.parametrize("field", ["stanza", "host", "pg_data", "bucket", "full"])
def test_what_gets_past_validation_stays_inside_its_value(field: str, hostile: str) -> None:
    payload = HOSTILE[hostile]("x")
    settings = bypassing_validation(valid_settings(), field, payload)
    clean = renderings(valid_settings())
    refused: dict[str, str] = {}
    for template, make in renderings(settings).items():
        try:
            text = make()
        except RenderError as err:
            refused[template] = str(err)
            continue
        if template.endswith((".yaml.j2", ".yml.j2")):
            yaml.safe_load(text)  # still one document, parsed by the YAML parser
        if template.endswith(".py.j2"):
            ast.parse(text)
        # Nothing but line feeds between lines, and as many lines as with a harmless value.
        assert unsafe_character(text, allow="\n") is None, template
        assert len(text.splitlines()) == len(clean[template]().splitlines()), template
    # Every field lands in a unit or pgbackrest.conf, whose filter refused it without showing it.
    assert refused
    assert all(unsafe_character(message) is None and payload not in message for message in refused.values())


def test_json_and_yaml_carry_a_hostile_stanza_as_its_own_value() -> None:
    stanza = "x\nExecStartPre=+/bin/sh: #'\""
    settings = bypassing_validation(valid_settings(), "stanza", stanza)
    dynamic = yaml.safe_load(dynamic_config(settings))
    assert dynamic["postgresql"]["parameters"]["archive_command"] == f"pgbackrest --stanza={stanza} archive-push %p"
    script = render("monitoring/pgbackup-metrics.py.j2", template_context(settings, settings.cluster.nodes[0]))
    constants = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(script).body
                 if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Constant)}
    assert constants["STANZA"] == stanza
    check = ast.parse(check_script(settings, template_context(settings, settings.cluster.nodes[0])))
    assert {n.targets[0].id: ast.literal_eval(n.value) for n in check.body if isinstance(n, ast.Assign)
            and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Constant)}["STANZA"] == stanza


def test_percent_is_doubled_for_systemd_which_reads_it_back(tmp_path: Path) -> None:
    # %z is no systemd specifier: written as is, systemd-analyze refuses the unit. The filter writes %%z.
    settings = bypassing_validation(valid_settings(), "stanza", "db%zmain")
    unit = render("systemd/pgbackup-backup.service.j2", extend(
        UnitContext, template_context(settings, settings.cluster.nodes[0]), backup=FULL, calendar="", randomized_delay_sec=0))
    assert "backup of stanza db%%zmain into repo1" in unit  # (ExecStart: the stanza is pgbackup-backup's own)
    escaped = {f"{PATHS.unit_dir}/pgbackup-backup-full.service": {"mode": "0644", "content": unit}}
    (tmp_path / "escaped").mkdir()
    (tmp_path / "raw").mkdir()
    assert verify_units(escaped, tmp_path / "escaped") == ""
    raw = {f"{PATHS.unit_dir}/pgbackup-backup-full.service": {"mode": "0644", "content": unit.replace("%%", "%")}}
    assert "Failed to resolve unit specifiers" in verify_units(raw, tmp_path / "raw")


# ---- Legal but unusual values reach the files as the tools read them -------------------------------------

UNUSUAL = stack_config(
    cluster={"stanza": "Main_db.v2", "pgData": "/srv/pg+data@17/main", "patroniApiPort": 1, "nodes": [
        node_config("pg1", "::1"),  # loopback, so curl can show the URL is a URL
        node_config("pg2", "2001:DB8::0011"),
        node_config("pg3", "PG3.Example.NET."),
    ]},
    schedule={"full": "Sun   *-*-*\u00a002:00:00", "incremental": " Mon..Sat *-*-* 02:00:00 "},
    pgbackrest={"version": "1:2.45-1+b1~bpo12", "archivePushQueueMax": "4gib"},
)


def test_unusual_but_legal_values_are_normalised_and_read_back_by_the_tools(tmp_path: Path) -> None:
    run = run_program(UNUSUAL)
    assert [n["host"] for n in run.outputs["nodes"]] == ["::1", "2001:db8::11", "pg3.example.net"]
    files = node_files(run, "pg1")
    unit = files["/etc/systemd/system/pgbackup-backup-full.service"]["content"]
    assert "ExecCondition=/usr/bin/curl --silent --fail --max-time 10 --output /dev/null http://[::1]:1/primary\n" in unit
    timer = files["/etc/systemd/system/pgbackup-backup-full.timer"]["content"]
    assert "\nOnCalendar=Sun *-*-* 02:00:00\n" in timer  # as validated: one space between words
    assert "\nOnCalendar=Mon..Sat *-*-* 02:00:00\n" in files["/etc/systemd/system/pgbackup-backup-incr.timer"]["content"]
    assert verify_units(files, tmp_path) == ""
    conf = files["/etc/pgbackrest/pgbackrest.conf"]["content"]
    assert pgbackrest_judge(conf, "Main_db.v2", tmp_path) == []
    options = option_lines(conf)
    assert ("Main_db.v2", "pg1-path", "/srv/pg+data@17/main") in options
    assert ("Main_db.v2", "pg2-host", "2001:db8::11") in options  # getaddrinfo takes it bare: not a URL
    assert ("Main_db.v2", "pg3-host", "pg3.example.net") in options
    assert ("global", "tls-server-address", "::1") in options


def test_curl_takes_the_bracketed_url_and_refuses_the_bare_one() -> None:
    settings = valid_settings(UNUSUAL)
    url = primary_url(settings, settings.cluster.nodes[0])
    assert url == "http://[::1]:1/primary"

    def curl(target: str) -> int:
        return subprocess.run(["curl", "--silent", "--max-time", "5", "--output", "/dev/null", target],
                              check=False).returncode

    assert curl(url) == 7  # connection refused: a URL, and nothing listens on port 1
    assert curl("http://::1:1/primary") == 3  # what the unit held before: "URL malformed", read by systemd as skip
