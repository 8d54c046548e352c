"""Anthropic's Messages API through the real server and llama.cpp, driven by the official `anthropic` SDK; every
body and stream is also checked against the SDK's own types."""

from __future__ import annotations

import json

import anthropic
import httpx
import httpx2
import pytest

from tests.contracts.anthropic_contract import check_response
from tests.real.conftest import ServerProcess

SMOL = "smollm2-135m-instruct"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


@pytest.fixture
def checked_client(server: ServerProcess) -> anthropic.Anthropic:
    """The SDK over a transport that checks every Anthropic body it receives (a violation fails the test)."""
    problems: list[str] = []

    class Checked(httpx2.HTTPTransport):  # the SDK's own HTTP library
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            response = super().handle_request(request)
            response.read()
            problems.extend(
                check_response(
                    request.url.path, response.status_code, response.headers.get("content-type", ""), response.text
                )
            )
            return response

    client = anthropic.Anthropic(
        base_url=server.url,
        api_key="unused",
        max_retries=0,
        http_client=httpx2.Client(transport=Checked(), timeout=120),
    )
    yield client
    assert not problems, "\n".join(problems)


def test_create_answers_a_message_with_usage(checked_client: anthropic.Anthropic):
    message = checked_client.messages.create(
        model=SMOL,
        max_tokens=24,
        system="You are terse.",
        messages=[{"role": "user", "content": "Say hello."}],
        extra_body={"temperature": 0},
    )
    assert message.role == "assistant" and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 24


def test_stream_helper_text_equals_the_final_message(checked_client: anthropic.Anthropic):
    with checked_client.messages.stream(
        model=SMOL,
        max_tokens=20,
        messages=[{"role": "user", "content": "Count to five."}],
        extra_body={"temperature": 0},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0


def test_stop_sequences_end_with_stop_sequence(checked_client: anthropic.Anthropic):
    message = checked_client.messages.create(
        model=SMOL,
        max_tokens=60,
        messages=[{"role": "user", "content": "Write the numbers 1 to 20 separated by spaces."}],
        stop_sequences=["5"],
        extra_body={"temperature": 0},
    )
    if message.stop_reason == "stop_sequence":
        assert message.stop_sequence == "5" and "5" not in message.content[0].text


def test_tool_use_round_trip(checked_client: anthropic.Anthropic):
    question = {"role": "user", "content": "What is the weather in Paris?"}
    message = checked_client.messages.create(
        model=SMOL,
        max_tokens=120,
        messages=[question],
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        extra_body={"temperature": 0},
    )
    assert message.stop_reason == "tool_use"
    [use] = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
    answer = checked_client.messages.create(
        model=SMOL,
        max_tokens=40,
        tools=[WEATHER],
        messages=[
            question,
            {"role": "assistant", "content": message.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}]},
        ],
    )
    assert answer.content and answer.usage.input_tokens > message.usage.input_tokens


def test_count_tokens_matches_the_prompt_of_a_reply(checked_client: anthropic.Anthropic):
    messages = [{"role": "user", "content": "Hi there"}]
    counted = checked_client.messages.count_tokens(model=SMOL, messages=messages)
    message = checked_client.messages.create(model=SMOL, max_tokens=4, messages=messages)
    assert counted.input_tokens == message.usage.input_tokens


def test_errors_come_in_anthropics_shape(checked_client: anthropic.Anthropic, server: ServerProcess):
    with pytest.raises(anthropic.BadRequestError) as caught:
        checked_client.messages.create(model=SMOL, max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["type"] == "error"
    with pytest.raises(anthropic.NotFoundError):
        checked_client.messages.create(model="claude-nope", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    raw = httpx.post(server.url + "/v1/messages", content=b"{not json", timeout=30)
    assert raw.status_code == 400 and raw.json()["type"] == "error"
    assert json.loads(raw.text)["error"]["type"] == "invalid_request_error"
