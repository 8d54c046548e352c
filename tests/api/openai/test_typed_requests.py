"""Every nested request object is typed: a wrong shape anywhere is a 400 whose `param` is its path, and the
next request is served. Also the loc -> param mapping itself, and the log line for unknown fields."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import BaseModel

from server.api.openai.request_parts import MAX_CONTENT_PARTS, MAX_LOGIT_BIAS, MAX_TOOLS, NAME_PATTERN
from server.errors import field_path, from_validation_errors, param_of
from server.http.deps import request_body_doc
from server.models.registry import ModelRegistry
from tests.api.openai.test_routes import CHAT, HELLO, assert_openai_error, assert_still_serving
from tests.fakes import FakeScript, fake_spec

RESPONSES, EMBEDDINGS, COMPLETIONS = "/v1/responses", "/v1/embeddings", "/v1/completions"
FUNCTION = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
TOOL = {"type": "function", "function": FUNCTION}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
GOOD = {
    CHAT: HELLO,
    COMPLETIONS: {"model": "fake-model", "prompt": "Hi"},
    RESPONSES: {"model": "fake-model", "input": "Hi"},
    EMBEDDINGS: {"model": "other-model", "input": "Hi"},
}


@pytest.fixture
def registry(loader) -> ModelRegistry:
    """The shared fixture's models, with `other-model` an embedding model (`embedding: true` in models.yaml)."""
    other = fake_spec("other-model").model_copy(update={"embedding": True})
    return ModelRegistry([fake_spec("fake-model", "gpt-4o-mini"), other], loader)


@pytest.fixture(autouse=True)
def roomy(loader):
    """Room for tool instructions (the fake engine counts a token per character); an embedding model."""
    loader.scripts["fake-model"] = FakeScript(n_ctx=4096)
    loader.scripts["other-model"] = FakeScript(embedding_dims=8, n_ctx=4096)


def chat(**fields):
    return {**HELLO, **fields}


def history(*messages):
    return {**HELLO, "messages": [*messages, {"role": "user", "content": "Hi"}]}


def responses(**fields):
    return {"model": "fake-model", "input": "Hi", **fields}


def tool(**function):
    return {"type": "function", "function": {**FUNCTION, **function}}


def assistant(**fields):
    return {"role": "assistant", "content": None, "tool_calls": [CALL], **fields}


CHAT_CASES = [
    # logit_bias: keys are decimal token ids (not just any Unicode digit), and there are at most 300
    (chat(logit_bias={"²": 1}), "logit_bias.²"),
    (chat(reasoning_effort=5), "reasoning_effort"),
    (chat(reasoning_effort="extreme"), "reasoning_effort"),
    (chat(logit_bias={"12345678901": 1}), "logit_bias.12345678901"),
    (chat(logit_bias={"1e3": 1}), "logit_bias.1e3"),
    (chat(logit_bias={"5": "x"}), "logit_bias.5"),
    (chat(logit_bias={str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}), "logit_bias"),
    (chat(logit_bias=[1]), "logit_bias"),
    # tools
    (chat(tools=[tool(name=["a"])]), "tools[0].function.name"),
    (chat(tools=[tool(name="get weather")]), "tools[0].function.name"),
    (chat(tools=[tool(name="f" * 65)]), "tools[0].function.name"),
    (chat(tools=[tool(description=5)]), "tools[0].function.description"),
    (chat(tools=[tool(description="d" * 40_000)]), "tools[0].function.description"),
    (chat(tools=[tool(parameters=["x"])]), "tools[0].function.parameters"),
    (chat(tools=[tool(strict="yes")]), "tools[0].function.strict"),
    (chat(tools=[{"type": "function", "function": "get_weather"}]), "tools[0].function"),
    (chat(tools=[{"type": 5}]), "tools[0].type"),
    (chat(tools=["get_weather"]), "tools[0]"),
    (chat(tools=[TOOL] * (MAX_TOOLS + 1)), "tools"),
    (chat(tools={"get_weather": TOOL}), "tools"),
    # tool_choice
    (chat(tools=[TOOL], tool_choice={"type": "function", "function": "a"}), "tool_choice.function"),
    (chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": 5}}), "tool_choice.function.name"),
    (chat(tools=[TOOL], tool_choice={"type": "allowed_tools"}), "tool_choice.type"),
    (chat(tools=[TOOL], tool_choice=5), "tool_choice"),
    (chat(tools=[TOOL], tool_choice="sometimes"), "tool_choice"),
    (chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice.function.name"),
    # messages: by role; assistant tool calls; tool results; content parts
    (history(assistant(tool_calls=[{**CALL, "function": "get_weather"}])), "messages[0].tool_calls[0].function"),
    (
        history(assistant(tool_calls=[{**CALL, "function": {"name": "f"}}])),
        "messages[0].tool_calls[0].function.arguments",
    ),
    (
        history(assistant(tool_calls=[{**CALL, "function": {"name": "f", "arguments": {}}}])),
        "messages[0].tool_calls[0].function.arguments",
    ),
    (history(assistant(tool_calls=[{**CALL, "type": "custom"}])), "messages[0].tool_calls[0].type"),
    (history(assistant(tool_calls=[{**CALL, "id": 7}])), "messages[0].tool_calls[0].id"),
    (history(assistant(tool_calls=["call_1"])), "messages[0].tool_calls[0]"),
    (history(assistant(tool_calls=CALL)), "messages[0].tool_calls"),
    (history(assistant(tool_calls=[CALL] * 129)), "messages[0].tool_calls"),
    (history(assistant(content=[{"type": "refusal", "refusal": 5}])), "messages[0].content[0].refusal"),
    (history(assistant(), {"role": "tool", "content": "18C"}), "messages[1].tool_call_id"),
    (history(assistant(), {"role": "tool", "tool_call_id": "call_1", "content": None}), "messages[1].content"),
    (history({"role": "user", "content": "Hi", "name": 5}), "messages[0].name"),
    (history({"role": "user"}), "messages[0].content"),
    (
        history({"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}),
        "messages[0].content[0].image_url.url",
    ),
    (history({"role": "user", "content": [{"type": "text", "text": 5}]}), "messages[0].content[0].text"),
    (
        history({"role": "user", "content": [{"type": "text", "text": "a"}] * (MAX_CONTENT_PARTS + 1)}),
        "messages[0].content",
    ),
    (history({"role": "system", "content": {"text": "x"}}), "messages[0].content"),
    (history({"role": "function", "name": "f", "content": "x"}), "messages[0].role"),
    (history({"content": "x"}), "messages[0].role"),
    (history("Hi"), "messages[0]"),
    # response_format
    (chat(response_format="json"), "response_format"),
    (chat(response_format={"type": 5}), "response_format.type"),
    (chat(response_format={"type": "json_schema", "json_schema": "x"}), "response_format.json_schema"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "a b"}}), "response_format.json_schema.name"),
    (
        chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": []}}),
        "response_format.json_schema.schema",
    ),
    (
        chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "strict": "x"}}),
        "response_format.json_schema.strict",
    ),
    (
        chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "description": 1}}),
        "response_format.json_schema.description",
    ),
]


@pytest.mark.parametrize(("body", "param"), CHAT_CASES)
def test_a_wrong_chat_body_is_a_400_naming_the_path(client, body, param):
    error = assert_openai_error(client.post(CHAT, json=body), 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert_still_serving(client)


RESPONSES_CASES = [
    (responses(text={"format": "x"}), "text.format"),
    (responses(text={"format": {"type": "xml"}}), "text.format.type"),
    (responses(text={"format": {"type": "json_schema", "name": "s"}}), "text.format.schema"),
    (responses(text={"format": {"type": "json_schema", "name": "a b", "schema": {}}}), "text.format.name"),
    (responses(text={"format": {"type": "json_schema", "name": "s", "schema": {}, "strict": 1}}), "text.format.strict"),
    (responses(text={"verbosity": "loud"}), "text.verbosity"),
    (responses(text="json"), "text"),
    (responses(tools=[{"type": "function", "name": ["a"]}]), "tools[0].name"),
    (responses(tools=[{"type": "function", "name": "f", "parameters": "x"}]), "tools[0].parameters"),
    (
        responses(tools=[{"type": "function", "name": "f", "parameters": {"type": "object", "not": {}}}]),
        "tools[0].parameters.not",
    ),
    (responses(tools=[{"type": "function", "name": "f"}] * (MAX_TOOLS + 1)), "tools"),
    (responses(tools=[{"type": "function", "name": "f"}], tool_choice={"type": "function"}), "tool_choice.name"),
    (
        responses(tools=[{"type": "function", "name": "f"}], tool_choice={"type": "function", "name": "g"}),
        "tool_choice.name",
    ),
    (responses(tools=[{"type": "function", "name": "f"}], tool_choice={"type": "file_search"}), "tool_choice.type"),
    (responses(tools=[{"type": "function", "name": "f"}], tool_choice=["auto"]), "tool_choice"),
    (
        responses(input=[{"role": "user", "content": [{"type": "input_image", "image_url": 5}]}]),
        "input[0].content[0].image_url",
    ),
    (
        responses(input=[{"role": "user", "content": [{"type": "input_text", "text": None}]}]),
        "input[0].content[0].text",
    ),
    (responses(input=[{"role": "tool", "content": "x"}]), "input[0].role"),
    (responses(input=[{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]), "input[0].arguments"),
    (responses(input=[{"type": "function_call_output", "call_id": 5, "output": "x"}]), "input[0].call_id"),
    (responses(input=[{"type": "function_call_output", "call_id": "c", "output": {"a": 1}}]), "input[0].output"),
    (responses(input=[{"type": "reasoning", "summary": "thought"}]), "input[0].summary"),
    (responses(reasoning={"effort": "extreme"}), "reasoning.effort"),
    (responses(reasoning="high"), "reasoning"),
    (responses(input=["Hi"]), "input[0]"),
    (responses(metadata={str(i): "v" for i in range(17)}), "metadata"),
    (responses(metadata={"k": 5}), "metadata.k"),
]


@pytest.mark.parametrize(("body", "param"), RESPONSES_CASES)
def test_a_wrong_responses_body_is_a_400_naming_the_path(client, body, param):
    error = assert_openai_error(client.post(RESPONSES, json=body), 400, param=param)
    assert error["type"] == "invalid_request_error" and param in error["message"]
    assert client.post(RESPONSES, json=GOOD[RESPONSES]).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (COMPLETIONS, {**GOOD[COMPLETIONS], "logit_bias": {"²": 1}}, "logit_bias.²"),
        # A chat parameter, not one of completions: it was a 500 (read as a chat request's typed field).
        (COMPLETIONS, {**GOOD[COMPLETIONS], "response_format": {"type": "json_object"}}, "response_format"),
        (COMPLETIONS, {**GOOD[COMPLETIONS], "response_format": "x"}, "response_format"),
        (EMBEDDINGS, {**GOOD[EMBEDDINGS], "input": [1, -1]}, "input[1]"),
        (EMBEDDINGS, {**GOOD[EMBEDDINGS], "input": [[1], [2**31]]}, "input[1][0]"),
        (EMBEDDINGS, {**GOOD[EMBEDDINGS], "input": ["a", ""]}, "input[1]"),
        (EMBEDDINGS, {**GOOD[EMBEDDINGS], "input": [[]]}, "input[0]"),
        (EMBEDDINGS, {**GOOD[EMBEDDINGS], "input": {"text": "a"}}, "input"),
    ],
)
def test_wrong_completion_and_embedding_bodies(client, path, body, param):
    assert_openai_error(client.post(path, json=body), 400, param=param)
    assert client.post(path, json=GOOD[path]).status_code == 200


def test_unsupported_tool_kinds_are_refused_by_name(client):
    custom = {"type": "custom", "custom": {"name": "grep"}}
    response = client.post(CHAT, json=chat(tools=[TOOL, custom]))
    assert_openai_error(response, 400, code="unsupported_parameter", param="tools[1].type")
    response = client.post(RESPONSES, json=responses(tools=[{"type": "web_search"}]))
    assert_openai_error(response, 400, code="unsupported_parameter", param="tools[0].type")
    assert_still_serving(client)


def test_the_sdk_shapes_are_served(client, loader):
    """Null content beside tool calls, names on messages, parts, developer messages, strict tools, verbosity."""
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}], "name": "ops"},
        {"role": "user", "content": "Weather in Paris?", "name": "ann"},
        assistant(refusal=None, tool_calls=[CALL, {**CALL, "id": "call_2"}]),
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18C"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "It is "}, {"type": "refusal", "refusal": "no"}]},
    ]
    strict_tool = tool(strict=True, description="Weather in a city")
    body = {**HELLO, "messages": messages, "tools": [strict_tool], "tool_choice": "auto", "logit_bias": {"5": 1}}
    assert client.post(CHAT, json=body).status_code == 200
    rendered = loader.engines["fake-model"].rendered[-1]
    assert rendered[0]["role"] == "system" and rendered[0]["content"].startswith("Be brief.\n")
    assert rendered[-1] == {"role": "assistant", "content": "It is no"}
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}", "id": "fc_1"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "18C"}]},
    ]
    tools = [{"type": "function", "name": "get_weather", "parameters": None, "strict": None}]
    text = {"format": {"type": "json_object"}, "verbosity": "low"}
    response = client.post(RESPONSES, json=responses(input=items, tools=tools, text=text, metadata={"k": "v"}))
    assert response.status_code == 200
    assert response.json()["tools"] == tools and response.json()["text"] == text


def test_unknown_fields_are_logged_in_one_short_line(client, caplog):
    unknown = {f"field_{i}_{'x' * 200}": i for i in range(5000)}
    with caplog.at_level(logging.INFO, logger="server.api.openai.schemas"):
        assert client.post(CHAT, json={**HELLO, **unknown}).status_code == 200
    [line] = [r.getMessage() for r in caplog.records if "unknown request fields" in r.getMessage()]
    assert "5000" in line and "field_0_" in line and "field_10_" not in line
    assert len(line) < 1000


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        (("tools", 0, "function", "name"), "tools[0].function.name"),
        (
            ("body", "messages", 1, "AssistantMessageParam", "tool_calls", 0, "function"),
            "messages[1].tool_calls[0].function",
        ),
        (("text", "format", "UnknownResponseFormatText"), "text.format"),
        (("response_format", "ResponseFormatJSONSchema", "json_schema", "name"), "response_format.json_schema.name"),
        (("stop", "list[str]", 0), "stop[0]"),
        (("stop", "str"), "stop"),
        (("tool_choice", "literal['none','auto','required']"), "tool_choice"),
        (("x", "function-after[check(), str]", "y"), "x.y"),
        (("x", "tagged-union[A,B]", "y"), "x.y"),
        (("x", "constrained-str"), "x"),
        (("logit_bias", "²", "[key]"), "logit_bias.²"),
        (("logit_bias", "5"), "logit_bias.5"),
        (("metadata", "k" * 100), "metadata." + "k" * 37 + "..."),
        (("input", 0, 2), "input[0][2]"),
        ((), ""),
    ],
)
def test_error_locations_become_dotted_paths(loc, param):
    assert param_of(field_path(loc)) == param


def test_the_most_specific_error_of_a_union_is_named():
    errors = [
        {"type": "literal_error", "loc": ("tool_choice", "literal['none']"), "msg": "Input should be 'none'"},
        {"type": "model_type", "loc": ("tool_choice", "Named", "function"), "msg": "Input should be an object"},
        {"type": "int_type", "loc": ("temperature",), "msg": "x"},
    ]
    assert from_validation_errors(errors).param == "tool_choice.function"
    as_strings = {"type": "string_type", "loc": ("input", "list[str]", 0), "msg": "Input should be a valid string"}
    as_ids = {"type": "greater_than_equal", "loc": ("input", "list[int]", 1), "msg": "Input should be >= 0"}
    assert from_validation_errors([as_strings, as_ids]).param == "input[1]"
    tag = {"type": "union_tag_invalid", "loc": ("format",), "msg": "bad tag", "ctx": {"discriminator": "'type'"}}
    assert from_validation_errors([tag]).param == "format.type"


def test_echoed_values_are_cut_short():
    error = from_validation_errors([{"type": "string_type", "loc": ("user",), "msg": "bad", "input": 7 * 10**200}])
    assert len(error.message) < 200 and error.message.endswith("...).")


class _Node(BaseModel):
    value: int
    children: list[_Node] = []


def test_the_openapi_body_of_a_recursive_type_is_finite():
    schema = request_body_doc(_Node)["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["value"] == {"title": "Value", "type": "integer"}
    assert schema["properties"]["children"]["items"] == {}  # the type again: described as any value
    assert "$ref" not in json.dumps(schema)


def test_the_openapi_bodies_describe_the_typed_objects(client):
    paths = client.get("/openapi.json").json()["paths"]
    chat = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    tool_function = chat["properties"]["tools"]["anyOf"][0]["items"]["oneOf"][0]["properties"]["function"]
    assert tool_function["properties"]["name"]["pattern"] == NAME_PATTERN
    responses_body = paths["/v1/responses"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "format" in responses_body["properties"]["text"]["anyOf"][0]["properties"]


def test_deeply_nested_call_arguments_in_the_history_stay_text(client, loader):
    deep, shallow = "[" * 100 + "]" * 100, '{"city": ["Paris"]}'
    calls = [{**CALL, "function": {"name": "get_weather", "arguments": args}} for args in (deep, shallow)]
    assert client.post(CHAT, json=history(assistant(tool_calls=calls))).status_code == 200
    [assistant_turn, _] = loader.engines["fake-model"].rendered[-1]
    assert json.loads(assistant_turn["content"])["tool_calls"] == [
        {"name": "get_weather", "arguments": deep},
        {"name": "get_weather", "arguments": {"city": ["Paris"]}},
    ]
