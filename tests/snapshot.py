"""Everything the program declares, for a set of stacks, written as text files: the proof that a commit
which only restructures the code changes no rendered byte.

    python -m tests.snapshot DIR      # one file per stack configuration, then a sha256 per file

Each file lists, by name (registration order varies between runs), every resource's type, name, inputs (a step's script unwrapped from
its `bash -c` command, the files step's manifest decoded file by file), its declared dependencies, and the
stack outputs. The stacks are the committed Pulumi.<stack>.yaml files (an unpinned hostKey filled with a
fixed test key) and variants that switch on each optional feature. Compare two runs with `diff -r`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from pgbackup_testkit.harness import (
    ROOT,
    SENTINELS,
    Resource,
    Run,
    depends_on,
    node_config,
    node_files,
    run_program,
    stack_config,
)


def stack_file(stack: str) -> dict[str, Any]:
    """The pgbackup:* objects of Pulumi.<stack>.yaml, with unpinned host keys filled in."""
    config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    objects = {key.removeprefix("pgbackup:"): value for key, value in config.items()
               if key.startswith("pgbackup:") and isinstance(value, dict) and "secure" not in value}
    objects["cluster"]["nodes"] = [
        node if node.get("hostKey") else node_config(node["name"], node["host"],
                                                     **{k: v for k, v in node.items() if k not in
                                                        ("name", "host", "hostKey")})
        for node in objects["cluster"]["nodes"]]
    return objects


def variants() -> dict[str, dict[str, Any]]:
    base = stack_config()
    cluster = base["cluster"]
    return {
        "stack-dev": stack_file("dev"),
        "stack-prod": stack_file("prod"),
        "stack-lab": stack_file("lab"),
        "default-s3": base,
        "monthly-consul-2.55": stack_config(retention={"monthly": 6}, monitoring={"consul": True},
                                            pgbackrest={"version": "2.55*"}),
        "single-node-no-standby": stack_config(
            cluster={**cluster, "nodes": cluster["nodes"][:1]}, pgbackrest={"backupStandby": False}),
        "b2": stack_config(storage={"provider": "b2", "region": "eu-central-003", "bucket": "pg-backups-b2"}),
        "wasabi-adopted": stack_config(storage={"provider": "wasabi", "region": "eu-central-2",
                                                "bucket": "pg-backups-wasabi", "create": False}),
        "minio-ca": stack_config(storage={"provider": "minio", "endpoint": "minio.example.net:9000",
                                          "bucket": "pg-backups",
                                          "caCert": (ROOT / "tests/data/storage-ca.pem").read_text()}),
    }


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def describe(run: Run, resource: Resource) -> dict[str, Any]:
    inputs = dict(resource.inputs)
    for key in ("create", "delete"):
        command = inputs.get(key)
        if isinstance(command, str) and command.startswith("bash -c "):
            words = shlex.split(command)
            inputs[key] = {"step": words[3], "script": words[2].splitlines()}
    if resource.typ == "command:remote:Command" and resource.name.endswith("-files"):
        files = node_files(run, resource.name.removeprefix("cluster-").removesuffix("-files"))
        inputs["stdin"] = {path: {**meta, "content": meta["content"].splitlines()} for path, meta in files.items()}
    deps = sorted(depends_on(run, resource.name)) if resource.name in run.options else []
    opts = run.options.get(resource.name)
    parent = opts.parent._name if opts is not None and opts.parent is not None else None
    return {"type": resource.typ, "name": resource.name, "parent": parent, "dependsOn": deps,
            "inputs": _plain(inputs)}


def snapshot(config: dict[str, Any]) -> str:
    secrets: dict[str, str] | None = None
    if config.get("storage", {}).get("create") is False:
        secrets = {k: SENTINELS[k] for k in ("sshPrivateKey", "cipherPass", "accessKeyId", "secretAccessKey")}
    run = run_program(config, secrets=secrets)
    document = {
        "resources": [describe(run, r) for r in sorted(run.resources, key=lambda r: (r.name, r.typ))],
        "outputs": _plain(run.outputs),
        "secretOutputs": sorted(run.secret_outputs),
    }
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, config in variants().items():
        text = snapshot(config)
        (out / f"{name}.json").write_text(text)
        print(f"{hashlib.sha256(text.encode()).hexdigest()[:16]}  {name}.json  ({len(text)} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
