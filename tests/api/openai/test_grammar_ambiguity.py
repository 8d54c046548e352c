"""Grammars llama.cpp would keep too many parse stacks for are 400s naming their field, at once and before any model
is touched; a grammar the scheduler finds too slow mid-generation is a 400 (an error event in a stream) naming the
field too; and a client's constraint is read off the event loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ConfigError, Settings
from server.errors import GrammarTooComplexError, ModelUnavailableError
from server.generation import constraint_grammars, pipeline
from server.models.registry import ModelRegistry
from tests.api.openai.test_routes import CHAT, HELLO, assert_openai_error, assert_still_serving
from tests.fakes import FakeEngine, FakeScript, fake_spec

COMPLETIONS = "/v1/completions"
NESTED = "((((a|aa){1,9}){1,9}){1,9}){1,9}"  # the reviewer's: within every other bound, 3.5-5 s a token
NESTED_GBNF = 'root ::= (((("a" | "aa"){1,9}){1,9}){1,9}){1,9}\n'  # the same, as a client's own grammar
LEVELS = "root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} "x" | r{i + 1} "y"\n' for i in range(14)) + 'r14 ::= "z"\n'
QUICKLY_S = 5.0  # generous: the checks take milliseconds


def _schema_format(pattern: str) -> dict:
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": pattern}}}
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


ATTACKS = [
    (CHAT, {"structured_outputs": {"regex": NESTED}}, "structured_outputs.regex", "ways at once"),
    (COMPLETIONS, {"guided_regex": NESTED}, "guided_regex", "ways at once"),
    (
        CHAT,
        {"response_format": _schema_format(f"^{NESTED}$")},
        "response_format.json_schema.schema.properties.code.pattern",
        "ways at once",
    ),
    (
        CHAT,
        {"structured_outputs": {"json": {"type": "string", "pattern": f"^{NESTED}$"}}},
        "structured_outputs.json.pattern",
        "ways at once",
    ),
    (CHAT, {"grammar": LEVELS}, "grammar", "can begin in 16384 ways"),
    (COMPLETIONS, {"guided_grammar": LEVELS}, "guided_grammar", "can begin in 16384 ways"),
    (
        CHAT,
        {"structured_outputs": {"grammar": NESTED_GBNF}},
        "structured_outputs.grammar",
        "ways at once",
    ),
]


@pytest.mark.parametrize(("path", "fields", "param", "fragment"), ATTACKS)
def test_an_ambiguous_grammar_is_a_400_naming_its_field_before_any_model_is_touched(
    client, loader, path, fields, param, fragment
):
    body = {**(HELLO if path == CHAT else {"model": "fake-model", "prompt": "Hi"}), **fields}
    started = time.monotonic()
    error = assert_openai_error(client.post(path, json=body), 400, param=param)
    assert time.monotonic() - started < QUICKLY_S
    assert fragment in error["message"] and "llama.cpp keeps a parse stack for each" in error["message"]
    assert "fake-model" not in loader.engines
    assert_still_serving(client)


TOO_SLOW = GrammarTooComplexError("The output grammar took 0.31 s of the model's time for one token.")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"grammar": 'root ::= "a"+\n'}, "grammar"),
        ({"structured_outputs": {"regex": "a+"}}, "structured_outputs.regex"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_a_grammar_too_slow_to_follow_is_a_400_naming_its_field(client, loader, fields, param):
    loader.scripts["fake-model"] = FakeScript(fail_after=0, failure=TOO_SLOW)
    error = assert_openai_error(client.post(CHAT, json={**HELLO, **fields}), 400, param=param)
    assert error["code"] == "grammar_too_complex" and error["type"] == "invalid_request_error"


def test_streamed_a_grammar_too_slow_to_follow_is_an_error_event_then_the_end(client, loader):
    loader.scripts["fake-model"] = FakeScript(fail_after=2, failure=TOO_SLOW)
    body = {**HELLO, "stream": True, "structured_outputs": {"grammar": 'root ::= "a"+\n'}}
    with client.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["code"] == "grammar_too_complex" and error["param"] == "structured_outputs.grammar"


def test_a_clients_grammar_is_checked_off_the_event_loop(client, monkeypatch):
    """While one request's grammar is being checked, another request is answered."""
    checking, release = threading.Event(), threading.Event()
    check = constraint_grammars.check_grammar

    def slow_check(text: str, where: str) -> None:
        checking.set()
        release.wait(QUICKLY_S * 4)  # bounded, so a check on the event loop fails the test instead of hanging it
        check(text, where)

    monkeypatch.setattr(constraint_grammars, "check_grammar", slow_check)
    answers: dict[str, int] = {}
    constrained = threading.Thread(
        target=lambda: answers.update(
            constrained=client.post(CHAT, json={**HELLO, "grammar": 'root ::= "a"\n'}).status_code
        )
    )
    constrained.start()
    try:
        assert checking.wait(QUICKLY_S)
        assert_still_serving(client)
        assert "constrained" not in answers  # still being checked: the other request did not wait for it
    finally:
        release.set()
        constrained.join(QUICKLY_S * 4)
    assert answers == {"constrained": 200}


def test_the_step_limit_setting_reaches_each_grammar_request_and_is_checked(registry, loader, tmp_path):
    settings = Settings.from_env({"SLM_GRAMMAR_STEP_LIMIT_S": "0.5"}, models_file=tmp_path / "unused.yaml")
    with TestClient(create_app(settings, registry=registry)) as client:
        assert client.post(CHAT, json={**HELLO, "grammar": 'root ::= "a"\n'}).status_code == 200
    assert loader.engines["fake-model"].requests[-1].grammar_step_limit_s == 0.5
    for wrong in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="grammar_step_limit_s"):
            Settings.from_env({"SLM_GRAMMAR_STEP_LIMIT_S": wrong})


class RefusingBuilder(FakeEngine):
    """A worker whose grammar builder refuses, as server/engine/grammar_cache.py does, or never finishes."""

    refusal: Exception | None = None

    async def compile_grammar(self, grammar: str) -> None:
        if self.refusal is None:
            await asyncio.Event().wait()  # a build that never ends
        raise self.refusal


@pytest.mark.parametrize(
    ("refusal", "status", "code"),
    [
        (None, 400, "grammar_too_complex"),  # the pipeline's own budget
        (GrammarTooComplexError("The output grammar takes llama.cpp longer than 10 s to build."), 400, None),
        (ModelUnavailableError("This model's grammar builder is held.", retry_after=5), 503, "model_unavailable"),
    ],
)
def test_a_grammar_build_past_its_budget_is_refused_with_the_builders_reason(
    tmp_path, monkeypatch, refusal, status, code
):
    monkeypatch.setattr(pipeline, "GRAMMAR_BUDGET_S", 0.05)
    engine = RefusingBuilder()
    engine.refusal = refusal
    registry = ModelRegistry([fake_spec("fake-model")], lambda spec: engine)
    with TestClient(create_app(Settings(models_file=tmp_path / "unused.yaml"), registry=registry)) as client:
        response = client.post(CHAT, json={**HELLO, "model": "fake-model", "grammar": 'root ::= "a"\n'})
    error = assert_openai_error(response, status, code=code or "grammar_too_complex")
    if status == 400:
        assert error["param"] == "grammar" and "left-recursive" not in error["message"]
    else:
        assert response.headers["Retry-After"] == "5"
