"""Tool calls in each family's own syntax, over HTTP with a scripted engine: the openai SDK's stream helper
assembles the same calls (and text before them) as the non-streamed response, whatever pieces the reply comes in;
a forced call's grammar is the family's syntax, and the syntax's control tokens are asked to be shown."""

from __future__ import annotations

import json

import openai
import pytest

from server.generation import tool_dialects
from tests.fakes import FakeScript

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
MESSAGES = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
ARGUMENTS = {"city": 'Pa\\"ris é'}  # an escape and a non-ASCII letter, which pieces may cut anywhere
PARIS, OSLO = json.dumps(ARGUMENTS), json.dumps({"city": "Oslo"})
REPLIES = {  # dialect: a reply with text first, then two calls
    None: '{"tool_calls": [{"name": "get_weather", "arguments": %s}, {"name": "get_weather", "arguments": %s}]}',
    "hermes": 'Checking. <tool_call>\n{"name": "get_weather", "arguments": %s}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": %s}\n</tool_call>',
    "llama3": '{"name": "get_weather", "parameters": %s}; {"name": "get_weather", "parameters": %s}',
    "mistral": 'Checking.[TOOL_CALLS][{"name": "get_weather", "arguments": %s, "id": "a1B2c3D4e"}, '
    '{"name": "get_weather", "arguments": %s, "id": "Zz9Yy8Xx7"}]',
    "deepseek": "Checking.<｜tool▁calls▁begin｜>"  # noqa: RUF001
    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n%s\n```<｜tool▁call▁end｜>\n"  # noqa: RUF001
    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n%s\n```<｜tool▁call▁end｜>"  # noqa: RUF001
    "<｜tool▁calls▁end｜>",  # noqa: RUF001
    "deepseek_v31": "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>%s<｜tool▁call▁end｜>"  # noqa: RUF001
    "<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>%s<｜tool▁call▁end｜><｜tool▁calls▁end｜>",  # noqa: RUF001
    "phi4mini": 'Checking.<|tool_call|>[{"name": "get_weather", "arguments": %s}, '
    '{"name": "get_weather", "arguments": %s}]<|/tool_call|>',
}


def pieces(text: str, size: int) -> tuple[str, ...]:
    return tuple(text[i : i + size] for i in range(0, len(text), size))


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
@pytest.mark.parametrize("dialect", list(REPLIES))
def test_streamed_calls_assemble_to_the_non_streamed_ones(client, loader, dialect, size):
    reply = REPLIES[dialect] % (PARIS, OSLO)
    loader.scripts["fake-model"] = FakeScript(pieces=pieces(reply, size), n_ctx=8192, tool_dialect=dialect)
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    whole = api.chat.completions.create(model="fake-model", messages=MESSAGES, tools=[WEATHER])
    with api.chat.completions.stream(model="fake-model", messages=MESSAGES, tools=[WEATHER]) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        streamed = stream.get_final_completion()
    for completion in (whole, streamed):
        [choice] = completion.choices
        assert choice.finish_reason == "tool_calls"
        expected_text = None if dialect in (None, "llama3") else "Checking."
        assert choice.message.content == expected_text
        calls = choice.message.tool_calls
        assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
        assert [json.loads(c.function.arguments) for c in calls] == [ARGUMENTS, {"city": "Oslo"}]
    if dialect == "mistral":  # ids as Mistral's are (nine letters and digits), given when each call begins
        for completion in (whole, streamed):
            assert all(len(c.id) == 9 and c.id.isalnum() for c in completion.choices[0].message.tool_calls)
    # Each call begins once, with its id and name; then its arguments come in pieces that join into its JSON.
    deltas = [call for chunk in chunks for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices]
    begun = [d for d in deltas if d.id is not None]
    assert [(d.index, d.function.name, d.function.arguments) for d in begun] == [
        (0, "get_weather", ""),
        (1, "get_weather", ""),
    ]
    assert [d.id for d in begun] == [c.id for c in streamed.choices[0].message.tool_calls]
    for index, arguments in ((0, ARGUMENTS), (1, {"city": "Oslo"})):
        given = [d.function.arguments for d in deltas if d.index == index and d.id is None]
        assert json.loads("".join(given)) == arguments
        assert len(given) > 1 or size == 1000  # a reply that comes in pieces gives its arguments in pieces
    shown = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert shown == (expected_text or "")  # no markup of the call syntax reaches the content


@pytest.mark.parametrize("dialect", [d for d in REPLIES if d is not None])
def test_a_forced_call_uses_the_familys_grammar_and_shows_its_control_tokens(client, loader, dialect):
    reply = REPLIES[dialect] % (PARIS, OSLO)
    loader.scripts["fake-model"] = FakeScript(pieces=(reply,), n_ctx=8192, tool_dialect=dialect)
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    api.chat.completions.create(model="fake-model", messages=MESSAGES, tools=[WEATHER], tool_choice="required")
    [request] = loader.engines["fake-model"].requests
    syntax = tool_dialects.dialect(dialect)
    assert request.shown_tokens == syntax.markers
    rules = dict(line.split(" ::= ", 1) for line in request.grammar.splitlines() if " ::= " in line)
    forced = (rules["root"] + " " + rules["call"]).replace("\\n", "\n").replace('\\"', '"')
    # The family's opening, or for a syntax whose calls are bare JSON (Llama 3's, the generic one) the object.
    assert (syntax.opening if syntax.opening and not syntax.json_at_start else '"{"name": ') in forced
    assert "get_weather" in forced


def test_plain_text_with_tools_streams_as_text_and_shows_no_control_tokens_without_tools(client, loader):
    loader.scripts["fake-model"] = FakeScript(pieces=("Hello", " [TOOL", "S] are", " here"), tool_dialect="mistral")
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    reply = api.chat.completions.create(model="fake-model", messages=MESSAGES, tools=[WEATHER])
    assert reply.choices[0].message.content == "Hello [TOOLS] are here" and reply.choices[0].finish_reason == "stop"
    api.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert [r.shown_tokens for r in loader.engines["fake-model"].requests] == [("[TOOL_CALLS]",), ()]


def test_responses_keep_text_written_before_calls(client, loader):
    reply = REPLIES["hermes"] % (PARIS, OSLO)
    loader.scripts["fake-model"] = FakeScript(pieces=(reply,), n_ctx=8192, tool_dialect="hermes")
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    body = client.post("/v1/responses", json={"model": "fake-model", "input": "Weather?", "tools": [tool]}).json()
    kinds = [item["type"] for item in body["output"]]
    assert kinds == ["message", "function_call", "function_call"]
    assert body["output"][0]["content"][0]["text"] == "Checking."
