"""No request's dependencies run in a thread: FastAPI runs a plain function dependency in its thread pool (through
anyio), a thread hop per dependency per request, so every dependency is a coroutine."""

from __future__ import annotations

import anyio.to_thread
import pytest


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"model": "fake-model", "prompt": "hi"}),
        ("/tokenize", {"model": "fake-model", "content": "hi"}),
        ("/v1/messages", {"model": "fake-model", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/models", None),
        ("/v1/files", None),
        ("/models", None),  # the admin API: its key check
        ("/v1/rerank", {"model": "fake-model", "query": "q", "documents": ["d"]}),  # not a reranker: a 400
    ],
)
def test_a_request_runs_nothing_in_fastapis_thread_pool(client, monkeypatch, path, body):
    ran: list[str] = []
    original = anyio.to_thread.run_sync

    async def recording(func, *args, **kwargs):
        ran.append(getattr(func, "__qualname__", repr(func)))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", recording)
    response = client.get(path) if body is None else client.post(path, json=body)
    assert response.status_code < 500, response.text
    assert ran == []
