"""scripts/requirements_of.py: what the Dockerfile installs, read from pyproject.toml (the `ray` extra on request)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "requirements_of.py"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(ROOT / "pyproject.toml"), *args], capture_output=True, text=True
    )


def test_without_extras_the_image_gets_the_projects_dependencies():
    result = run()
    assert result.returncode == 0
    assert result.stdout.splitlines() == PROJECT["dependencies"]


def test_the_ray_extra_adds_ray_serve_whether_given_apart_or_comma_separated():
    for args in (("ray",), ("ray,",), (" ray ",)):
        result = run(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == PROJECT["dependencies"] + PROJECT["optional-dependencies"]["ray"]
    assert any(line.startswith("ray[serve]==") for line in run("ray").stdout.splitlines())


def test_an_unknown_extra_fails_the_build():
    for extra in ("rya", "dev"):
        result = run(extra)
        assert result.returncode == 2 and result.stdout == ""
        assert f"unknown extra '{extra}'" in result.stderr
