"""Anthropic Messages requests: the typed body (every field sent wrong is a 400 naming its path) and its mapping to
a GenerationPlan (each content block kind, tools and each tool_choice, stop sequences, sampling)."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from server.api.anthropic.adapter import PARAMS, to_plan
from server.api.anthropic.errors import error_body
from server.api.anthropic.schemas import (
    MAX_BLOCKS,
    MAX_STOP_SEQUENCE_CHARS,
    MAX_TOOLS,
    CountTokensRequest,
    MessagesRequest,
)
from server.errors import APIError, InvalidRequestError, UnsupportedParameterError, from_validation_errors
from server.generation.plan import FunctionSpec, Sampling, ToolCallRecord, ToolRequest, Turn
from tests.contracts.anthropic_contract import assert_error

HELLO = {"model": "fake-model", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"name": "get_weather", "description": "Weather in a city", "input_schema": SCHEMA}
USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"}
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}


def request(**fields):
    return {**HELLO, **fields}


def user(*blocks):
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks):
    return {"role": "assistant", "content": list(blocks)}


def text(value):
    return {"type": "text", "text": value}


def plan_of(body, model=MessagesRequest):
    return to_plan(model.model_validate_json(json.dumps(body)))


def refusal(body, model=MessagesRequest) -> APIError:
    """The 400 a body gets, as the route makes it: from the typed parse or from the mapping."""
    try:
        plan_of(body, model)
    except ValidationError as exc:
        return from_validation_errors(exc.errors())
    except APIError as error:
        return error
    raise AssertionError("the request was accepted")


def test_system_string_and_text_blocks_become_one_system_turn():
    assert plan_of(request(system="Be brief.")).turns[0] == Turn(role="system", content="Be brief.")
    blocks = request(system=[text("Be brief."), {**text("Be kind."), "cache_control": {"type": "ephemeral"}}])
    assert plan_of(blocks).turns[0] == Turn(role="system", content="Be brief.\nBe kind.")
    assert [turn.role for turn in plan_of(request(system="")).turns] == ["user"]
    assert [turn.role for turn in plan_of(HELLO).turns] == ["user"]


def test_user_text_blocks_are_joined():
    turns = plan_of(request(messages=[user(text("Hello"), text("world"))])).turns
    assert turns == (Turn(role="user", content="Hello\nworld"),)


def test_assistant_tool_use_becomes_tool_calls_with_json_arguments():
    messages = [user(text("Weather?")), assistant(text("Let me look."), USE), user(RESULT)]
    turns = plan_of(request(messages=messages)).turns
    assert turns[1] == Turn(
        role="assistant",
        content="Let me look.",
        tool_calls=(ToolCallRecord(id="toolu_1", name="get_weather", arguments='{"city": "Paris"}'),),
    )
    assert json.loads(turns[1].tool_calls[0].arguments) == {"city": "Paris"}
    assert turns[2] == Turn(role="tool", content="18 C", tool_call_id="toolu_1")


def test_tool_results_and_text_of_one_user_message_keep_their_order():
    second = {"type": "tool_result", "tool_use_id": "toolu_2", "content": [text("rain"), text("windy")]}
    empty = {"type": "tool_result", "tool_use_id": "toolu_3", "is_error": True}
    messages = [user(text("Weather?")), assistant(USE), user(RESULT, second, empty, text("Thanks. And tomorrow?"))]
    turns = plan_of(request(messages=messages)).turns
    assert turns[2:] == (
        Turn(role="tool", content="18 C", tool_call_id="toolu_1"),
        Turn(role="tool", content="rain\nwindy", tool_call_id="toolu_2"),
        Turn(role="tool", content="", tool_call_id="toolu_3"),
        Turn(role="user", content="Thanks. And tomorrow?"),
    )


def test_assistant_string_content():
    turns = plan_of(request(messages=[user(text("Hi")), {"role": "assistant", "content": "Hello!"}])).turns
    assert turns[1] == Turn(role="assistant", content="Hello!")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([user(DOCUMENT)], "messages[0].content[0].type"),
        ([user(text("Hi")), assistant(USE), user({**RESULT, "content": [text("x"), IMAGE]})],
         "messages[2].content[0].content[1].type"),
    ],
)  # fmt: skip
def test_documents_and_images_in_tool_results_are_refused_by_name(messages, param):
    error = refusal(request(messages=messages))
    assert isinstance(error, UnsupportedParameterError)
    assert error.status_code == 400
    assert error.param == param
    assert "not supported" in error.message


def test_tools_become_function_specs():
    bare = {"name": "ping", "input_schema": {"type": "object"}, "type": "custom"}
    tools = plan_of(request(tools=[TOOL, bare])).tools
    assert tools == ToolRequest(
        functions=(
            FunctionSpec("get_weather", "Weather in a city", SCHEMA, "tools[0].input_schema"),
            FunctionSpec("ping", None, {"type": "object"}, "tools[1].input_schema"),
        )
    )


def test_server_tools_are_refused_by_name():
    error = refusal(request(tools=[TOOL, {"type": "web_search_20250305", "name": "web_search"}]))
    assert isinstance(error, UnsupportedParameterError)
    assert error.param == "tools[1].type"


@pytest.mark.parametrize(
    ("choice", "mode", "parallel"),
    [
        (None, "auto", True),
        ({"type": "auto"}, "auto", True),
        ({"type": "any"}, "required", True),
        ({"type": "none"}, "none", True),
        ({"type": "tool", "name": "get_weather"}, "get_weather", True),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": False}, "get_weather", True),
    ],
)
def test_tool_choice(choice, mode, parallel):
    body = request(tools=[TOOL]) if choice is None else request(tools=[TOOL], tool_choice=choice)
    tools = plan_of(body).tools
    assert (tools.choice, tools.parallel) == (mode, parallel)


def test_no_tools_no_tool_request():
    assert plan_of(HELLO).tools is None
    assert plan_of(request(tool_choice={"type": "none"})).tools == ToolRequest(functions=(), choice="none")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (request(tools=[TOOL], tool_choice={"type": "tool", "name": "other"}), "tool_choice.name"),
        (request(tool_choice={"type": "tool", "name": "get_weather"}), "tool_choice"),
        # the plan spells its modes as strings: a tool named like one cannot be told apart among others
        (request(tools=[TOOL, {**TOOL, "name": "none"}], tool_choice={"type": "tool", "name": "none"}),
         "tool_choice.name"),
    ],
)  # fmt: skip
def test_tool_choice_naming_no_offered_tool_is_refused(body, param):
    error = refusal(body)
    assert isinstance(error, InvalidRequestError)
    assert error.param == param


def test_forcing_the_only_tool_named_like_a_mode_is_required():
    body = request(tools=[{**TOOL, "name": "auto"}], tool_choice={"type": "tool", "name": "auto"})
    assert plan_of(body).tools.choice == "required"


def test_sampling_stop_sequences_and_limits():
    body = request(temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["\n\nHuman:", "END"], max_tokens=64)
    plan = plan_of(body)
    assert (plan.sampling.temperature, plan.sampling.top_p, plan.sampling.top_k) == (0.2, 0.9, 40)
    assert plan.stop == ("\n\nHuman:", "END")
    assert (plan.max_tokens, plan.n, plan.model) == (64, 1, "fake-model")
    assert plan.params == PARAMS
    assert (PARAMS.prompt, PARAMS.max_tokens, PARAMS.tools, PARAMS.output_schema) == (
        "messages",
        "max_tokens",
        "tools",
        "tools",
    )


def test_sampling_defaults():
    plan = plan_of(request(temperature=1))  # an integer is a number
    assert plan.sampling == Sampling(temperature=1.0)
    assert plan_of(HELLO).sampling == Sampling()
    assert plan_of(HELLO).stop == ()


def test_count_tokens_plan_generates_nothing():
    body = {key: value for key, value in HELLO.items() if key != "max_tokens"}
    plan = plan_of({**body, "system": "Be brief.", "tools": [TOOL]}, CountTokensRequest)
    assert plan.max_tokens is None
    assert [turn.role for turn in plan.turns] == ["system", "user"]
    assert plan.tools.functions[0].name == "get_weather"


def test_metadata_and_stream_are_accepted():
    body = MessagesRequest.model_validate_json(json.dumps(request(metadata={"user_id": "u-1"}, stream=True)))
    assert body.stream is True
    assert body.metadata.user_id == "u-1"


def test_unknown_fields_are_accepted_and_logged_in_short(caplog):
    extras = {f"field_{i}": i for i in range(50)}
    with caplog.at_level(logging.INFO, logger="server.api.anthropic.schemas"):
        plan_of(request(context_management={"edits": []}, **extras))
    (line,) = [r.getMessage() for r in caplog.records if "unknown request fields" in r.getMessage()]
    assert "ignoring 51 unknown request fields" in line
    assert "context_management" in line and "field_8" in line and "field_9" not in line  # ten names at most


def test_unknown_fields_of_blocks_and_tools_are_accepted():
    block = {**text("Hi"), "cache_control": {"type": "ephemeral"}, "citations": None}
    plan = plan_of(request(messages=[user(block)], tools=[{**TOOL, "cache_control": {"type": "ephemeral"}}]))
    assert plan.turns == (Turn(role="user", content="Hi"),)


TOOLS_129 = [{**TOOL, "name": f"t{i}"} for i in range(MAX_TOOLS + 1)]

WRONG = [
    # model and max_tokens
    ({k: v for k, v in HELLO.items() if k != "model"}, "model"),
    (request(model=5), "model"),
    (request(model=""), "model"),
    (request(model="m" * 257), "model"),
    ({k: v for k, v in HELLO.items() if k != "max_tokens"}, "max_tokens"),
    (request(max_tokens=0), "max_tokens"),
    (request(max_tokens="16"), "max_tokens"),
    (request(max_tokens=1.5), "max_tokens"),
    # messages, their roles, content and blocks
    (request(messages=[]), "messages"),
    (request(messages="Hi"), "messages"),
    (request(messages=[{"role": "system", "content": "x"}]), "messages[0].role"),
    (request(messages=[{"content": "x"}]), "messages[0].role"),
    (request(messages=[{"role": "user"}]), "messages[0].content"),
    (request(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (request(messages=[user("Hi")]), "messages[0].content[0]"),
    (request(messages=[user({"text": "Hi"})]), "messages[0].content[0].type"),
    (request(messages=[user({"type": "thinking", "thinking": "x"})]), "messages[0].content[0].type"),
    (request(messages=[user(USE)]), "messages[0].content[0].type"),
    (request(messages=[user(text("Hi")), assistant(RESULT)]), "messages[1].content[0].type"),
    (request(messages=[user(text("Hi")), assistant(IMAGE)]), "messages[1].content[0].type"),
    (request(messages=[user({"type": "text", "text": 5})]), "messages[0].content[0].text"),
    (request(messages=[user(text("Hi")), assistant({**USE, "input": "{}"})]), "messages[1].content[0].input"),
    (request(messages=[user(text("Hi")), assistant({**USE, "id": None})]), "messages[1].content[0].id"),
    (request(messages=[user(text("Hi")), assistant({**USE, "id": "x" * 257})]), "messages[1].content[0].id"),
    (request(messages=[user({**RESULT, "tool_use_id": 1})]), "messages[0].content[0].tool_use_id"),
    (request(messages=[user({**RESULT, "is_error": "yes"})]), "messages[0].content[0].is_error"),
    (request(messages=[user({**RESULT, "content": 5})]), "messages[0].content[0].content"),
    (request(messages=[user({**RESULT, "content": [USE]})]), "messages[0].content[0].content[0].type"),
    (request(messages=[user(*[text("x")] * (MAX_BLOCKS + 1))]), "messages[0].content"),
    # system
    (request(system=5), "system"),
    (request(system=[IMAGE]), "system[0].type"),
    (request(system=[{"type": "text"}]), "system[0].text"),
    # stop sequences, sampling
    (request(stop_sequences="END"), "stop_sequences"),
    (request(stop_sequences=["a", "b", "c", "d", "e"]), "stop_sequences"),
    (request(stop_sequences=["x" * (MAX_STOP_SEQUENCE_CHARS + 1)]), "stop_sequences[0]"),
    (request(stop_sequences=["ok", ""]), "stop_sequences[1]"),
    (request(stop_sequences=[5]), "stop_sequences[0]"),
    (request(temperature=1.5), "temperature"),
    (request(temperature="1"), "temperature"),
    (request(top_p=2), "top_p"),
    (request(top_k=-1), "top_k"),
    (request(top_k=1.5), "top_k"),
    # tools and tool choice
    (request(tools="get_weather"), "tools"),
    (request(tools=TOOLS_129), "tools"),
    (request(tools=[5]), "tools[0]"),
    (request(tools=[{**TOOL, "name": "get weather"}]), "tools[0].name"),
    (request(tools=[{**TOOL, "name": "x" * 65}]), "tools[0].name"),
    (request(tools=[{"name": "f"}]), "tools[0].input_schema"),
    (request(tools=[{**TOOL, "input_schema": "{}"}]), "tools[0].input_schema"),
    (request(tools=[{**TOOL, "description": 5}]), "tools[0].description"),
    (request(tools=[{**TOOL, "type": 5}]), "tools[0].type"),
    (request(tools=[TOOL], tool_choice="auto"), "tool_choice"),
    (request(tools=[TOOL], tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (request(tools=[TOOL], tool_choice={"type": "tool"}), "tool_choice.name"),
    (request(tools=[TOOL], tool_choice={"type": "any", "disable_parallel_tool_use": "yes"}),
     "tool_choice.disable_parallel_tool_use"),
    # metadata, stream
    (request(metadata="u-1"), "metadata"),
    (request(metadata={"user_id": 5}), "metadata.user_id"),
    (request(stream="yes"), "stream"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param"), WRONG)
def test_a_wrong_field_is_a_400_naming_its_path(body, param):
    error = refusal(body)
    assert error.status_code == 400, error.message
    assert error.param == param, error.message
    rendered = error_body(error)
    assert_error(rendered, 400)
    assert param in rendered["error"]["message"]


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"hi"', b"null"])
def test_a_body_that_is_not_a_json_object_is_a_400(raw):
    with pytest.raises(ValidationError) as caught:
        MessagesRequest.model_validate_json(raw)
    error = from_validation_errors(caught.value.errors())
    assert error.status_code == 400
    assert error.code == "invalid_json"


def test_count_tokens_wrong_fields():
    body = {"model": "fake-model", "messages": [{"role": "user", "content": 5}]}
    assert refusal(body, CountTokensRequest).param == "messages[0].content"
