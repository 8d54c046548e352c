"""Reading tool calls back from model output: right answers on adversarial outputs (a forward scan, at most
MAX_CALLS calls, no regex backtracking, no recursion overflow)."""

from __future__ import annotations

import json

import pytest

from server.generation import tools
from server.generation.grammar_check import check_grammar
from server.generation.plan import FunctionSpec, ParamNames, ToolRequest
from server.generation.tool_dialects import CallSpotter, dialect
from server.generation.tool_dialects.spotter import MAX_HELD
from server.generation.tools import GENERIC, MAX_CALLS, CallFormat, parse_calls

HERMES = "hermes"

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
        "Sure! " + BLOCK,  # (the reader hands the parser the text from where calls begin: see the spotter tests)
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


LONG_CALL = "<tool_call>" + "x" * 1_000_000


def spotted(name: str, pieces: list[str]) -> tuple[str, str | None]:
    """What a reply streamed in `pieces` shows (all of it, at the end) and what is read as calls."""
    spotter = CallSpotter(dialect(name))
    shown = "".join(spotter.push(piece) for piece in pieces)
    rest, calls = spotter.finish()
    return shown + rest, calls


@pytest.mark.parametrize(
    ("text", "hermes", "generic"),
    [
        ("", ("", None), ("", None)),
        (" " * 1_000_000, (" " * 1_000_000, None), (" " * 1_000_000, None)),
        ("  <tool", ("  <tool", None), ("  <tool", None)),
        (LONG_CALL, ("", LONG_CALL), (LONG_CALL, None)),
        ("<tool_cal!", ("<tool_cal!", None), ("<tool_cal!", None)),
        ("\n{", ("\n{", None), ("", "\n{")),
        ("Hello", ("Hello", None), ("Hello", None)),
        ("Sure!\n" + BLOCK, ("Sure!", "\n" + BLOCK), ("Sure!\n" + BLOCK, None)),
    ],
)
def test_calls_begin_at_the_start_or_at_the_opening(text, hermes, generic):
    assert spotted(HERMES, [text]) == hermes
    assert spotted(GENERIC, [text]) == generic
    assert spotted(HERMES, list(text[:200])) == spotted(HERMES, [text[:200]])  # the same, a character at a time


def test_text_before_the_opening_is_shown_as_it_streams():
    spotter = CallSpotter(dialect(HERMES))
    assert spotter.push("Let me ") == "Let me"  # blanks wait: before calls, they are not shown
    assert spotter.push("check <tool") == " check"  # and so does a tail that may begin the opening
    assert spotter.push("s> are") == " <tools> are"
    assert spotter.push(" here <tool_call>{") == " here"
    assert spotter.push("}</tool_call>") == ""
    assert spotter.finish() == ("", " <tool_call>{}</tool_call>")
    text_only = CallSpotter(dialect(HERMES))
    assert text_only.push("Hello\n\n") == "Hello" and text_only.finish() == ("\n\n", None)
    blanks = CallSpotter(dialect(HERMES))
    assert blanks.push("Hi") == "Hi" and len(blanks.push(" " * 10_000)) == 10_000 - MAX_HELD  # held, within a bound


NAMED = {"get_weather": {"type": "object", "properties": {"city": {"type": "string"}}}, "get_time": None}
SPECS = tuple(FunctionSpec(name, parameters=schema) for name, schema in NAMED.items())


@pytest.mark.parametrize("dialect_name", [GENERIC, HERMES, "llama3", "mistral", "deepseek", "deepseek_v31", "phi4mini"])
@pytest.mark.parametrize(
    ("choice", "parallel", "most"),
    [
        ("get_weather", True, 1),  # as at OpenAI: a named function is called exactly once
        ("get_weather", False, 1),
        ("required", True, MAX_CALLS),
        ("required", False, 1),
        ("auto", True, MAX_CALLS),
        ("auto", False, 1),
    ],
)
def test_how_many_calls_a_choice_allows(dialect_name, choice, parallel, most):
    tool_plan = tools.plan(ToolRequest(SPECS, choice, parallel), ParamNames(), dialect_name)
    assert tool_plan.calls.most == most and tool_plan.calls.dialect == dialect_name
    assert len(parse_calls(json.dumps({"tool_calls": [ONE_CALL] * 3}), CallFormat(NAMED, GENERIC, most))) == min(
        3, most
    )
    if choice == "auto":
        assert tool_plan.forced is None
        return
    grammar = tools.forced_grammar(tool_plan)
    check_grammar(grammar, "tools")  # well-formed, every rule defined, within llama.cpp's limits
    root = next(line for line in grammar.splitlines() if line.startswith("root ::= "))
    # The repetition of calls allows `most` at most (Llama 3.x: always one call, its templates show no more).
    assert ("{0," in root) is (most > 1 and dialect_name != "llama3")
    if most > 1 and dialect_name != "llama3":
        assert f"{{0,{most - 1}}}" in root
    calls = next(line for line in grammar.splitlines() if line.startswith("call ::= "))
    assert ("get_time" in calls) is (choice != "get_weather")  # a named choice allows that function only


BAD_CALLS = {
    "hermes": ('<tool_call>{{"name": {name}, "arguments": {arguments}}}</tool_call>'),
    "generic": '{{"tool_calls": [{{"name": {name}, "arguments": {arguments}}}]}}',
    "llama3": '{{"name": {name}, "parameters": {arguments}}}',
    "mistral": '[TOOL_CALLS][{{"name": {name}, "arguments": {arguments}}}]',
    "phi4mini": '<|tool_call|>[{{"name": {name}, "arguments": {arguments}}}]<|/tool_call|>',
    "deepseek": (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>{bare}\n```json\n{arguments}\n```"  # noqa: RUF001
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"  # noqa: RUF001
    ),
    "deepseek_v31": (
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>{bare}<｜tool▁sep｜>{arguments}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"  # noqa: RUF001
    ),
}


SHAPES = [  # (name, arguments, is it a call)
    ('"get_weather"', '{"city": "Paris"}', True),
    ('"get_weather"', "null", True),  # no arguments: {}
    ('["get_weather"]', "{}", False),  # a name that is not a string (it once raised: unhashable)
    ('{"n": 1}', "{}", False),
    ('"get_weather"', '"Paris"', False),  # arguments that are not an object no client can read
    ('"get_weather"', "[1, 2]", False),
    ('"get_weather"', "3", False),
    ('"get_weather"', '"{\\"city\\": \\"Paris\\"}"', True),  # an object quoted as JSON text: the object
]


@pytest.mark.parametrize(
    ("family", "name", "arguments", "is_call"),
    [
        (family, *shape)
        for family in sorted(BAD_CALLS)
        for shape in SHAPES
        if not family.startswith("deepseek") or shape[0].startswith('"')  # DeepSeek writes the name as bare text
    ],
)
def test_a_call_is_a_string_name_of_a_function_with_an_object_of_arguments(family, name, arguments, is_call):
    text = BAD_CALLS[family].format(name=name, arguments=arguments, bare=json.loads(name))
    found = parse_calls(text, CallFormat(FUNCTIONS, family))
    assert (found is not None) == is_call, found
    if found:
        assert isinstance(json.loads(found[0].arguments), dict)
