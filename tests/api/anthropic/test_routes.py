"""The Anthropic routes over HTTP, driven by the official `anthropic` SDK and by raw requests, on a small app with
a scripted pipeline (the interface the routes expect: start, count_tokens, a Generation's prompt_tokens and
events). Every body is checked against the SDK's types; every error leaves in Anthropic's shape."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import anthropic
import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.api.anthropic.routes import router
from server.config import Settings
from server.errors import APIError, ModelCrashedError, ModelNotFoundError, OverloadedError
from server.generation.reply import ChoiceEnd, ReplyEvent, TextPiece, ToolCall, call_events
from server.http.sse import EventStreamResponse, ShutdownNotice
from server.metrics import Metrics, RequestRecord
from tests.contracts.anthropic_contract import assert_error, assert_stream, check_response, parse_sse

HELLO = {"model": "fake-model", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
MESSAGES, BOTH = ("/v1/messages",), ("/v1/messages", "/v1/messages/count_tokens")
TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


class ScriptedPipeline:
    """Answers every request with `replies`; fails at start with `refuse`, or midway with `fail`."""

    def __init__(self) -> None:
        self.replies: list[ReplyEvent] = [
            TextPiece(choice=0, text="Hello"),
            TextPiece(choice=0, text=" there."),
            ChoiceEnd(choice=0, reason="stop", completion_tokens=2),
        ]
        self.refuse: APIError | None = None
        self.fail: Exception | None = None
        self.plans: list = []
        self.records: list = []
        self.closed = 0

    async def start(self, plan, record):
        self.plans.append(plan)
        self.records.append(record)
        if self.refuse is not None:
            raise self.refuse
        return SimpleNamespace(model=plan.model, prompt_tokens=7, choices=1, events=self._events())

    async def count_tokens(self, plan, record):
        self.plans.append(plan)
        if self.refuse is not None:
            raise self.refuse
        return 42

    async def _events(self):
        try:
            for reply in self.replies:
                yield reply
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed += 1


@pytest.fixture(autouse=True)
def openai_schema_check():
    """Overrides the suite's OpenAI body check: these routes speak Anthropic's protocol, and every response here is
    checked against the anthropic SDK's types instead (by `checked`, below)."""
    yield


@pytest.fixture
def pipeline() -> ScriptedPipeline:
    return ScriptedPipeline()


@pytest.fixture
def http(pipeline) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(router)
    app.state.pipeline = pipeline
    # What create_app gives every stream: the send timeout, the shutdown notice, the client-timeout counter.
    app.state.settings = Settings(models_file=Path("unused.yaml"))
    app.state.shutdown_notice = ShutdownNotice()
    app.state.metrics = Metrics()

    async def with_record(scope, receive, send):  # the request middleware's part: a record per request
        scope.setdefault("state", {})["record"] = RequestRecord(request_id="req_test", method="POST", path="/")
        await app(scope, receive, send)

    with TestClient(with_record, raise_server_exceptions=False) as client:
        yield client


def checked(response):
    problems = check_response(
        response.request.url.path, response.status_code, response.headers.get("content-type", ""), response.text
    )
    assert not problems, "\n".join(problems)
    return response


@pytest.fixture
def sdk(http) -> anthropic.Anthropic:
    """The official client, its HTTP sent through the test client."""

    def forward(request: httpx2.Request) -> httpx2.Response:
        # This SDK sends its key as a bearer token; older ones (and Anthropic's curl examples) as x-api-key.
        key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        assert key == "test-key" and "anthropic-version" in request.headers
        response = checked(http.request(request.method, request.url.path, content=request.content))
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-length"]
        return httpx2.Response(response.status_code, headers=headers, content=response.content)

    client = httpx2.Client(transport=httpx2.MockTransport(forward), base_url="http://testserver")
    return anthropic.Anthropic(
        api_key="test-key",
        base_url="http://testserver",
        http_client=client,
        max_retries=0,
        _strict_response_validation=True,
    )


def test_sdk_create(sdk, pipeline):
    message = sdk.messages.create(
        model="fake-model",
        max_tokens=16,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hi"}],
        stop_sequences=["END"],
        extra_body={"temperature": 0.5},  # this SDK no longer sends sampling fields; older clients do
    )
    assert message.content[0].text == "Hello there."
    assert (message.stop_reason, message.model, message.role) == ("end_turn", "fake-model", "assistant")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 2)
    assert message.id.startswith("msg_")
    (plan,) = pipeline.plans
    assert [turn.role for turn in plan.turns] == ["system", "user"]
    assert (plan.max_tokens, plan.stop, plan.sampling.temperature) == (16, ("END",), 0.5)
    assert pipeline.records[0].request_id == "req_test"
    assert pipeline.closed == 1


def test_sdk_stream(sdk, pipeline):
    with sdk.messages.stream(model="fake-model", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]) as stream:
        assert "".join(stream.text_stream) == "Hello there."
        final = stream.get_final_message()
    assert final.content[0].text == "Hello there."
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("end_turn", 7, 2)
    assert pipeline.closed == 1


def test_sdk_tool_use(sdk, pipeline):
    pipeline.replies = [
        *call_events(0, ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')),
        ChoiceEnd(choice=0, reason="tool_calls", completion_tokens=9),
    ]
    ask = {"model": "fake-model", "max_tokens": 64, "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    message = sdk.messages.create(**ask, tools=[TOOL], tool_choice={"type": "any"})
    (block,) = message.content
    assert (block.type, block.id, block.name, block.input) == ("tool_use", "toolu_1", "get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    with sdk.messages.stream(**ask, tools=[TOOL]) as stream:
        streamed = stream.get_final_message()
    assert streamed.content == message.content
    # the call goes back as history, with its result
    history = [
        *ask["messages"],
        {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "18 C"}]},
    ]
    sdk.messages.create(**{**ask, "messages": history}, tools=[TOOL])
    turns = pipeline.plans[-1].turns
    assert [turn.role for turn in turns] == ["user", "assistant", "tool"]
    assert turns[2].tool_call_id == "toolu_1"
    assert pipeline.plans[0].tools.choice == "required"


def test_sdk_count_tokens(sdk, pipeline):
    count = sdk.messages.count_tokens(model="fake-model", messages=[{"role": "user", "content": "Hi"}], tools=[TOOL])
    assert count.input_tokens == 42
    assert pipeline.plans[0].max_tokens is None


def test_sdk_raises_typed_errors(sdk, pipeline):
    with pytest.raises(anthropic.BadRequestError) as bad:
        sdk.messages.create(model="fake-model", max_tokens=0, messages=[{"role": "user", "content": "Hi"}])
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in bad.value.body["error"]["message"]
    pipeline.refuse = ModelNotFoundError("nope")
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.create(model="nope", max_tokens=16, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "Hi"}])


def test_sdk_stream_failure_midway(sdk, pipeline):
    pipeline.replies = pipeline.replies[:1]
    pipeline.fail = ModelCrashedError("fake-model")
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
        sdk.messages.stream(model="fake-model", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]) as stream,
    ):
        stream.get_final_message()
    assert pipeline.closed == 1


def test_raw_stream(http):
    response = checked(http.post("/v1/messages", json={**HELLO, "stream": True}))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert_stream(events)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_raw_stream_failure_is_an_error_event_then_the_end(http, pipeline):
    pipeline.fail = RuntimeError("secret internals")
    pipeline.replies = pipeline.replies[:1]
    response = checked(http.post("/v1/messages", json={**HELLO, "stream": True}))
    events = parse_sse(response.text)
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "api_error", "message": "The server had an error while processing your request."},
            "request_id": "req_test",
        },
    )
    assert "message_stop" not in [name for name, _ in events]


@pytest.mark.parametrize(
    ("paths", "body", "param"),
    [
        (MESSAGES, {**HELLO, "max_tokens": "16"}, "max_tokens"),
        (BOTH, {**HELLO, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
         "messages[0].content[0].source.type"),
        (BOTH, {**HELLO, "tools": [{"name": "bad name", "input_schema": {}}]}, "tools[0].name"),
        (BOTH, {**HELLO, "top_k": "40"}, "top_k"),
    ],
)  # fmt: skip
def test_raw_400_names_the_path(http, paths, body, param):
    for path in paths:
        response = checked(http.post(path, json=body))
        assert response.status_code == 400
        assert_error(response.json(), 400)
        assert param in response.json()["error"]["message"]
        assert response.json()["request_id"] == "req_test"


def test_raw_body_that_is_not_json(http):
    response = checked(http.post("/v1/messages", content=b"{not json", headers={"content-type": "text/plain"}))
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_refusal_before_the_stream_keeps_its_status_and_headers(http, pipeline):
    pipeline.refuse = OverloadedError("Busy.", retry_after=3)
    response = checked(http.post("/v1/messages", json={**HELLO, "stream": True}))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json()["error"] == {"type": "rate_limit_error", "message": "Busy."}


def test_event_stream_closes_the_reply_when_the_client_leaves_before_the_first_event():
    class Replies:
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    async def never_ready():
        await asyncio.Event().wait()
        yield b""

    async def gone() -> dict:
        return {"type": "http.disconnect"}

    async def stuck(message) -> None:
        await asyncio.Event().wait()

    replies = Replies()
    asyncio.run(
        EventStreamResponse(never_ready(), send_timeout_s=30, on_client_timeout=lambda: None, closing=replies)(
            {"type": "http"}, gone, stuck
        )
    )  # type: ignore[arg-type]
    assert replies.closed
