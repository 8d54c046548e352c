"""`GET /models/sse`: model events as llama.cpp's router streams them. Driven as a server would drive the app
(plain ASGI), since the stream never ends by itself; every wait is on the stream's own output, with a bound."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import ClientDisconnect

from server.api.admin import routes
from server.app import create_app
from server.config import Settings
from server.models.events import SUBSCRIBER_QUEUE_EVENTS, ModelEvent
from server.models.registry import ModelRegistry
from tests.conftest import FakeLoader
from tests.fakes import fake_spec

WAIT_S = 30  # a bound for what happens within milliseconds; reached only when a test fails


@pytest.fixture
def app(tmp_path) -> Iterator[Any]:
    registry = ModelRegistry([fake_spec("fake-model"), fake_spec("other-model")], FakeLoader())
    yield create_app(Settings(models_file=tmp_path / "unused.yaml"), registry=registry)


class EventStream:
    """One client of /models/sse: the app runs as a task; `frame()` is the next SSE frame it sent."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._hung_up = asyncio.Event()
        self._buffer = ""
        self.complete = False
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> dict[str, Any]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/models/sse",
            "raw_path": b"/models/sse",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"localhost")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self._hung_up.wait()
            return {"type": "http.disconnect"}

        self.task = asyncio.create_task(self._app(scope, receive, self._sent.put))
        return await asyncio.wait_for(self._sent.get(), WAIT_S)  # the response's start: subscribed by now

    async def frame(self) -> str:
        while "\n\n" not in self._buffer:
            message = await asyncio.wait_for(self._sent.get(), WAIT_S)
            self._buffer += message.get("body", b"").decode()
            if not message.get("more_body", False):
                self.complete = True
                if not self._buffer:
                    return ""
        frame, self._buffer = self._buffer.split("\n\n", 1)
        return frame

    async def event(self) -> dict[str, Any]:
        """The next data frame, decoded (comments skipped)."""
        while (frame := await self.frame()).startswith(":"):
            pass
        assert frame.startswith("data: "), frame
        return json.loads(frame[len("data: ") :])

    async def hang_up(self) -> None:
        self._hung_up.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, WAIT_S)


async def post(app: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        return await client.post(path, json=body)


def test_a_load_and_an_unload_come_down_the_stream(app):
    async def scenario() -> list[dict[str, Any]]:
        stream = EventStream(app)
        start = await stream.open()
        assert start["status"] == 200
        assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
        assert (await post(app, "/models/load", {"model": "fake-model"})).status_code == 200
        events = [await stream.event(), await stream.event()]
        assert (await post(app, "/models/unload", {"model": "fake-model"})).status_code == 200
        events.append(await stream.event())
        await stream.hang_up()
        assert app.state.model_events.subscribers == 0  # the client left: unsubscribed
        return events

    events = asyncio.run(scenario())
    assert [(e["model"], e["event"], e["data"]["status"]) for e in events] == [
        ("fake-model", "model_status", "loading"),
        ("fake-model", "model_status", "loaded"),
        ("fake-model", "model_status", "unloaded"),
    ]
    assert events[1]["data"]["load_seconds"] >= 0 and events[2]["data"]["reason"] == "requested"


def test_a_subscriber_that_falls_behind_is_dropped_with_an_error_event(app):
    async def scenario() -> tuple[list[dict[str, Any]], int]:
        stream = EventStream(app)
        await stream.open()
        for _ in range(SUBSCRIBER_QUEUE_EVENTS + 1):  # more than its queue holds, before it reads any
            app.state.model_events.publish(ModelEvent("fake-model", status="loaded"))
        received = []
        while not stream.complete:
            received.append(await stream.event())
            if "error" in received[-1]:
                assert await stream.frame() == "" and stream.complete  # then the response ends
        await stream.hang_up()
        return received, app.state.model_events.subscribers

    received, subscribers = asyncio.run(scenario())
    assert received[-1]["error"]["code"] == "slow_client" and subscribers == 0
    # Ended at once: at most the event its read was already waiting for came first, not the ones it missed.
    assert len(received) <= 2
    assert app.state.metrics.registry.get_sample_value("slm_client_timeouts_total", {"model": "none"}) == 1


def test_an_idle_stream_sends_a_keep_alive_comment(app, monkeypatch):
    monkeypatch.setattr(routes, "HEARTBEAT_S", 0.02)
    monkeypatch.setattr(routes, "DRAIN_CHECK_S", 0.01)

    async def scenario() -> str:
        stream = EventStream(app)
        await stream.open()
        frame = await stream.frame()
        await stream.hang_up()
        return frame

    assert asyncio.run(scenario()) == ": keep-alive"


def test_at_shutdown_the_stream_ends_with_an_error_event(app):
    async def scenario() -> dict[str, Any]:
        stream = EventStream(app)
        await stream.open()
        app.state.shutdown_notice.give()
        event = await stream.event()
        assert await stream.frame() == "" and stream.complete
        await stream.hang_up()
        return event

    assert asyncio.run(scenario())["error"]["code"] == "shutting_down"


def test_when_the_server_starts_draining_the_stream_ends_at_once(app, monkeypatch):
    """The server waits for open responses before it stops: an event stream must not hold it for the grace period."""
    monkeypatch.setattr(routes, "DRAIN_CHECK_S", 0.01)

    async def scenario() -> dict[str, Any]:
        stream = EventStream(app)
        await stream.open()
        app.state.draining = True  # SIGTERM
        event = await stream.event()
        assert await stream.frame() == "" and stream.complete
        await stream.hang_up()
        return event

    assert asyncio.run(scenario())["error"]["code"] == "shutting_down"
    assert app.state.model_events.subscribers == 0


def test_a_client_gone_before_the_body_started_is_unsubscribed(app):
    async def scenario() -> int:
        scope = {"type": "http", "method": "GET", "path": "/models/sse", "headers": [], "query_string": b""}
        request = type("Request", (), {"app": app, "scope": scope})()
        record = type("Record", (), {"model": "", "client_timed_out": False})()
        response = await routes.model_events(request, record)  # subscribed
        assert app.state.model_events.subscribers == 1

        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            raise OSError("the client is gone")  # the response start cannot even be sent

        with pytest.raises(ClientDisconnect):
            await response({**scope, "asgi": {"spec_version": "2.4"}}, receive, send)
        return app.state.model_events.subscribers

    assert asyncio.run(scenario()) == 0
