"""Regex, choice and GBNF constraints through llama.cpp, sent as the openai SDK's users send them (`extra_body`):
at temperature 1 every finished output is in the constraint's language; a grammar llama.cpp cannot read, or that
would cost it without bound, is a 400 naming the field, and the model's worker lives on."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

from tests.real.conftest import ServerProcess

SMOL = "smollm2-135m-instruct"
SEEDS = (0, 1, 2)
ASK = [{"role": "user", "content": "Write a product code, then say something about it."}]


def _chat(api: openai.OpenAI, seed: int, extra_body: dict, max_tokens: int = 40, messages=ASK):
    reply = api.chat.completions.create(
        model=SMOL, messages=messages, max_tokens=max_tokens, temperature=1.0, seed=seed, extra_body=extra_body
    )
    return reply.choices[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_regex_output_matches_whole(api: openai.OpenAI, seed):
    regex = r"[A-Z]{2,3}-\d{1,3}( \(v[0-9]\))?"
    choice = _chat(api, seed, {"structured_outputs": {"regex": regex}})
    assert choice.finish_reason == "stop"  # the grammar ends the output: only the end token is left
    assert re.fullmatch(regex, choice.message.content), choice.message.content


@pytest.mark.parametrize("seed", SEEDS)
def test_a_regex_with_quotes_and_newlines_is_plain_text(api: openai.OpenAI, seed):
    regex = r'"[a-z]{1,8}"\n[0-9]{2}\\'
    reply = api.completions.create(
        model=SMOL,
        prompt="Quote a word:",
        max_tokens=30,
        temperature=1.0,
        seed=seed,
        extra_body={"guided_regex": regex},
    )
    assert reply.choices[0].finish_reason == "stop"
    assert re.fullmatch(regex, reply.choices[0].text), reply.choices[0].text


@pytest.mark.parametrize("seed", SEEDS)
def test_a_choice_output_is_one_of_the_choices(api: openai.OpenAI, seed):
    choices = ["red", "green", "light blue", 'say "no"']
    ask = [{"role": "user", "content": "Pick a colour."}]
    choice = _chat(api, seed, {"structured_outputs": {"choice": choices}}, messages=ask)
    assert choice.finish_reason == "stop" and choice.message.content in choices


GBNF = r"""
root ::= sum " = " number "."
sum ::= number (ws op ws number){1,3}   # two to four numbers
op ::= "+" | "-" | "*"
number ::= [1-9] [0-9]{0,2} | "0"
ws ::= " "?
"""
SUM = re.compile(r"(?:[1-9][0-9]{0,2}|0)(?: ?[-+*] ?(?:[1-9][0-9]{0,2}|0)){1,3} = (?:[1-9][0-9]{0,2}|0)\.")


@pytest.mark.parametrize("seed", SEEDS)
def test_a_gbnf_output_is_in_the_grammars_language(api: openai.OpenAI, seed):
    ask = [{"role": "user", "content": "Write a sum and its result."}]
    body = {"grammar": GBNF} if seed % 2 else {"structured_outputs": {"grammar": GBNF}}  # llama.cpp's name, vLLM's
    choice = _chat(api, seed, body, messages=ask)
    assert choice.finish_reason == "stop"
    assert SUM.fullmatch(choice.message.content), choice.message.content


def test_a_json_schema_through_structured_outputs_validates(api: openai.OpenAI):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = api.completions.create(
        model=SMOL,
        prompt="A person as JSON:",
        max_tokens=60,
        temperature=0,
        extra_body={"structured_outputs": {"json": schema}},
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].text), schema)


def _restarts(server: ServerProcess) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("slm_worker_restarts_total")
    )


REFUSED = [
    # llama.cpp's own parser refuses these (it logs why and returns nothing): the compile step makes them 400s.
    ({"structured_outputs": {"grammar": 'root ::= expr\nexpr ::= expr "+" "1" | "1"\n'}}, "left-recursive"),
    ({"grammar": "root ::= <not-one-token-at-all>"}, "token"),
    # Refused before llama.cpp sees them: a syntax error, and what it would read as a count near 2^64 or a
    # silently unbounded repetition.
    ({"structured_outputs": {"grammar": 'root ::= ("a" | "b"'}}, "')'"),
    ({"grammar": 'root ::= "a"{5,2}'}, "reversed"),
    ({"guided_grammar": 'root ::= "a"{0,100000}'}, "at most 1000"),
    ({"structured_outputs": {"regex": "(a|b"}}, "ends too early"),
]


def test_grammars_llama_cpp_cannot_read_are_400s_and_the_worker_lives_on(api: openai.OpenAI, server: ServerProcess):
    restarts = _restarts(server)
    for body, fragment in REFUSED:
        [(field, value)] = body.items()
        param = field if not isinstance(value, dict) else f"{field}.{next(iter(value))}"
        with pytest.raises(openai.BadRequestError) as caught:
            _chat(api, 0, body, max_tokens=8)
        error = caught.value.body
        assert error["param"] == param and fragment in error["message"], error
        assert _chat(api, 0, {}, max_tokens=4).message.content  # served meanwhile
    assert _restarts(server) == restarts
    assert len(server.worker_pids(SMOL)) == 1


def test_a_grammar_no_token_can_satisfy_ends_the_output_instead_of_the_worker(
    api: openai.OpenAI, server: ServerProcess
):
    # A NUL character no token begins with, or a token id past the vocabulary: nothing is ever allowed.
    for grammar in ('root ::= "\\x00"', "root ::= <[99999999]>"):
        choice = _chat(api, 0, {"grammar": grammar}, max_tokens=8)
        assert choice.message.content == ""
    assert len(server.worker_pids(SMOL)) == 1
