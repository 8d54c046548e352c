"""Reading tool calls back from model output: right answers on adversarial outputs (a forward scan, at most
MAX_CALLS calls, no regex backtracking, no recursion overflow)."""

from __future__ import annotations

import json

import pytest

from server.generation.tools import GENERIC, HERMES, MAX_CALLS, CallFormat, may_be_calls, parse_calls

FUNCTIONS = {"get_weather": {"type": "object"}}
HERMES_CALLS, GENERIC_CALLS = CallFormat(FUNCTIONS, HERMES), CallFormat(FUNCTIONS, GENERIC)
BLOCK = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
ONE_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


def test_hermes_blocks_are_read():
    [call] = parse_calls(f"\n{BLOCK}\n", HERMES_CALLS)
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    spaced = '<tool_call>\n  {"name": "get_weather", "arguments": {}}  \n</tool_call>\ntext between' + BLOCK
    assert [c.name for c in parse_calls(spaced, HERMES_CALLS)] == ["get_weather", "get_weather"]


@pytest.mark.parametrize(
    "output",
    [
        "<tool_call>" + " " * 1_000_000,  # an open block that never closes
        "<tool_call>" * 10_000,
        "<tool_call>" + " " * 100_000 + "</tool_cal",
        '<tool_call>{"name": "get_weather", "arguments": ' + "[" * 100_000 + "</tool_call>",
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
        "<tool_call>not json</tool_call>",
        "Sure! " + BLOCK,
    ],
)
def test_malformed_hermes_output_is_text(output):
    assert parse_calls(output, HERMES_CALLS) is None


def test_many_hermes_blocks_give_at_most_max_calls():
    calls = parse_calls(BLOCK * 10_000, HERMES_CALLS)
    assert calls is not None and len(calls) == MAX_CALLS
    assert len(parse_calls(BLOCK * 10_000 + "<tool_call>" + " " * 100_000, HERMES_CALLS)) == MAX_CALLS


@pytest.mark.parametrize(
    "output",
    [
        "{" + " " * 1_000_000,
        '{"tool_calls": ' + "[" * 100_000 + "]" * 100_000 + "}",  # deeper than the JSON parser recurses
        '{"tool_calls": [{"name": "get_weather", "arguments": ' + "{" * 100_000,
        '{"tool_calls": []}',
        '{"tool_calls": "get_weather"}',
        "[1, 2]",
        "Hello",
    ],
)
def test_malformed_generic_output_is_text(output):
    assert parse_calls(output, GENERIC_CALLS) is None


def test_many_generic_calls_give_at_most_max_calls():
    calls = parse_calls(json.dumps({"tool_calls": [ONE_CALL] * 10_000}), GENERIC_CALLS)
    assert calls is not None and len(calls) == MAX_CALLS
    assert len(parse_calls(json.dumps({"tool_calls": [ONE_CALL]}), GENERIC_CALLS)) == 1


@pytest.mark.parametrize(
    ("text", "hermes", "generic"),
    [
        ("", True, True),
        (" " * 1_000_000, True, True),
        ("  <tool", True, False),
        ("<tool_call>" + "x" * 1_000_000, True, False),
        ("<tool_cal!", False, False),
        ("\n{", False, True),
        ("Hello", False, False),
    ],
)
def test_may_be_calls_looks_only_at_the_start(text, hermes, generic):
    assert may_be_calls(text, HERMES_CALLS) is hermes
    assert may_be_calls(text, GENERIC_CALLS) is generic
