"""The GitHub workflows pass actionlint, and the test workflow runs the README's test command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = shutil.which("actionlint") or str(ROOT / ".venv" / "bin" / "actionlint")


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ACTIONLINT, "-no-color", *map(str, paths)], capture_output=True, text=True,
                          check=False, cwd=ROOT)


def test_workflows_pass_actionlint() -> None:
    assert {p.name for p in WORKFLOWS} == {"test.yml", "preview.yml"}
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nope }}\n")
    assert actionlint(bad).returncode != 0


def test_preview_runs_for_dev_and_prod_with_pr_comments() -> None:
    text = (ROOT / ".github" / "workflows" / "preview.yml").read_text()
    assert "pulumi/actions@" in text
    assert "command: preview" in text
    assert "comment-on-pr: true" in text
    assert "stack: [dev, prod]" in text
    assert "pull_request" in text


def test_test_workflow_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".github" / "workflows" / "test.yml").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
