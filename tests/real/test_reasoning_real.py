"""Reasoning models for real: tiny random-weight GGUFs with Qwen3's and DeepSeek-R1-Distill's published chat
templates, served like any registry entry. The templates render exactly (the switch included), a grammar forces a
thinking block and then JSON or a tool call through llama.cpp, and the budget forces the end marker. DeepSeek-R1's
first template (only </think> in it) opens the block implicitly: the reply is thinking from its first token."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from tests.real.conftest import ServerProcess
from tests.seed_models import DEEPSEEK_BOS, DEEPSEEK_EOS, write_seed_model

pytestmark = pytest.mark.real

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a colour"},
]
QWEN3_PROMPT = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nName a colour<|im_end|>\n<|im_start|>assistant\n"
)
R1_PROMPT = (
    f"{DEEPSEEK_BOS}You are terse.<｜User｜>Hi there<｜Assistant｜>Hello.{DEEPSEEK_EOS}"  # noqa: RUF001
    "<｜User｜>Name a colour<｜Assistant｜><think>\n"  # noqa: RUF001
)
EARLY_R1_PROMPT = R1_PROMPT.removesuffix("<think>\n")  # DeepSeek's first template: no <think> in the prompt
BUDGET = 6  # thinking tokens at the default effort ("medium")
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}},
    },
}
REPO_MODELS = Path(__file__).parents[2] / "models.yaml"


@pytest.fixture(scope="module")
def reasoning_server(tmp_path_factory) -> ServerProcess:
    folder = tmp_path_factory.mktemp("reasoning")
    seed = next(e for e in yaml.safe_load(REPO_MODELS.read_text())["models"] if e["name"] == "qwen3-1.7b")
    entries = [
        {  # the repository's entry, its file replaced by a tiny one with the same template
            **seed,
            "name": "tiny-qwen3",
            "source": {"path": str(write_seed_model(folder / "qwen3.gguf", "qwen3"))},
            "reasoning": {**seed["reasoning"], "budget_tokens": BUDGET},
            "n_ctx": 1024,  # tool definitions take ~600 tokens of a byte-level vocabulary
            "n_threads": 1,
            "parallel": 2,
        },
        {
            "name": "tiny-r1",
            "source": {"path": str(write_seed_model(folder / "r1.gguf", "r1distill"))},
            "reasoning": {"budget_tokens": BUDGET},  # markers and switch ("auto": none here) from the template
            "n_ctx": 512,
            "n_threads": 1,
        },
        {
            "name": "tiny-r1-early",
            "source": {"path": str(write_seed_model(folder / "r1-early.gguf", "r1distill-early"))},
            "reasoning": {"budget_tokens": BUDGET},  # the implicit start ("auto") from the template
            "n_ctx": 512,
            "n_threads": 1,
        },
    ]
    models_file = folder / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": entries}, allow_unicode=True))
    process = ServerProcess(models_file)
    yield process
    process.stop()


def post(server: ServerProcess, path: str, **body) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def chat(server: ServerProcess, model: str, **fields) -> dict:
    response = post(server, "/v1/chat/completions", model=model, messages=CONVERSATION, temperature=0, **fields)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_templates_render_exactly_with_their_switch(reasoning_server):
    def prompt(model: str, **fields) -> str:
        response = post(reasoning_server, "/apply-template", model=model, messages=CONVERSATION, **fields)
        assert response.status_code == 200, response.text
        return response.json()["prompt"]

    assert prompt("tiny-qwen3") == QWEN3_PROMPT
    assert prompt("tiny-qwen3", reasoning_effort="none") == QWEN3_PROMPT + "<think>\n\n</think>\n\n"
    assert prompt("tiny-r1") == R1_PROMPT
    refused = post(reasoning_server, "/apply-template", model="tiny-r1", messages=CONVERSATION, reasoning_effort="none")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "reasoning_effort"


def test_the_budget_forces_the_end_marker(reasoning_server):
    # DeepSeek-R1's template opens the block: every token is thinking until </think>, which the budget forces.
    cut = chat(reasoning_server, "tiny-r1", max_tokens=40)
    unbounded = chat(reasoning_server, "tiny-r1", max_tokens=40, reasoning_effort="max")
    thought = unbounded["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert thought > BUDGET + 1, "the random model ended its thinking itself: the test shows nothing"
    assert cut["usage"]["completion_tokens_details"]["reasoning_tokens"] == BUDGET + 1  # the forced </think>
    message = cut["choices"][0]["message"]
    assert message["reasoning_content"] and "</think>" not in message["reasoning_content"]
    # Greedy: the thinking up to the budget is the unbounded reply's thinking, cut where </think> was forced.
    assert unbounded["choices"][0]["message"]["reasoning_content"].startswith(message["reasoning_content"][:4])
    stream = httpx.post(
        reasoning_server.url + "/v1/chat/completions",
        json={"model": "tiny-r1", "messages": CONVERSATION, "temperature": 0, "max_tokens": 40, "stream": True},
        timeout=120,
    )
    deltas = [
        json.loads(line[6:])["choices"][0]["delta"]
        for line in stream.text.splitlines()
        if line.startswith("data: {") and '"choices":[{' in line
    ]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == message["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]


@pytest.mark.parametrize("model", ["tiny-qwen3", "tiny-r1", "tiny-r1-early"])
def test_a_grammar_forces_a_thinking_block_then_json(reasoning_server, model):
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    body = chat(reasoning_server, model, max_tokens=120, response_format=response_format, reasoning_effort="medium")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"])["a"], int)
    assert choice["message"]["reasoning_content"]
    thought = body["usage"]["completion_tokens_details"]["reasoning_tokens"]
    # The budget, then the forced </think>; where the budget ends inside a character written byte by byte, the
    # grammar refuses the marker until the character is whole (at most 3 more bytes).
    assert 0 < thought <= BUDGET + 1 + 3


def test_an_early_r1_template_opens_the_block_implicitly(reasoning_server):
    rendered = post(reasoning_server, "/apply-template", model="tiny-r1-early", messages=CONVERSATION)
    assert rendered.status_code == 200 and rendered.json()["prompt"] == EARLY_R1_PROMPT
    refused = post(
        reasoning_server, "/apply-template", model="tiny-r1-early", messages=CONVERSATION, reasoning_effort="none"
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "reasoning_effort"  # always thinks
    cut = chat(reasoning_server, "tiny-r1-early", max_tokens=40)
    assert cut["usage"]["completion_tokens_details"]["reasoning_tokens"] == BUDGET + 1  # from the first token
    assert cut["choices"][0]["message"]["reasoning_content"]
    # <think> written anyway (its token favoured throughout): dropped, the block goes on to the forced </think>, and
    # the grammar behind the block takes it, then JSON (which <think> cannot be part of).
    [think] = post(reasoning_server, "/tokenize", model="tiny-r1-early", content="<think>").json()["tokens"]
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    body = chat(
        reasoning_server,
        "tiny-r1-early",
        max_tokens=120,
        logit_bias={str(think): 100},
        response_format=response_format,
        reasoning_effort="medium",
    )
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == "<think>" * (BUDGET - 1)
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == BUDGET + 1
    assert isinstance(json.loads(message["content"])["a"], int)


def test_a_forced_tool_call_after_thinking(reasoning_server):
    body = chat(
        reasoning_server, "tiny-qwen3", max_tokens=160, tools=[WEATHER], tool_choice="required", reasoning_effort="low"
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert choice["message"]["reasoning_content"] is not None


def test_thinking_off_is_the_templates_own_empty_block(reasoning_server):
    body = chat(reasoning_server, "tiny-qwen3", max_tokens=8, reasoning_effort="none")
    assert "reasoning_content" not in body["choices"][0]["message"]
    assert "completion_tokens_details" not in body["usage"]


def test_the_repository_lists_a_pinned_reasoning_model():
    from server.config import HubSource, ReasoningSpec, load_models_file

    spec = next(spec for spec in load_models_file(REPO_MODELS).models if spec.name == "qwen3-1.7b")
    assert isinstance(spec.source, HubSource) and len(spec.source.revision) == 40
    assert isinstance(spec.reasoning, ReasoningSpec) and spec.reasoning.switch == "auto"
