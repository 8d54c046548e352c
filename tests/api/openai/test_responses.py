"""The Responses API through the real app with fake engines, driven by the official openai client."""

from __future__ import annotations

import json

import openai
import pytest

from server.generation.json_schema_grammar import output_grammar
from tests.api.openai.test_routes import CALL_PIECES, assert_openai_error
from tests.fakes import FakeScript

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def api(client, loader) -> openai.OpenAI:
    loader.scripts["fake-model"] = FakeScript(n_ctx=4096)
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)


def test_text_input_with_instructions(api, loader):
    response = api.responses.create(model="fake-model", input="Hi", instructions="Be brief.", max_output_tokens=50)
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "Hello, world!"
    assert response.usage.output_tokens == 4 and response.usage.total_tokens > 4
    rendered = loader.engines["fake-model"].rendered[-1]
    assert rendered == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_message_input_and_incomplete_status(api, loader):
    response = api.responses.create(
        model="fake-model",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
        max_output_tokens=2,
    )
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Hello,"


def test_streaming_event_sequence(api):
    events = list(api.responses.create(model="fake-model", input="Hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello, world!"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == "Hello, world!" and events[-1].response.usage.output_tokens == 4


def test_function_tools_and_json_schema_format(api, loader):
    loader.scripts["fake-model"] = FakeScript(pieces=CALL_PIECES, n_ctx=4096)
    response = api.responses.create(model="fake-model", input="Weather in Paris?", tools=[WEATHER])
    [call] = response.output
    assert (
        call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    )
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    api.responses.create(
        model="fake-model", input="x", text={"format": {"type": "json_schema", "name": "s", "schema": schema}}
    )
    assert loader.engines["fake-model"].requests[-1].grammar == output_grammar(json.dumps(schema))


def test_previous_response_id_is_refused_clearly(client):
    body = {"model": "fake-model", "input": "Hi", "previous_response_id": "resp_1"}
    error = assert_openai_error(client.post("/v1/responses", json=body), 400, param="previous_response_id")
    assert "does not store responses" in error["message"]
    assert_openai_error(client.post("/v1/responses", json={"model": "fake-model"}), 400, param="input")
    assert_openai_error(client.post("/v1/responses", json={"model": "nope", "input": "x"}), 404)


@pytest.mark.parametrize("pieces", [(), ("Hi",)])
def test_an_empty_reply_has_the_same_output_streamed_or_not(api, loader, pieces):
    loader.scripts["fake-model"] = FakeScript(pieces=pieces, n_ctx=4096)
    whole = api.responses.create(model="fake-model", input="Hi")
    streamed = [e for e in api.responses.create(model="fake-model", input="Hi", stream=True)][-1].response
    assert [(o.type, o.content[0].text) for o in streamed.output] == [(o.type, o.content[0].text) for o in whole.output]
    assert [o.type for o in whole.output] == ["message"]


TWO_CALLS = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Par\\u00eds"}}, ' + (
    '{"name": "get_weather", "arguments": {"city": "Oslo"}}]}'
)


def test_calls_stream_as_they_come_and_the_sdk_assembles_the_response_not_streamed(api, loader):
    loader.scripts["fake-model"] = FakeScript(pieces=tuple(TWO_CALLS), n_ctx=4096)
    whole = api.responses.create(model="fake-model", input="Weather?", tools=[WEATHER])
    with api.responses.stream(model="fake-model", input="Weather?", tools=[WEATHER]) as stream:
        events = list(stream)
        streamed = stream.get_final_response()
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 10 and {e.output_index for e in deltas} == {0, 1}
    kinds = [e.type for e in events if e.type.startswith("response.output_item")]
    assert kinds == ["response.output_item.added", "response.output_item.done"] * 2

    def calls(response):
        return [(o.type, o.call_id, o.name, o.arguments, o.status) for o in response.output]

    assert [c[2:] for c in calls(streamed)] == [c[2:] for c in calls(whole)]
    assert [json.loads(o.arguments) for o in whole.output] == [{"city": "París"}, {"city": "Oslo"}]
    assert calls(streamed) == calls(events[-1].response)


def test_a_call_cut_short_is_incomplete_streamed_or_not(api, loader):
    cut = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Par'
    loader.scripts["fake-model"] = FakeScript(pieces=tuple(cut), n_ctx=4096)
    ask = {"model": "fake-model", "input": "Weather?", "tools": [WEATHER], "max_output_tokens": len(cut)}
    whole = api.responses.create(**ask)
    with api.responses.stream(**ask) as stream:
        events = list(stream)
    streamed = events[-1].response
    for response in (whole, streamed):
        assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
        [call] = response.output
        assert (call.type, call.name, call.arguments, call.status) == (
            "function_call",
            "get_weather",
            '{"city": "Par',
            "incomplete",
        )
