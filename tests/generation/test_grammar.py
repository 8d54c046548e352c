"""JSON Schema to GBNF: bounds refused with a 400 naming the keyword, repetitions within llama.cpp's limit,
linear size, and several functions' arguments side by side for tool calls. (Outputs validating against their
schemas: the real tier.)"""

from __future__ import annotations

import re

import pytest

from server.errors import InvalidRequestError
from server.generation.grammar_check import check_grammar
from server.generation.grammar_rules import REPEAT_LIMIT, repeat
from server.generation.json_schema_grammar import BOUNDS, arguments_grammar, output_grammar, schema_grammar

PATH = "response_format.json_schema.schema"


def refused(schema) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        schema_grammar(schema, PATH)
    return caught.value


def counts(grammar: str) -> list[int]:
    return [int(n) for m in re.finditer(r"\{(\d+)(?:,(\d*))?\}", grammar) for n in m.groups() if n]


def test_json_strings_exclude_control_characters():
    char_rule = next(line for line in output_grammar("{}").splitlines() if line.startswith("char ::="))
    assert "\\x00-\\x1F" in char_rule


def test_functions_arguments_side_by_side_each_with_its_own_definitions():
    # Both define "#/$defs/place", differently: each reference resolves in its own schema.
    at_place = {"at": {"$ref": "#/$defs/place"}}
    weather = {"type": "object", "properties": at_place, "$defs": {"place": {"type": "string"}}}
    timer = {"type": "object", "properties": at_place, "$defs": {"place": {"enum": [1, 2]}}}
    rules, expressions = arguments_grammar([(weather, "tools[0]"), (timer, "tools[1]")])
    assert len(expressions) == 2 and expressions[0].startswith("f0-") and expressions[1].startswith("f1-")
    assert "root ::=" not in rules
    check_grammar(f"root ::= {expressions[0]} | {expressions[1]}\n" + rules, "tools")
    defined = dict(line.split(" ::= ", 1) for line in rules.splitlines())
    assert defined["f0-place"] == "string"
    assert defined.get(defined["f1-place"], defined["f1-place"]) == '("1" | "2") space'
    with pytest.raises(InvalidRequestError) as caught:
        arguments_grammar([(weather, "tools[0]"), ({"type": "object", "minProperties": 1}, "tools[1].parameters")])
    assert caught.value.param == "tools[1].parameters.minProperties"


@pytest.mark.parametrize("length", [2000, 10_000])
def test_long_strings_use_repetitions_llama_cpp_keeps(length):
    # llama.cpp silently drops a repetition maximum above 2000: every count must stay at or under our limit.
    grammar = schema_grammar({"type": "string", "minLength": 3, "maxLength": length}, PATH)
    assert counts(grammar) and max(counts(grammar)) <= REPEAT_LIMIT
    assert len(grammar) < 2000  # linear in the schema, not in the length


@pytest.mark.parametrize(("low", "high"), [(0, 10_000), (1500, 10_000), (2500, 2500), (0, 1001), (7, None)])
def test_split_repetitions_cover_exactly_the_range(low, high):
    rules: dict[str, str] = {}

    def add(hint: str, body: str) -> str:
        rules[hint] = body
        return hint

    expression = repeat("x", low, high, add)
    assert all(n <= REPEAT_LIMIT for n in counts(expression + " ".join(rules.values())))
    # The GBNF that repeat() writes is also a Python regular expression once its helper rules are inlined.
    regex = expression.replace(" ", "").replace("(", "(?:")
    for name, body in rules.items():
        regex = regex.replace(name, f"(?:{body})")
    top = high if high is not None else low + 250
    for length in {*range(0, 260), *range(low - 120, low + 120), *range(top - 120, top + 120), top + 1}:
        if length >= 0:
            admitted = re.fullmatch(regex, "x" * length) is not None
            assert admitted == (low <= length and (high is None or length <= high)), length


@pytest.mark.parametrize(
    ("schema", "param", "words"),
    [
        ({"type": "string", "maxLength": 50_000}, f"{PATH}.maxLength", "at most 10000"),
        ({"type": "string", "minLength": "x"}, f"{PATH}.minLength", "non-negative integer"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, f"{PATH}.maxLength", "smaller"),
        ({"type": "array", "maxItems": 5000}, f"{PATH}.maxItems", "at most 1000"),
        ({"type": "string", "pattern": "^a{0,1000000}$"}, f"{PATH}.pattern", "at most 1000"),
        ({"type": "string", "pattern": "^" + "a{999}" * 11 + "$"}, f"{PATH}.pattern", "add up"),
        ({"type": "string", "pattern": "^(a*)*$"}, f"{PATH}.pattern", "match nothing"),
        ({"type": "string", "pattern": "^(?=a)b$"}, f"{PATH}.pattern", "lookaround"),
        ({"type": "string", "pattern": "[a-z]+"}, f"{PATH}.pattern", "anchored"),
        ({"$ref": "#/$defs/missing"}, f"{PATH}.$ref", "does not exist"),
        ({"$ref": "https://example.com/s.json"}, f"{PATH}.$ref", "local"),
        ({"type": "object", "not": {}}, f"{PATH}.not", "not supported"),
        ({"type": "integer", "minimum": 3}, f"{PATH}.minimum", "not supported"),
        ({"type": "tuple"}, f"{PATH}.type", "type"),
        ({"anyOf": []}, f"{PATH}.anyOf", "non-empty"),
        ({"enum": "abc"}, f"{PATH}.enum", "non-empty list"),
        ({"type": "object", "required": "a"}, f"{PATH}.required", "list"),
        ({"type": "string", "format": "email"}, f"{PATH}.format", "format"),
        (
            {"anyOf": [{"type": "object", "properties": {f"p{i}": {} for i in range(20)}}] * 10},
            f"{PATH}.anyOf",
            "begin",
        ),
        ({"type": "object", "properties": {f"p{i}": {} for i in range(300)}}, f"{PATH}.properties", "at most 256"),
        ({"enum": list(range(200))}, f"{PATH}.enum", "at most 128"),
        ({"type": "array", "items": {"type": "string", "description": "x" * 70_000}}, PATH, "bytes"),
    ],
)
def test_past_a_bound_or_unsupported_is_a_400_naming_the_keyword(schema, param, words):
    error = refused(schema)
    assert error.param == param
    assert words in error.message


def test_depth_and_node_count_are_bounded():
    deep: dict = {"type": "string"}
    for _ in range(BOUNDS.max_depth + 2):
        deep = {"type": "array", "items": deep}
    assert "nests deeper" in refused(deep).message
    many = {"type": "array", "prefixItems": [{"type": "array", "prefixItems": [{}] * 100}] * 40}
    assert "subschemas" in refused(many).message


def test_ordinary_pydantic_shapes_convert():
    schema = {
        "$defs": {
            "Tag": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}}, "required": ["name"]}
        },
        "type": "object",
        "properties": {
            "bio": {"type": "string", "maxLength": 10_000, "title": "Bio"},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}, "maxItems": 1000},
            "nick": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "when": {"type": "string", "format": "date-time"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-\\d{2,4}$"},
        },
        "required": ["bio", "tags", "when", "code"],
    }
    grammar = schema_grammar(schema, PATH)
    assert grammar.count("\n") < 60
    assert max(counts(grammar)) <= REPEAT_LIMIT


def test_recursive_references_are_rules_not_expansions():
    schema = {
        "$defs": {
            "Node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}}
        },
        "$ref": "#/$defs/Node",
    }
    grammar = schema_grammar(schema, PATH)
    assert grammar.count("Node ::=") == 1


def test_optional_properties_grow_the_grammar_linearly():
    def size(n: int) -> int:
        return len(
            schema_grammar({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(n)}}, PATH)
        )

    assert size(100) < 2.5 * size(40)
