"""The check against OpenAI's published spec can fail: bodies and stream events that break it are reported, with
the JSON path at fault; the spec's own shapes pass."""

import json

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient
from starlette.testclient import _TestClientTransport

from tests.contracts.openai_contract import Contract, check_body, check_responses_of, check_sse, contract, sse_events

CHAT = "/v1/chat/completions"
GOOD_CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
GOOD_CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
}
TEXT_DELTA = {
    "type": "response.output_text.delta",
    "item_id": "msg_1",
    "output_index": 0,
    "content_index": 0,
    "delta": "a",
    "sequence_number": 3,
    "logprobs": [],
}
# The components the spec gaps are derived from, for a test document that has no others.
GAP_BASES = {
    "CreateCompletionResponse": {"properties": {"choices": {"items": {"properties": {"finish_reason": {}}}}}},
    "Embedding": {"properties": {"embedding": {}}},
    "ChatCompletionResponseMessage": {"properties": {}},
    "ChatCompletionStreamResponseDelta": {"properties": {}},
    "Batch": {"properties": {}},
    "OpenAIFile": {"properties": {}},
    "ListFilesResponse": {"properties": {"first_id": {}, "last_id": {}}},
    "ListBatchesResponse": {"properties": {"first_id": {}, "last_id": {}}},
}


def stream(*events: dict, done: bool = True) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + ("data: [DONE]\n\n" if done else "")


@pytest.fixture(autouse=True)
def openai_schema_check():
    """Overrides the suite's check: a test here hooks the transport itself, to see what the hook reports."""
    yield


def test_valid_bodies_pass_and_extra_fields_are_allowed_where_the_spec_allows_them():
    assert check_body(CHAT, GOOD_CHAT) == []
    card = {"id": "m", "object": "model", "created": 1, "owned_by": "me", "available": True, "loaded": False}
    assert check_body("/v1/models/m", card) == []
    assert check_body("/v1/models", {"object": "list", "data": [card]}) == []
    assert check_sse(CHAT, stream(GOOD_CHUNK)) == []
    assert check_sse("/v1/responses", f"event: {TEXT_DELTA['type']}\n" + stream(TEXT_DELTA, done=False)) == []


def test_missing_required_fields_wrong_types_wrong_enums_and_forbidden_nulls_are_reported():
    broken = {**GOOD_CHAT, "system_fingerprint": None, "created": "yesterday"}
    del broken["id"]
    broken["choices"] = [{**GOOD_CHAT["choices"][0], "finish_reason": "bored"}]
    problems = check_body(CHAT, broken)
    assert f"{CHAT} [CreateChatCompletionResponse] $: 'id' is a required property" in problems
    assert any("$.created: 'yesterday' is not of type 'integer'" in p for p in problems)
    assert any("$.system_fingerprint: None is not of type 'string'" in p for p in problems)
    assert any("$.choices[0].finish_reason: 'bored' is not one of ['stop', 'length'" in p for p in problems)


def test_inside_a_union_the_field_at_fault_is_named():
    card = {"id": "m", "object": "model", "created": 1, "owned_by": "me", "shutdown_date": 5}
    problems = check_body("/v1/models/m", card)
    assert problems == ["/v1/models/m [Model] $.shutdown_date: 5 matches none of the 2 shapes the spec allows here"]
    call = {"type": "function_call", "call_id": "c", "name": "f", "status": "completed"}
    added = {"type": "response.output_item.added", "output_index": 0, "sequence_number": 0, "item": call}
    assert check_sse("/v1/responses", stream(added, done=False)) == [
        "/v1/responses event 0: (response.output_item.added) [ResponseOutputItemAddedEvent] $.item: "
        "'arguments' is a required property"
    ]


def test_each_stream_event_is_checked_against_its_own_schema():
    chunk_without_delta = {**GOOD_CHUNK, "choices": [{"index": 0, "finish_reason": None}]}
    assert check_sse(CHAT, stream(GOOD_CHUNK, chunk_without_delta)) == [
        f"{CHAT} event 1: [CreateChatCompletionStreamResponse] $.choices[0]: 'delta' is a required property"
    ]
    no_logprobs = {key: value for key, value in TEXT_DELTA.items() if key != "logprobs"}
    made_up = {"type": "response.made_up"}
    problems = check_sse("/v1/responses", stream(TEXT_DELTA, no_logprobs, made_up, no_logprobs, done=False))
    assert problems == [
        "/v1/responses event 1 (and 1 more): (response.output_text.delta) [ResponseTextDeltaEvent] $: "
        "'logprobs' is a required property",
        "/v1/responses event 2: (response.made_up) [ResponseStreamEvent] $.type: "
        "'response.made_up' is not the type of any event in ResponseStreamEvent",
    ]
    assert check_sse(CHAT, "data: {not json\n\n") == [f"{CHAT} event 0: not JSON: '{{not json'"]


def test_error_bodies_and_error_events_are_checked():
    assert check_body("/v1/models", {"error": {"message": "x", "type": "t", "param": None}}, status=404) == [
        "/v1/models [ErrorResponse] $.error: 'code' is a required property"
    ]
    assert check_sse(CHAT, stream(GOOD_CHUNK, {"error": {"message": "x", "type": "t", "code": None}})) == [
        f"{CHAT} event 1: [ErrorResponse] $.error: 'param' is a required property"
    ]


def test_a_body_from_a_path_the_spec_does_not_describe_is_reported():
    assert check_body("/v1/unknown", {}) == ["/v1/unknown: status 200: no OpenAI schema is known for this path"]


def test_nullable_is_honoured_and_the_openapi_version_is_checked():
    thing = {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "integer", "nullable": True}}}
    spec = {"openapi": "3.0.3", "components": {"schemas": {"Thing": thing, **GAP_BASES}}}
    contract = Contract(spec)
    assert contract.violations("Thing", {"x": "a", "y": None}) == []
    assert contract.violations("Thing", {"x": None}) == ["[Thing] $.x: None is not of type 'string'"]
    with pytest.raises(ValueError, match=r"version '2\.0'"):
        Contract({**spec, "openapi": "2.0"})


def test_sse_events_joins_multi_line_data_and_ignores_other_fields():
    assert sse_events("event: a\ndata: 1\ndata: 2\n\n: comment\n\nid: 3\ndata:[DONE]\n\n") == ["1\n2", "[DONE]"]


def test_the_hook_checks_each_v1_body_and_stream_a_client_receives(monkeypatch):
    app = FastAPI()
    no_delta = {**GOOD_CHUNK, "choices": [{"index": 0, "finish_reason": None}]}

    @app.get("/v1/models/{name}")
    def model(name: str) -> JSONResponse:
        return JSONResponse({"id": name, "object": "model", "created": 1})

    @app.post("/v1/chat/completions")
    def chat() -> StreamingResponse:
        return StreamingResponse(iter([stream(GOOD_CHUNK, no_delta)]), media_type="text/event-stream")

    @app.get("/v1/messages")
    @app.get("/health")
    def not_openai() -> JSONResponse:
        return JSONResponse({"anything": 1}, status_code=418)

    violations: list[str] = []
    check_responses_of(_TestClientTransport, monkeypatch, violations)
    with TestClient(app) as client:
        client.get("/v1/models/m")
        client.get("/health")
        client.get("/v1/messages")
        with client.stream("POST", CHAT) as response:
            response.read()
        client.get("/v1/nowhere")
    assert violations == [
        "/v1/models/m [Model] $: 'owned_by' is a required property",
        f"{CHAT} event 1: [CreateChatCompletionStreamResponse] $.choices[0]: 'delta' is a required property",
        "/v1/nowhere [ErrorResponse] $: 'error' is a required property",
    ]


def test_reasoning_content_is_the_one_declared_extension_of_chat_messages_and_deltas():
    message = {"role": "assistant", "content": "4", "refusal": None, "reasoning_content": "2 + 2 is 4."}
    assert contract().violations("ChatCompletionResponseMessage", message) == []
    assert contract().violations("ChatCompletionStreamResponseDelta", {"reasoning_content": "2 + 2"}) == []
    wrong = contract().violations("ChatCompletionStreamResponseDelta", {"reasoning_content": 4})
    assert wrong and "reasoning_content" in wrong[0]
