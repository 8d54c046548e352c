"""Configuration that fails closed, on a real `slm-server serve`: refusals at start-up, the flag that overrides
the one for an open bind, and the loopback guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.real.conftest import ServerProcess, free_port

ROOT = Path(__file__).parents[2]


@pytest.fixture
def models_file(tmp_path, tiny_llama: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(
        f"""
models:
  - name: tiny-llama
    source: {{path: {tiny_llama}}}
    n_ctx: 256
    n_threads: 1
  - name: catalog-entry
    source: {{repo_id: nobody-slm-test/never-pulled, filename: model.gguf}}
"""
    )
    return path


def serve_until_exit(models_file: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A `serve` that is expected to refuse to start: it must exit by itself."""
    command = [sys.executable, "-m", "server", "serve", "--port", str(free_port()), "--models", str(models_file)]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, **(env or {})}
    )


def test_beyond_loopback_without_a_key_the_server_refuses_to_start(models_file):
    done = serve_until_exit(models_file, "--host", "0.0.0.0")
    assert done.returncode == 2, done.stderr
    assert "refusing to listen on 0.0.0.0 without an API key" in done.stderr
    assert "--insecure-no-auth" in done.stderr and "Uvicorn running" not in done.stderr


@pytest.mark.parametrize("content", ["", "# keys go here\n\n"])
def test_a_key_file_with_no_key_stops_the_server(models_file, tmp_path, content):
    key_file = tmp_path / "keys"
    key_file.write_text(content)
    done = serve_until_exit(models_file, "--api-key-file", str(key_file))
    assert done.returncode == 2, done.stderr
    assert f"the API key file {key_file} holds no key" in done.stderr
    done = serve_until_exit(models_file, env={"SLM_API_KEY_FILE": str(key_file)})
    assert done.returncode == 2 and "holds no key" in done.stderr


@pytest.mark.parametrize(
    ("args", "env"), [(["--insecure-no-auth"], {}), ([], {"SLM_INSECURE_NO_AUTH": "1"})], ids=["flag", "env"]
)
def test_insecure_no_auth_serves_beyond_loopback_and_warns(models_file, args, env):
    server = ServerProcess(models_file, "--host", "0.0.0.0", *args, env=env)
    try:
        assert "WITHOUT an API key" in server.log_text()
        assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 200
    finally:
        server.stop()


def test_a_keyed_server_beyond_loopback_starts_quietly(models_file):
    server = ServerProcess(models_file, "--host", "0.0.0.0", "--api-key", "k")
    try:
        assert "WITHOUT an API key" not in server.log_text()
        assert httpx.get(server.url + "/openapi.json", timeout=10).status_code == 401
        assert httpx.get(server.url + "/openapi.json", headers={"Authorization": "Bearer k"}, timeout=10).is_success
    finally:
        server.stop()


def test_an_open_loopback_server_answers_only_local_names_and_its_own_pages(models_file):
    server = ServerProcess(models_file)
    try:
        models = server.url + "/v1/models"
        assert httpx.get(models, timeout=10).status_code == 200
        assert httpx.get(models, headers={"Host": f"localhost:{server.port}"}, timeout=10).status_code == 200
        rebound = httpx.get(models, headers={"Host": f"rebind.example:{server.port}"}, timeout=10)
        assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "forbidden_host"
        cross_site = httpx.post(
            server.url + "/v1/chat/completions",
            headers={"Origin": "https://evil.example"},
            json={"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
            timeout=10,
        )
        assert cross_site.status_code == 403 and cross_site.json()["error"]["code"] == "forbidden_origin"
        docs_page = httpx.get(server.url + "/openapi.json", headers={"Origin": server.url}, timeout=10)
        assert docs_page.status_code == 200
    finally:
        server.stop()
    log = server.log_text()
    assert "INFO server: not pulled yet (`slm-server pull NAME` fetches one): catalog-entry" in log
    assert "is not available" not in log
