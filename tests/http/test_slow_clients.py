"""Slow clients and shutdown: a stream whose client stops reading is ended and counted; the engine's buffer for a
stream is bounded; a stream still running at shutdown ends with a `shutting_down` error event."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from server.app import create_app
from server.config import ConfigError, Settings
from server.engine import GenerationDelta, GenerationRequest
from server.engine.delta_buffer import DeltaBuffer
from server.engine.process import _RemoteStream
from server.errors import ModelCrashedError, SlowClientError
from server.http import sse
from server.models.registry import ModelRegistry
from tests.api.openai.test_routes import CHAT, HELLO, sse_events
from tests.conftest import FakeLoader
from tests.fakes import FakeScript, fake_spec
from tests.http.test_sse import chunk

LONG = FakeScript(pieces=tuple(f"w{i} " for i in range(50)), n_ctx=4096)
STREAMS = {
    "/v1/chat/completions": {**HELLO, "stream": True, "max_tokens": 100},
    "/v1/completions": {"model": "fake-model", "prompt": "Hi", "stream": True, "max_tokens": 100},
    "/v1/responses": {"model": "fake-model", "input": "Hi", "stream": True, "max_output_tokens": 100},
}


def client_timeouts(app) -> float:
    value = app.state.metrics.registry.get_sample_value("slm_client_timeouts_total", {"model": "fake-model"})
    return value or 0.0


def http_scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},  # as uvicorn's h11 protocol says
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


@pytest.mark.parametrize("path", list(STREAMS))
def test_a_client_that_stops_reading_is_cut_off_and_frees_the_model(tmp_path, path):
    loader = FakeLoader()
    loader.scripts["fake-model"] = LONG
    registry = ModelRegistry([fake_spec("fake-model")], loader)
    app = create_app(Settings(models_file=tmp_path / "unused.yaml", stream_send_timeout_s=0.05), registry=registry)
    body = json.dumps(STREAMS[path]).encode()
    sent: list[dict[str, Any]] = []

    async def exchange() -> None:
        requests = [{"type": "http.request", "body": body, "more_body": False}]
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if requests:
                return requests.pop()
            await never.wait()  # the client never hangs up either
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            engine = loader.engines.get("fake-model")
            if message["type"] == "http.response.body" and engine is not None and engine.in_flight:
                await never.wait()  # generating, and the client's socket is full: this send never completes
            sent.append(message)

        async with asyncio.timeout(60):  # a bound, so that a stream never given up fails rather than hangs
            await app(http_scope(path, body), receive, send)  # returns: the stuck stream was given up
        engine = loader.engines["fake-model"]
        for _ in range(100):  # the engine's stream is closed as the chain of generators unwinds
            if engine.closed_early:
                break
            await asyncio.sleep(0)

    asyncio.run(exchange())
    assert sent[0]["status"] == 200
    assert not any(m.get("more_body") is False for m in sent)  # the response was never completed
    engine = loader.engines["fake-model"]
    assert engine.closed_early == 1 and engine.in_flight == 0
    assert client_timeouts(app) == 1


def test_a_client_that_reads_is_never_cut_off(client, loader):
    loader.scripts["fake-model"] = LONG
    events = sse_events(client.post(CHAT, json=STREAMS[CHAT]))
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert client_timeouts(client.app) == 0


def test_an_engine_stream_failed_as_a_slow_client_is_an_error_event_and_counted(client, loader):
    loader.scripts["fake-model"] = FakeScript(fail_after=2, failure=SlowClientError())
    events = sse_events(client.post(CHAT, json={**HELLO, "stream": True}))
    assert events[-1]["error"]["code"] == "slow_client"
    assert client_timeouts(client.app) == 1
    metrics = client.get("/metrics").text
    assert 'slm_client_timeouts_total{model="fake-model"} 1.0' in metrics


def test_a_stream_is_counted_as_a_client_timeout_once(client, loader):
    metrics = client.app.state.metrics
    record = type("Record", (), {"model": "fake-model", "client_timed_out": False})()
    metrics.observe_client_timeout(record)
    metrics.observe_client_timeout(record)  # its send timed out after its buffer overflowed
    assert client_timeouts(client.app) == 1


def test_send_timeout_setting():
    assert Settings().stream_send_timeout_s == 30
    assert Settings.from_env({"SLM_STREAM_SEND_TIMEOUT_S": "2.5"}).stream_send_timeout_s == 2.5
    for wrong in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="stream_send_timeout_s"):
            Settings.from_env({"SLM_STREAM_SEND_TIMEOUT_S": wrong})


# The engine's buffer for one stream


def delta(text: str = "x", finish: str | None = None) -> GenerationDelta:
    return GenerationDelta(text, 1, finish)


def test_delta_buffer_overflow_keeps_only_the_failure_and_reports_once():
    overflows = []
    buffer = DeltaBuffer(lambda: overflows.append(True), limit=3)
    for _ in range(3):
        buffer.put_nowait(delta())
    assert buffer.qsize() == 3 and not overflows
    buffer.put_nowait(delta())
    buffer.put_nowait(delta())
    buffer.put_nowait(ModelCrashedError("m"))
    assert overflows == [True] and buffer.qsize() == 1
    assert isinstance(buffer.get_nowait(), SlowClientError)


def test_delta_buffer_always_takes_a_failure():
    buffer = DeltaBuffer(lambda: None, limit=1)
    buffer.put_nowait(delta())
    buffer.put_nowait(ModelCrashedError("m"))
    assert buffer.qsize() == 2 and not buffer.overflowed


class _StubEngine:
    """The parts of ProcessEngine a stream uses; `deliver` deltas arrive on the event loop, as the reader
    thread's would."""

    def __init__(self, deliver: int) -> None:
        self.deliver = deliver
        self.released: list[tuple[int | None, bool]] = []

    def submit(self, request: GenerationRequest, queue: asyncio.Queue[Any]) -> int:
        loop = asyncio.get_running_loop()
        for _ in range(self.deliver):
            loop.call_soon(queue.put_nowait, delta())
        return 7

    def release(self, request_id: int | None, *, cancel: bool, batch: bool = False) -> None:
        self.released.append((request_id, cancel))


def test_a_stream_whose_consumer_falls_behind_is_cancelled_in_the_worker(monkeypatch):
    monkeypatch.setattr(_RemoteStream, "buffer_limit", 4)
    engine = _StubEngine(deliver=5)
    stream = _RemoteStream(engine, GenerationRequest(prompt_tokens=[1], max_tokens=100))  # type: ignore[arg-type]

    async def consume() -> None:
        with pytest.raises(SlowClientError):
            await anext(stream)
        assert engine.released == [(7, True)]  # cancelled in the worker, admission given back: once
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        await stream.aclose()

    asyncio.run(consume())
    assert engine.released == [(7, True)]


def test_a_stream_whose_consumer_keeps_up_is_untouched(monkeypatch):
    monkeypatch.setattr(_RemoteStream, "buffer_limit", 4)
    engine = _StubEngine(deliver=4)
    stream = _RemoteStream(engine, GenerationRequest(prompt_tokens=[1], max_tokens=100))  # type: ignore[arg-type]

    async def consume() -> list[GenerationDelta]:
        return [await anext(stream) for _ in range(4)]

    assert len(asyncio.run(consume())) == 4
    assert engine.released == []


# Shutdown


async def _stream_until_shutdown(encoder, first: Any) -> tuple[list[bytes], list[bool]]:
    """Encode a source that yields `first` and then waits forever; give the shutdown notice while it waits."""
    notice = sse.ShutdownNotice()
    waiting = asyncio.Event()
    closed: list[bool] = []

    async def source():
        try:
            yield first
            waiting.set()
            await asyncio.Event().wait()
        finally:
            closed.append(True)

    frames = encoder(source(), notice)
    received = [await anext(frames)]
    rest = asyncio.create_task(_all(frames))
    await waiting.wait()
    notice.give()
    async with asyncio.timeout(60):  # a bound, so that a stream that ignores the notice fails rather than hangs
        return received + await rest, closed


async def _all(frames) -> list[bytes]:
    return [frame async for frame in frames]


def test_shutdown_notice_ends_a_chat_stream_with_an_error_event_and_done():
    frames, closed = asyncio.run(_stream_until_shutdown(sse.encode, chunk("a")))
    assert frames[-1] == sse.DONE
    error = json.loads(frames[-2][len(b"data: ") :])["error"]
    assert error["code"] == "shutting_down" and error["type"] == "server_error"
    assert len(frames) == 3 and closed == [True]


def test_shutdown_notice_ends_a_responses_stream_with_an_error_event():
    frames, closed = asyncio.run(_stream_until_shutdown(sse.encode_events, {"type": "response.created"}))
    last = frames[-1].decode()
    assert last.startswith("event: error\n")
    payload = json.loads(last.split("data: ", 1)[1])
    assert payload["code"] == "shutting_down" and payload["sequence_number"] == 1
    assert len(frames) == 2 and closed == [True]


@pytest.mark.parametrize("path", list(STREAMS))
def test_a_stream_started_after_the_notice_ends_at_once(client, loader, path):
    loader.scripts["fake-model"] = LONG
    client.app.state.shutdown_notice.given = True
    response = client.post(path, json=STREAMS[path])
    assert response.status_code == 200
    if path == "/v1/responses":
        assert response.text.startswith("event: error\n") and '"code":"shutting_down"' in response.text
    else:
        assert [event["error"]["code"] for event in sse_events(response)] == ["shutting_down"]
    assert loader.engines["fake-model"].closed_early == 0  # nothing was generated
