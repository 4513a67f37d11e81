"""The nodes over SSH (paramiko): the pinned host key or nothing is sent; the operator's key from a file or
the SSH agent, never printed. Every command is a bash script run as the node's SSH user (root)."""

from __future__ import annotations

import base64
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import paramiko

from components.config import NodeConfig
from components.render import render_values

# The helper every script run as root on a node starts with (templates/scripts/_rootsafe.sh.j2): the only way
# those scripts create, write, rename or remove a path (docs/security.md).
ROOTSAFE = render_values("scripts/_rootsafe.sh.j2", {})
# The most output the command keeps of one script's stdout or stderr: `pgbackrest info --output=json` of a
# large repository is a few MB; a node sending more is refused rather than read into memory without end.
OUTPUT_LIMIT = 64 << 20


def script_text(script: str) -> str:
    """The whole bash program a node runs for `script`: strict mode, the root-safe helper, then `script`."""
    return "set -Eeuo pipefail\n" + ROOTSAFE + script


class RemoteError(RuntimeError):
    """A node could not be reached, answered with another host key, or a command failed."""


@dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str


def load_key(path: Path) -> paramiko.PKey:
    """An ed25519, ECDSA or RSA private key (unencrypted; an encrypted one belongs in the agent)."""
    errors = []
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key_file(str(path))
        except paramiko.PasswordRequiredException:
            raise RemoteError(f"{path}: the key is encrypted: add it to ssh-agent and leave out --identity") from None
        except (paramiko.SSHException, ValueError) as error:
            errors.append(str(error))
    raise RemoteError(f"{path}: not an ed25519, ECDSA or RSA private key")


class Node:
    """One node of the stack, reached over SSH with its pinned host key."""

    def __init__(self, config: NodeConfig, key: paramiko.PKey | None, insecure: bool = False,
                 connect_timeout: float = 15) -> None:
        self.config = config
        self.name = config.name
        self._key = key
        self._insecure = insecure
        self._timeout = connect_timeout

    def _client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        host = self.config.host if self.config.port == 22 else f"[{self.config.host}]:{self.config.port}"
        if self.config.host_key:
            kind, blob = self.config.host_key.split()[:2]
            client.get_host_keys().add(host, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob)))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        elif self._insecure:  # pgbackup:cluster.insecureSkipHostKeyCheck, warned by the caller
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507
        else:
            raise RemoteError(f"{self.name}: no hostKey pinned in the stack")
        try:
            client.connect(self.config.host, port=self.config.port, username=self.config.user, pkey=self._key,
                           allow_agent=self._key is None, look_for_keys=False, timeout=self._timeout,
                           banner_timeout=self._timeout, auth_timeout=self._timeout)
        except paramiko.BadHostKeyException as error:
            raise RemoteError(
                f"{self.name}: {self.config.host} answered with host key {error.key.get_name()} "
                f"{error.key.fingerprint}, not the pinned {error.expected_key.fingerprint}: refused, nothing was sent"
            ) from None
        except paramiko.AuthenticationException:
            raise RemoteError(f"{self.name}: {self.config.user}@{self.config.host} refused the key "
                              "(--identity FILE, or a key in ssh-agent)") from None
        except (OSError, paramiko.SSHException) as error:
            raise RemoteError(f"{self.name}: cannot reach {self.config.host}:{self.config.port} over SSH: "
                              f"{error or type(error).__name__}") from None
        return client

    def run(self, script: str, stdin: str = "", timeout: float = 600,
            on_output: Callable[[str], None] | None = None) -> Result:
        """`script` through `bash -c` (script_text: strict mode and the root-safe helper first). Output is
        collected (at most OUTPUT_LIMIT bytes of each stream: more is a RemoteError), and passed line by line
        to `on_output` as it comes when given."""
        out, err, pending = bytearray(), bytearray(), b""

        def stdout(chunk: bytes) -> None:
            nonlocal pending
            if len(out) + len(chunk) > OUTPUT_LIMIT:
                raise RemoteError(f"{self.name}: more than {OUTPUT_LIMIT} bytes of output: refused")
            out.extend(chunk)
            if on_output is not None:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    on_output(line.decode(errors="replace"))

        def stderr(chunk: bytes) -> None:
            err.extend(chunk[:max(0, OUTPUT_LIMIT - len(err))])

        status = self._exchange(script, stdin, timeout, stdout, stderr, pause=0.05)
        if on_output is not None and pending:
            on_output(pending.decode(errors="replace"))
        return Result(status, out.decode(errors="replace"), err.decode(errors="replace"))

    def stream(self, script: str, sink: BinaryIO, limit: int, timeout: float = 3600) -> Result:
        """`script` as run(), its stdout's bytes written to `sink` as they come, at most `limit` of them (more
        is a RemoteError, the session closed); stderr collected (at most 64 KiB)."""
        received, err = 0, bytearray()

        def stdout(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            if received > limit:
                raise RemoteError(f"{self.name}: sent more than the {limit} bytes expected: refused")
            sink.write(chunk)

        def stderr(chunk: bytes) -> None:
            err.extend(chunk[:max(0, 65536 - len(err))])

        status = self._exchange(script, "", timeout, stdout, stderr, pause=0.02)
        return Result(status, "", err.decode(errors="replace"))

    def _exchange(self, script: str, stdin: str, timeout: float, stdout: Callable[[bytes], None],
                  stderr: Callable[[bytes], None], pause: float) -> int:
        """One SSH session: `script` run (script_text), `stdin` sent, each chunk of stdout and stderr handed to
        its callback as it comes (a callback raising ends the session); the exit status. `timeout` seconds at
        most; the session is closed whatever happens."""
        command = "bash -c " + shlex.quote(script_text(script))
        client = self._client()
        try:
            transport = client.get_transport()
            assert transport is not None
            channel = transport.open_session()
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin.encode())
            channel.shutdown_write()
            deadline = time.monotonic() + timeout
            while True:
                got = False
                if channel.recv_ready():
                    stdout(channel.recv(1 << 20))
                    got = True
                if channel.recv_stderr_ready():
                    stderr(channel.recv_stderr(65536))
                    got = True
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    raise RemoteError(f"{self.name}: no end after {timeout:.0f} s")
                if not got:
                    time.sleep(pause)
            return int(channel.recv_exit_status())
        except (OSError, paramiko.SSHException) as error:
            raise RemoteError(f"{self.name}: the SSH session broke: {error}") from None
        finally:
            client.close()

    def check(self, script: str, stdin: str = "", timeout: float = 600, what: str = "") -> str:
        """run(), failing with the node, `what` and the output's tail when the script exits non-zero."""
        result = self.run(script, stdin=stdin, timeout=timeout)
        if result.status != 0:
            tail = "\n".join((result.out + result.err).strip().splitlines()[-12:])
            raise RemoteError(f"{self.name}: {what or 'a command'} failed (exit {result.status}):\n{tail}")
        return result.out


def warn(message: str) -> None:
    print(f"pgbackup: warning: {message}", file=sys.stderr)
