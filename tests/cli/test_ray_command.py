"""`slm-server ray`: a Serve config handed to Ray's own `serve run`; Ray imported only when the command runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from server.cli import main

ROOT = Path(__file__).parents[2]


def test_it_runs_serve_run_with_the_config_and_address(monkeypatch):
    from ray.serve import scripts

    calls = []
    monkeypatch.setattr(scripts.cli, "main", lambda **kwargs: calls.append(kwargs) or 0)
    config = ROOT / "deploy" / "ray" / "serve.yaml"
    assert main(["ray", "--config", str(config), "--address", "10.0.0.1:6379", "--non-blocking"]) == 0
    (call,) = calls
    assert call["args"] == ["run", str(config), "--address", "10.0.0.1:6379", "--non-blocking"]
    assert call["standalone_mode"] is False


@pytest.mark.parametrize("text", [None, "", "models: []\n", "applications: []\n", "[1, 2]\n", "a: [\n"])
def test_a_missing_or_wrong_config_is_refused_before_ray_starts(tmp_path, monkeypatch, caplog, text):
    monkeypatch.setitem(sys.modules, "ray.serve.scripts", None)  # reaching Ray would fail the test loudly
    config = tmp_path / "serve.yaml"
    if text is not None:
        config.write_text(text)
    assert main(["ray", "--config", str(config)]) == 2
    assert "Serve config" in caplog.text


def test_without_ray_installed_it_says_which_extra_to_install(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ray.serve.scripts", None)
    assert main(["ray", "--config", str(ROOT / "deploy" / "ray" / "serve.yaml")]) == 2
    assert "pip install 'slm-server[ray]'" in caplog.text


def test_serving_does_not_import_ray():
    import subprocess

    code = "import sys, server.cli, server.app; assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0
