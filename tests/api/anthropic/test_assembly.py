"""The pipeline's reply as Anthropic's answer: the whole Message, the stream's events (their order and content),
and errors in Anthropic's shape, each checked against the anthropic SDK's own types."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.api.anthropic import sse
from server.api.anthropic.assembly import MessageStream, build_message, new_message_id
from server.api.anthropic.errors import error_body, error_event, error_type
from server.errors import (
    APIError,
    AuthenticationError,
    ContextLengthExceededError,
    ForbiddenHostError,
    InternalError,
    InvalidRequestError,
    ModelCrashedError,
    ModelNotFoundError,
    ModelUnavailableError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    SlowClientError,
)
from server.generation.reply import (
    ChoiceEnd,
    FinishedChoice,
    ReplyEvent,
    TextPiece,
    ToolCall,
    ToolCallArguments,
    ToolCallStart,
    call_events,
)
from tests.contracts.anthropic_contract import (
    assert_error,
    assert_message,
    assert_stream,
    check_stream,
    final_message,
    parse_sse,
)

WEATHER = ToolCall(id="call_abc", name="get_weather", arguments='{"city": "Paris"}')
TIME = ToolCall(id="call_def", name="get_time", arguments='{"zone": "CET", "precise": true}')


def message(text="", calls=(), reason="stop", tokens=3, stop_sequence=None):
    end = ChoiceEnd(choice=0, reason=reason, completion_tokens=tokens, stop_sequence=stop_sequence)
    choice = FinishedChoice(text=text, calls=tuple(calls), end=end, logprobs=())
    body = build_message(choice, message_id="msg_1", model="fake-model", input_tokens=11).model_dump(mode="json")
    assert_message(body)
    return body


def stream_of(*replies: ReplyEvent) -> list[tuple[str, dict]]:
    stream = MessageStream(message_id="msg_1", model="fake-model", input_tokens=11)
    events = stream.start()
    for reply in replies:
        events += stream.feed(reply)
    assert stream.done
    assert_stream(events)
    return events


def test_text_reply():
    assert message("Hello there.", tokens=4) == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello there."}],
        "model": "fake-model",
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": 4},
    }


def test_tool_use_reply():
    body = message(calls=[WEATHER, TIME], reason="tool_calls")
    assert body["stop_reason"] == "tool_use"
    assert body["content"] == [
        {"type": "tool_use", "id": "toolu_abc", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_def", "name": "get_time", "input": {"zone": "CET", "precise": True}},
    ]


def test_tool_use_ids_and_empty_arguments():
    calls = [ToolCall(id="toolu_x", name="ping", arguments=""), ToolCall(id="7", name="ping", arguments=" {} ")]
    body = message(calls=calls, reason="tool_calls")
    assert [(block["id"], block["input"]) for block in body["content"]] == [("toolu_x", {}), ("toolu_7", {})]


def test_arguments_read_as_the_sdk_reads_a_stream_of_them():
    calls = [ToolCall("c1", "f", "[1]"), ToolCall("c2", "f", '{"a": {"b": "c'), ToolCall("c3", "f", "{]")]
    body = message(calls=calls, reason="tool_calls")
    assert [block["input"] for block in body["content"]] == [{}, {"a": {}}, {}]


def test_stop_sequence_and_max_tokens():
    body = message("The answer", stop_sequence="\n\nHuman:")
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "\n\nHuman:")
    body = message("The answer is", reason="length", tokens=16)
    assert (body["stop_reason"], body["stop_sequence"], body["usage"]["output_tokens"]) == ("max_tokens", None, 16)


def test_empty_reply_has_no_blocks():
    assert message("")["content"] == []


def test_message_ids_are_unique():
    first, second = new_message_id(), new_message_id()
    assert first.startswith("msg_") and first != second


def test_text_stream_order_and_content():
    events = stream_of(
        TextPiece(choice=0, text="Hel"),
        TextPiece(choice=0, text=""),  # only log probabilities: no event
        TextPiece(choice=0, text="lo"),
        ChoiceEnd(choice=0, reason="stop", completion_tokens=2),
    )
    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "fake-model",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 11, "output_tokens": 0},
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 2},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def test_tool_use_stream_sends_each_input_as_it_comes():
    events = stream_of(
        TextPiece(choice=0, text="Looking."),
        ToolCallStart(0, WEATHER.id, WEATHER.name),
        ToolCallArguments(0, '{"city": '),
        ToolCallArguments(0, '"Paris"}'),
        *call_events(0, TIME),
        ChoiceEnd(choice=0, reason="tool_calls", completion_tokens=20),
    )
    names = [(name, data.get("index")) for name, data in events]
    assert names == [
        ("message_start", None),
        ("ping", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    start, deltas = events[5][1], [events[6][1]["delta"], events[7][1]["delta"]]
    assert start["content_block"] == {"type": "tool_use", "id": "toolu_abc", "name": "get_weather", "input": {}}
    assert [delta["type"] for delta in deltas] == ["input_json_delta"] * 2
    assert json.loads("".join(delta["partial_json"] for delta in deltas)) == {"city": "Paris"}
    assert events[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


@pytest.mark.parametrize(
    ("text", "calls", "end"),
    [
        ("Hello there.", (), ChoiceEnd(choice=0, reason="stop", completion_tokens=3)),
        ("The answer", (), ChoiceEnd(choice=0, reason="stop", completion_tokens=2, stop_sequence="END")),
        ("Long", (), ChoiceEnd(choice=0, reason="length", completion_tokens=16)),
        ("", (WEATHER, TIME), ChoiceEnd(choice=0, reason="tool_calls", completion_tokens=9)),
        ("", (), ChoiceEnd(choice=0, reason="stop", completion_tokens=1)),
        # cut short by the token limit inside the arguments: the input holds what was written, as the SDK reads it
        (
            "",
            (ToolCall("call_1", "f", '{"a": 1, "b": [2, 3'),),
            ChoiceEnd(choice=0, reason="length", completion_tokens=9),
        ),
        ("", (ToolCall("call_1", "f", '{"a": "unfinish'),), ChoiceEnd(choice=0, reason="length", completion_tokens=9)),
    ],
)
def test_a_stream_folds_into_the_same_message_as_the_whole_answer(text, calls, end):
    """The SDK's own accumulator (`stream.get_final_message()`) rebuilds the non-streamed Message exactly."""
    replies: list[ReplyEvent] = [TextPiece(choice=0, text=text[:2]), TextPiece(choice=0, text=text[2:])]
    for call in calls:
        replies += [ToolCallStart(0, call.id, call.name)]
        replies += [ToolCallArguments(0, call.arguments[i : i + 3]) for i in range(0, len(call.arguments), 3)]
    events = stream_of(*replies, end)
    whole = message(text, calls, end.reason, end.completion_tokens, end.stop_sequence)
    assert {k: v for k, v in final_message(events).items() if v is not None} == {
        k: v for k, v in whole.items() if v is not None
    }


def test_stream_ignores_events_after_its_end_and_of_other_choices():
    stream = MessageStream(message_id="msg_1", model="m", input_tokens=1)
    stream.start()
    assert stream.feed(TextPiece(choice=1, text="other")) == []
    assert stream.feed(ChoiceEnd(choice=0, reason="stop", completion_tokens=0))[-1][0] == "message_stop"
    assert stream.feed(TextPiece(choice=0, text="late")) == []


def test_the_stream_contract_catches_a_broken_stream():
    """The contract check itself can fail: a block left open, a missing message_stop, a misspelt field."""
    events = stream_of(TextPiece(choice=0, text="Hi"), ChoiceEnd(choice=0, reason="stop", completion_tokens=1))
    assert check_stream([e for e in events if e[0] != "content_block_stop"])
    assert check_stream(events[:-1])
    misspelt = [*events[:-2], ("message_delta", {**events[-2][1], "usage": {"output_token": 1}}), events[-1]]
    assert check_stream(misspelt)
    extra = [(events[0][0], {**events[0][1], "extra": 1}), *events[1:]]
    assert any("no SDK type declares" in problem for problem in check_stream(extra))


STATUSES = [
    (InvalidRequestError("Bad.", param="messages"), 400, "invalid_request_error"),
    (ContextLengthExceededError("Too long."), 400, "invalid_request_error"),
    (AuthenticationError(), 401, "authentication_error"),
    (ForbiddenHostError("evil.example"), 403, "permission_error"),
    (ModelNotFoundError("nope"), 404, "not_found_error"),
    (PayloadTooLargeError(1024), 413, "request_too_large"),
    (OverloadedError("Busy."), 429, "rate_limit_error"),
    (InternalError(), 500, "api_error"),
    (ModelUnavailableError("Loading."), 503, "overloaded_error"),
    (ModelCrashedError("fake-model"), 503, "overloaded_error"),
    (RequestTimeoutError(30), 504, "timeout_error"),
]


@pytest.mark.parametrize(("error", "status", "kind"), STATUSES)
def test_error_bodies_by_status(error: APIError, status, kind):
    body = error_body(error, "req_1")
    assert error.status_code == status
    assert body == {
        "type": "error",
        "error": {"type": kind, "message": body["error"]["message"]},
        "request_id": "req_1",
    }
    assert body["error"]["message"].endswith(error.message)
    assert_error(body, status)


def test_error_types_of_other_statuses():
    assert [error_type(status) for status in (405, 408, 409, 529, 502)] == [
        "invalid_request_error",
        "timeout_error",
        "invalid_request_error",
        "overloaded_error",
        "api_error",
    ]


def test_error_message_leads_with_the_param_and_hides_internals():
    assert error_body(InvalidRequestError("Too long.", param="messages"))["error"]["message"] == "messages: Too long."
    named = InvalidRequestError("Invalid value for 'max_tokens': at most 8.", param="max_tokens")
    assert error_body(named)["error"]["message"] == "Invalid value for 'max_tokens': at most 8."
    assert "request_id" not in error_body(named)
    assert error_body(InternalError())["error"] == {
        "type": "api_error",
        "message": "The server had an error while processing your request.",
    }


def test_mid_stream_error_event():
    name, data = error_event(SlowClientError(), "req_1")
    assert name == "error"
    assert data["type"] == "error" and data["error"]["type"] == "timeout_error"
    assert sse.frame(name, data) == (
        b'event: error\ndata: {"type":"error","error":{"type":"timeout_error","message":'
        + json.dumps(SlowClientError().message).encode()
        + b'},"request_id":"req_1"}\n\n'
    )


async def _replies(*items, fail: Exception | None = None, closed: list | None = None):
    try:
        for item in items:
            yield item
        if fail is not None:
            raise fail
    finally:
        if closed is not None:
            closed.append(True)


def _encoded(replies) -> list[tuple[str, dict]]:
    stream = MessageStream(message_id="msg_1", model="fake-model", input_tokens=3)

    async def run() -> bytes:
        return b"".join([chunk async for chunk in sse.encode(sse.message_events(replies, stream), "req_1")])

    return parse_sse(asyncio.run(run()).decode())


def test_encoded_stream_is_named_events():
    closed: list = []
    end = ChoiceEnd(choice=0, reason="stop", completion_tokens=1)
    events = _encoded(_replies(TextPiece(choice=0, text="Hi ünïcode"), end, closed=closed))
    assert_stream(events)
    assert events[2][1]["content_block"] == {"type": "text", "text": ""}
    assert events[3][1]["delta"]["text"] == "Hi ünïcode"
    assert closed == [True]


def test_a_failure_mid_stream_is_an_error_event_then_the_end():
    closed: list = []
    events = _encoded(_replies(TextPiece(choice=0, text="Hi"), fail=ModelCrashedError("fake-model"), closed=closed))
    assert_stream(events)
    assert [name for name, _ in events][-2:] == ["content_block_delta", "error"]
    assert events[-1][1]["error"]["type"] == "overloaded_error"
    assert closed == [True]


def test_an_unexpected_failure_mid_stream_hides_its_details(caplog):
    events = _encoded(_replies(TextPiece(choice=0, text="Hi"), fail=KeyError("secret internals")))
    assert_stream(events)
    assert events[-1][1]["error"] == {"type": "api_error", "message": InternalError().message}
    assert "secret" not in json.dumps(events)


def test_a_reply_that_never_ends_is_an_error_event():
    events = _encoded(_replies(TextPiece(choice=0, text="Hi")))
    assert_stream(events)
    assert events[-1][0] == "error"
