"""Output constraints beside response_format on chat and legacy completions: vLLM's `structured_outputs` (and its
older `guided_*` fields) and llama.cpp server's `grammar` reach the engine as the grammar they mean, compiled
before admission; a wrong type, a bound, a second constraint or a forced tool call is a 400 naming the field."""

from __future__ import annotations

import json

import openai
import pytest

from server.generation.constraint_grammars import choice_grammar, regex_grammar
from server.generation.json_schema_grammar import output_grammar
from tests.api.openai.test_routes import CHAT, HELLO, assert_openai_error, assert_still_serving
from tests.fakes import FakeScript

COMPLETIONS = "/v1/completions"
PROMPT = {"model": "fake-model", "prompt": "Hi"}
GBNF = 'root ::= ("yes" | "no") "."\n'
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(autouse=True)
def roomy(loader):
    loader.scripts["fake-model"] = FakeScript(n_ctx=4096)


CONSTRAINTS = [
    ({"structured_outputs": {"regex": r"\d{3}"}}, regex_grammar(r"\d{3}", "x")),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, choice_grammar(["yes", "no"], "x")),
    ({"structured_outputs": {"grammar": GBNF}}, GBNF),
    ({"structured_outputs": {"json": SCHEMA}}, output_grammar(json.dumps(SCHEMA))),
    ({"structured_outputs": {"json": json.dumps(SCHEMA)}}, output_grammar(json.dumps(SCHEMA))),
    ({"structured_outputs": {"json_object": True}}, output_grammar("{}")),
    ({"structured_outputs": {"choice": ["a"], "regex": None, "json_object": False, "disable_fallback": True}}, None),
    ({"grammar": GBNF}, GBNF),
    ({"guided_regex": r"\d{3}"}, regex_grammar(r"\d{3}", "x")),
    ({"guided_choice": ["yes", "no"]}, choice_grammar(["yes", "no"], "x")),
    ({"guided_grammar": GBNF}, GBNF),
    ({"guided_json": SCHEMA}, output_grammar(json.dumps(SCHEMA))),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "text"}}, regex_grammar("a", "x")),
]


@pytest.mark.parametrize(
    ("path", "fields", "grammar"),
    [(CHAT, *case) for case in CONSTRAINTS]
    + [(COMPLETIONS, *case) for case in CONSTRAINTS if "response_format" not in case[0]],  # chat's field only
)
def test_each_constraint_reaches_the_engine_as_its_grammar_compiled_before_admission(
    client, loader, path, fields, grammar
):
    body = {**(HELLO if path == CHAT else PROMPT), **fields}
    assert client.post(path, json=body).status_code == 200
    engine = loader.engines["fake-model"]
    expected = grammar if grammar is not None else choice_grammar(["a"], "x")
    assert engine.requests[-1].grammar == expected
    assert engine.grammars == [expected]


WRONG = [
    ({"structured_outputs": "regex"}, "structured_outputs"),
    ({"structured_outputs": {"regex": 5}}, "structured_outputs.regex"),
    ({"structured_outputs": {"choice": "yes"}}, "structured_outputs.choice"),
    ({"structured_outputs": {"choice": ["yes", 5]}}, "structured_outputs.choice[1]"),
    ({"structured_outputs": {"grammar": ["root ::= x"]}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"json": 5}}, "structured_outputs.json"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
    ({"structured_outputs": {"json": "[1]"}}, "structured_outputs.json"),
    ({"structured_outputs": {"json": {"type": "integer", "minimum": 3}}}, "structured_outputs.json.minimum"),
    ({"structured_outputs": {"json_object": "yes"}}, "structured_outputs.json_object"),
    ({"grammar": 5}, "grammar"),
    ({"grammar": {"root": "x"}}, "grammar"),
    ({"guided_regex": ["a"]}, "guided_regex"),
    ({"guided_choice": "yes"}, "guided_choice"),
    ({"guided_choice": [None]}, "guided_choice[0]"),
    ({"guided_grammar": 1.5}, "guided_grammar"),
    ({"guided_json": 5}, "guided_json"),
    ({"guided_json": {"type": "string", "format": "email"}}, "guided_json.format"),
]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize(("fields", "param"), WRONG)
def test_a_constraint_sent_wrong_is_a_400_naming_its_path(client, path, fields, param):
    body = {**(HELLO if path == CHAT else PROMPT), **fields}
    error = assert_openai_error(client.post(path, json=body), 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert_still_serving(client)


PAST_A_BOUND = [
    ({"structured_outputs": {"regex": "a" * 1001}}, "structured_outputs.regex", "at most 1000"),
    ({"structured_outputs": {"regex": "(?<=a)b"}}, "structured_outputs.regex", "lookaround"),
    ({"guided_regex": "a{0,5000}"}, "guided_regex", "at most 1000"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice", "at least one"),
    ({"guided_choice": ["x"] * 129}, "guided_choice", "at most 128"),
    ({"structured_outputs": {"choice": ["ok", "x" * 1001]}}, "structured_outputs.choice[1]", "at most 1000"),
    ({"structured_outputs": {"grammar": 'root ::= "a"{0,100000}'}}, "structured_outputs.grammar", "at most 1000"),
    ({"grammar": 'answer ::= "yes"'}, "grammar", "`root`"),
    ({"grammar": ""}, "grammar", "`root`"),  # llama.cpp would read an empty grammar as no constraint at all
    ({"guided_grammar": 'root ::= "a" )'}, "guided_grammar", "line 1, column 14"),
    ({"grammar": "root ::= " + '"' + "a" * 70_000 + '"'}, "grammar", "65536 bytes"),
]


@pytest.mark.parametrize(("fields", "param", "fragment"), PAST_A_BOUND)
def test_a_constraint_past_a_bound_is_a_400_that_names_the_bound(client, loader, fields, param, fragment):
    error = assert_openai_error(client.post(CHAT, json={**HELLO, **fields}), 400, param=param)
    assert fragment in error["message"]
    assert "fake-model" not in loader.engines  # refused before any model was touched


CONFLICTS = [
    (
        {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
        "structured_outputs.regex",
    ),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"json_object": False}}, "structured_outputs"),
    ({"structured_outputs": {"choice": ["a"]}, "grammar": GBNF}, "grammar"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}, "guided_json": {}},
        "guided_json",
    ),
    (
        {"tools": [TOOL], "tool_choice": "required", "structured_outputs": {"choice": ["a"]}},
        "structured_outputs.choice",
    ),
    (
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}}, "grammar": GBNF},
        "grammar",
    ),
]


@pytest.mark.parametrize(("fields", "param"), CONFLICTS)
def test_more_than_one_constraint_or_one_beside_a_forced_tool_call_is_a_400(client, fields, param):
    error = assert_openai_error(client.post(CHAT, json={**HELLO, **fields}), 400, param=param)
    assert param.split(".")[0] in error["message"]


def test_a_constraint_beside_tools_the_model_may_call_is_served(client, loader):
    body = {**HELLO, "tools": [TOOL], "tool_choice": "auto", "structured_outputs": {"choice": ["a"]}}
    assert client.post(CHAT, json=body).status_code == 200
    assert loader.engines["fake-model"].requests[-1].grammar == choice_grammar(["a"], "x")


def test_structural_tags_are_refused_by_name(client):
    body = {**HELLO, "structured_outputs": {"structural_tag": '{"type": "structural_tag"}'}}
    assert_openai_error(
        client.post(CHAT, json=body), 400, code="unsupported_parameter", param="structured_outputs.structural_tag"
    )


def test_the_openai_sdk_sends_them_through_extra_body(client, loader):
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    sdk.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    sdk.completions.create(model="fake-model", prompt="Hi", extra_body={"grammar": GBNF})
    sent = [r.grammar for r in loader.engines["fake-model"].requests]
    assert sent == [choice_grammar(["yes", "no"], "x"), GBNF]
