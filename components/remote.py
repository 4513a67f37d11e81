"""One remote step: a pulumi-command `remote.Command` running a rendered bash script on a node.

The script travels as the command (no secret is ever rendered into it); data, secrets included, travels on
stdin. `add_previous_output_in_env` is off: pgbackup's steps never need their previous output, and the
remote sshd would need AcceptEnv for it.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
from pulumi_command import local, remote

from components.config import NodeConfig


@dataclass(frozen=True)
class NodeFile:
    """A file that lands on a node: its path, mode, owner, group and content; whether the content is secret
    (no copy of an old version is kept), and what the files step does after it changes (layout.ACTIONS)."""

    path: str
    mode: str
    owner: str
    group: str
    content: pulumi.Input[str]
    secret: bool = False
    actions: tuple[str, ...] = ()


MANIFEST_MAGIC = "pgbackup-manifest 1"


def manifest_text(files: Sequence[NodeFile], contents: Sequence[str]) -> str:
    """The files step's stdin: a header "pgbackup-manifest 1 <count> <sha256 of the lines>", then a line per
    file "path mode owner group secret actions base64(content)" (secret 0|1, actions comma-separated or -).
    The step refuses a manifest whose count or checksum does not match (a cut transfer)."""
    lines = "".join(
        f"{f.path} {f.mode} {f.owner} {f.group} {int(f.secret)} {','.join(f.actions) or '-'} "
        f"{base64.b64encode(c.encode()).decode()}\n"
        for f, c in zip(files, contents, strict=True)
    )
    return f"{MANIFEST_MAGIC} {len(files)} {hashlib.sha256(lines.encode()).hexdigest()}\n{lines}"


def parse_manifest(text: str) -> dict[str, dict[str, str]]:
    """The files of a manifest by path: {mode, owner, group, secret, actions, content}; checks the header."""
    header, _, lines = text.partition("\n")
    magic, count, checksum = header.rsplit(" ", 2)
    if magic != MANIFEST_MAGIC or int(count) != lines.count("\n"):
        raise ValueError(f"not a whole manifest: {header!r}")
    if hashlib.sha256(lines.encode()).hexdigest() != checksum:
        raise ValueError("manifest checksum mismatch")
    files = {}
    for line in lines.splitlines():
        path, mode, owner, group, secret, actions, data = line.split(" ")
        files[path] = {"mode": mode, "owner": owner, "group": group, "secret": secret, "actions": actions,
                       "content": base64.b64decode(data).decode()}
    return files


def manifest(files: Sequence[NodeFile]) -> pulumi.Output[str]:
    """The stdin of the `files` step (manifest_text). Secret, as a whole."""
    return pulumi.Output.secret(
        pulumi.Output.all(*[f.content for f in files]).apply(lambda contents: manifest_text(files, contents))
    )


def connection(node: NodeConfig, private_key: pulumi.Input[str]) -> remote.ConnectionArgs:
    return remote.ConnectionArgs(
        host=node.host,
        port=node.port,
        user=node.user,
        private_key=private_key,
        host_key=node.host_key,
        dial_error_limit=3,
        per_dial_timeout=15,
    )


def bash(script: str, step: str) -> str:
    """The command string: bash runs the script (the login shell may be dash); $0 names the step."""
    return f"bash -c {shlex.quote(script)} pgbackup-{step}"


def remote_step(
    name: str,
    *,
    step: str,
    conn: remote.ConnectionArgs,
    script: str,
    parent: pulumi.Resource,
    stdin: pulumi.Input[str] | None = None,
    triggers: Sequence[pulumi.Input[str]] | None = None,
    delete: str | None = None,
    depends_on: Sequence[pulumi.Resource] = (),
) -> remote.Command:
    return remote.Command(
        name,
        connection=conn,
        create=bash(script, step),
        delete=bash(delete, f"{step}-delete") if delete else None,
        stdin=stdin,
        triggers=list(triggers) if triggers else None,
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
    )


def barrier(name: str, *, after: Sequence[pulumi.Resource], parent: pulumi.Resource,
            requires: Sequence[pulumi.Input[str]] = ()) -> local.Command:
    """A point the next stage waits for: a local command that runs nothing, depending on `after`, and on the
    values in `requires` (its triggers): a value that fails (raises) stops every stage behind the barrier.

    With it, each of N steps of a stage depends on one resource instead of on the N steps of the stage
    before. The SDK checks every declared dependency for cycles by walking the graph, so N x N edges made
    a 100-node program take minutes to evaluate; N + N edges keep it linear.
    """
    return local.Command(name, triggers=list(requires) or None,
                         opts=pulumi.ResourceOptions(parent=parent, depends_on=list(after)))
