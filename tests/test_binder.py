"""Binder's own environment (``.binder/``): repo2docker installs
``.binder/environment.yml`` before it copies the repository, so that file pins every
package itself (the same pins as pyproject.toml and constraints.txt) and reads no file
of the repository; ``.binder/postBuild`` then installs the library from the copied
checkout."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==(\S+)\s*", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_binder_pins_agree_with_the_project_and_read_no_repository_file():
    environment = yaml.safe_load((ROOT / ".binder" / "environment.yml").read_text())
    pip = next(
        entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)
    )
    assert not [
        line
        for line in pip
        if line.startswith(("-c", "-e", "-r", ".")) or "constraints" in line
    ], (
        "repo2docker installs .binder/environment.yml before it copies the repository: "
        "no -c, -e or -r lines"
    )
    binder = _pins(pip)
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    runtime = _pins(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    )
    assert (
        runtime.items() <= binder.items()
    ), f"Binder must pin the library's dependencies as pyproject.toml does: {runtime}"
    assert {
        name: version
        for name, version in binder.items()
        if constraints.get(name) != version
    } == {}, "a Binder pin differs from constraints.txt"


def test_postbuild_installs_the_library_from_the_checkout_under_the_constraints():
    post_build = ROOT / ".binder" / "postBuild"
    assert os.access(post_build, os.X_OK), "postBuild must be executable"
    assert (
        "pip install --no-cache-dir -c constraints.txt -e ." in post_build.read_text()
    )


def test_the_top_level_environment_stays_for_conda_users():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(
        entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)
    )
    assert "-e ." in pip and "-c constraints.txt" in pip
