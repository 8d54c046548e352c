"""Each family's own tool-call syntax, for real: a tiny random-weight GGUF per family with that family's real chat
template (tests/templates/, as the models' GGUFs carry it) and its vocabulary's markers as their own tokens
(control tokens where the family's tokenizer has them). The template lists the tools in its own terms, the
history shows in its own syntax, a forced call (grammar-constrained, so valid even from random weights) comes back
as OpenAI tool_calls with stable ids, and the openai SDK's stream helper assembles the same calls."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from server.config import ModelSpec, PathSource
from server.engine.llama import LlamaCppEngine
from server.generation.plan import ToolCallRecord, Turn
from server.generation.prompt import conversation
from tests.gguf_factory import write_tiny_llama
from tests.real.conftest import ServerProcess
from tests.real.test_native_tools_real import QUESTION, WEATHER

pytestmark = pytest.mark.real

TEMPLATES = Path(__file__).parents[1] / "templates"
DEEPSEEK_MARKERS = tuple(
    f"<｜{name}｜>"  # noqa: RUF001
    for name in (
        "begin▁of▁sentence",
        "end▁of▁sentence",
        "User",
        "Assistant",
    )
)
DEEPSEEK_TOOL_TOKENS = tuple(
    f"<｜{name}｜>"  # noqa: RUF001
    for name in (
        "tool▁calls▁begin",
        "tool▁calls▁end",
        "tool▁call▁begin",
        "tool▁call▁end",
        "tool▁sep",
        "tool▁outputs▁begin",
        "tool▁outputs▁end",
        "tool▁output▁begin",
        "tool▁output▁end",
    )
)


@dataclass(frozen=True)
class Family:
    template: str
    specials: tuple[str, ...]  # control tokens, as in the family's real vocabulary
    bos: str
    eos: str
    listed: str  # how the template lists the tools (a piece of the prompt)
    history: tuple[str, ...]  # how it shows the earlier call and its result
    user_defined: tuple[str, ...] = ()  # added tokens written out as text
    marker: str | None = None  # a control token of the call syntax: a forced reply that begins with it is read
    entry: dict = field(default_factory=dict)  # more of the models.yaml entry


FAMILIES = {
    "llama3": Family(
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|python_tag|>",
        ),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        listed="Given the following functions, please respond with a JSON for a function call with its proper "
        'arguments that best answers the given prompt.\n\nRespond in the format {"name": function name, '
        '"parameters": dictionary of argument name and its value}.Do not use variables.\n\n{\n    "type": "function"',
        history=(
            '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": '
            '"Paris", "unit": "celsius"}}<|eot_id|>',
            '<|start_header_id|>ipython<|end_header_id|>\n\n"18 degrees"<|eot_id|>',
        ),
    ),
    "mistral": Family(
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        (
            "<unk>",
            "<s>",
            "</s>",
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ),
        bos="<s>",
        eos="</s>",
        listed='[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather", "description": ',
        history=(
            '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}, '
            '"id": "a1B2c3D4e"}]',
            '[TOOL_RESULTS]{"content": 18 degrees, "call_id": "a1B2c3D4e"}[/TOOL_RESULTS]',
        ),
        marker="[TOOL_CALLS]",
    ),
    "deepseek": Family(
        "../seed_templates/deepseek-r1-distill-qwen.jinja",
        DEEPSEEK_MARKERS,
        bos=DEEPSEEK_MARKERS[0],
        eos=DEEPSEEK_MARKERS[1],
        listed='You can call these functions:\n{"name": "get_weather", "description": ',
        history=(
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"  # noqa: RUF001
            '{"city": "Paris", "unit": "celsius"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',  # noqa: RUF001
            "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>18 degrees<｜tool▁output▁end｜>",  # noqa: RUF001
        ),
        user_defined=("<think>", "</think>", *DEEPSEEK_TOOL_TOKENS),
        entry={"reasoning": False},  # its thinking is the reasoning tests' matter: here the call comes at once
    ),
    "deepseek_v31": Family(
        "deepseek-ai-DeepSeek-V3.1.jinja",
        DEEPSEEK_MARKERS,
        bos=DEEPSEEK_MARKERS[0],
        eos=DEEPSEEK_MARKERS[1],
        listed="## Tools\nYou have access to the following tools:\n\n### get_weather\nDescription: Current weather",
        history=(
            "<｜Assistant｜><think></think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"  # noqa: RUF001
            '{"city": "Paris", "unit": "celsius"}<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>',  # noqa: RUF001
            "<｜tool▁output▁begin｜>18 degrees<｜tool▁output▁end｜>",  # noqa: RUF001
        ),
        user_defined=("<think>", "</think>", *DEEPSEEK_TOOL_TOKENS),
        # its thinking is left to the template: off unless asked for (the prompt closes an empty block)
    ),
    "phi4mini": Family(
        "microsoft-Phi-4-mini-instruct.jinja",
        (
            "<|endoftext|>",
            "<|system|>",
            "<|user|>",
            "<|assistant|>",
            "<|end|>",
            "<|tool|>",
            "<|/tool|>",
            "<|tool_call|>",
            "<|/tool_call|>",
            "<|tool_response|>",
            "<|/tool_response|>",
        ),
        bos="<|endoftext|>",
        eos="<|end|>",
        listed='<|system|><|tool|>[{"name": "get_weather", "description": ',
        history=(
            '<|assistant|><|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]'
            "<|/tool_call|><|end|>",
            "<|tool|>18 degrees<|end|>",
        ),
        marker="<|tool_call|>",
    ),
    "hermes": Family(
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos="<|endoftext|>",
        eos="<|im_end|>",
        listed='<tools>\n{"type": "function", "function": {"name": "get_weather", "description": ',
        history=(
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
            "<tool_response>\n18 degrees\n</tool_response>",
        ),
        user_defined=("<tool_call>", "</tool_call>"),
    ),
}
HISTORY = [
    *QUESTION,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "a1B2c3D4e",  # an id Mistral's template accepts as it is (any other is given one it does)
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "a1B2c3D4e", "content": "18 degrees"},
]


def _write_family(path: Path, family: Family) -> Path:
    return write_tiny_llama(
        path,
        chat_template=(TEMPLATES / family.template).read_text(encoding="utf-8"),
        context_length=4096,
        quant="Q4_1",  # a sequence's logits do not depend on its batch: seeded replies repeat exactly
        specials=family.specials,
        bos=family.bos,
        eos=family.eos,
        user_defined=family.user_defined,
    )


@pytest.fixture(scope="module")
def families_server(tmp_path_factory) -> ServerProcess:
    folder = tmp_path_factory.mktemp("families")
    entries = []
    for name, family in FAMILIES.items():
        path = _write_family(folder / f"{name}.gguf", family)
        entry = {"name": f"tiny-{name}", "source": {"path": str(path)}, "n_ctx": 4096, "n_threads": 1}
        entries.append({**entry, **family.entry})
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": entries}, allow_unicode=True))
    process = ServerProcess(folder / "models.yaml")
    yield process
    process.stop()


def _prompt(server: ServerProcess, model: str, messages: list[dict]) -> str:
    body = {"model": model, "messages": messages, "tools": [WEATHER]}
    response = httpx.post(server.url + "/apply-template", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["prompt"]


def _assert_valid_calls(calls) -> None:
    assert calls
    for call in calls:
        arguments = json.loads(call.function.arguments)
        assert call.function.name == "get_weather" and set(arguments) == {"city", "unit"}
        assert arguments["unit"] in ("celsius", "fahrenheit") and isinstance(arguments["city"], str)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_familys_own_syntax_end_to_end(families_server, name):
    family, model = FAMILIES[name], f"tiny-{name}"
    # The template lists the tools in its own terms, and shows the history in its own syntax.
    assert family.listed in _prompt(families_server, model, QUESTION)
    history = _prompt(families_server, model, HISTORY)
    assert all(piece in history for piece in family.history), history
    assert '{"tool_calls"' not in history  # the generic syntax is not taught to this model

    api = openai.OpenAI(base_url=families_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    forced = {"model": model, "messages": QUESTION, "tools": [WEATHER], "temperature": 1.0, "max_tokens": 300}
    named = {"type": "function", "function": {"name": "get_weather"}}
    for seed, choice in ((1, "required"), (2, named), (3, "required")):  # random weights: only the grammar helps
        reply = api.chat.completions.create(**forced, tool_choice=choice, parallel_tool_calls=False, seed=seed)
        assert reply.choices[0].finish_reason == "tool_calls", reply.choices[0]
        _assert_valid_calls(reply.choices[0].message.tool_calls)
        assert len(reply.choices[0].message.tool_calls) == 1  # one call: parallel calls are off

    # Streamed, the SDK's helper assembles the very calls of the same (seeded) reply not streamed.
    # Parallel calls allowed: a random model forced to call repeats calls up to the most a reply may hold.
    request = {**forced, "tool_choice": "required", "parallel_tool_calls": True, "seed": 7, "max_tokens": 1200}
    whole = api.chat.completions.create(**request).choices[0]
    with api.chat.completions.stream(**request) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        streamed = stream.get_final_completion().choices[0]
    assert whole.finish_reason == streamed.finish_reason == "tool_calls", whole
    _assert_valid_calls(whole.message.tool_calls)
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls
    ]
    assert whole.message.content is None and streamed.message.content is None
    deltas = [d for chunk in chunks for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices]
    ids = [d.id for d in deltas if d.id is not None]
    assert ids == [c.id for c in streamed.message.tool_calls] and len(set(ids)) == len(ids)  # stable, once each
    # The arguments stream: a call's first delta has its name and no arguments, the rest come in pieces.
    assert all(d.function.arguments == "" for d in deltas if d.id is not None)
    assert len(deltas) > 2 * len(ids)
    if name == "mistral":  # ids as Mistral's are: nine letters and digits
        for choice in (whole, streamed):
            assert all(len(c.id) == 9 and c.id.isalnum() for c in choice.message.tool_calls)


@pytest.mark.parametrize("name", [n for n, family in FAMILIES.items() if family.marker is not None])
def test_the_syntaxs_control_token_is_read_as_text_only_when_tools_may_be_called(families_server, name):
    family, model = FAMILIES[name], f"tiny-{name}"
    token = httpx.post(
        families_server.url + "/tokenize", json={"model": model, "content": family.marker}, timeout=120
    ).json()["tokens"]
    assert len(token) == 1  # one control token of this vocabulary
    api = openai.OpenAI(base_url=families_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    bias = {str(token[0]): 100}  # the forced reply begins with the control token, not with its spelling
    reply = api.chat.completions.create(
        model=model, messages=QUESTION, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
        logit_bias=bias, seed=4, max_tokens=300,
    )  # fmt: skip
    assert reply.choices[0].finish_reason == "tool_calls", reply.choices[0]
    _assert_valid_calls(reply.choices[0].message.tool_calls)
    plain = api.chat.completions.create(model=model, messages=QUESTION, logit_bias=bias, seed=4, max_tokens=5)
    assert family.marker not in (plain.choices[0].message.content or "")  # no tools: control tokens show nothing


def test_phi4_minis_earlier_calls_reach_it_as_its_control_tokens(families_server, tmp_path):
    """Its template prints earlier calls only inside the assistant's content: the markers the dialect writes there
    are the model's control tokens, while the same text from the client (a message, an argument) stays text."""
    opening, closing = "<|tool_call|>", "<|/tool_call|>"
    # Through the server (the messages cross to the model's worker process): the prompt it counts is the rendered
    # prompt with every marker as one control token, not the markers' spelling.
    prompt = _prompt(families_server, "tiny-phi4mini", HISTORY)
    tokenized = httpx.post(
        families_server.url + "/tokenize",
        json={"model": "tiny-phi4mini", "content": prompt, "add_special": True},
        timeout=120,
    ).json()["tokens"]
    api = openai.OpenAI(base_url=families_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    reply = api.chat.completions.create(model="tiny-phi4mini", messages=HISTORY, tools=[WEATHER], max_tokens=1)
    assert reply.usage.prompt_tokens == len(tokenized)

    spec = ModelSpec(
        name="phi4", source=PathSource(path=_write_family(tmp_path / "phi4.gguf", FAMILIES["phi4mini"])), n_threads=1,
        parallel=1,
    )  # fmt: skip
    engine = LlamaCppEngine.load(spec)
    try:
        [open_id], [close_id] = (asyncio.run(engine.tokenize(m, add_special=False)) for m in (opening, closing))
        arguments = json.dumps({"city": f"{opening}Paris{closing}", "unit": "celsius"})
        turns = (
            Turn("user", f"Weather? {opening}"),
            Turn("assistant", "", tool_calls=(ToolCallRecord("call_1", "get_weather", arguments),)),
            Turn("tool", f"{closing}18 degrees", tool_call_id="call_1"),
        )
        messages, _ = conversation(turns, None, "phi4mini")
        tokens = asyncio.run(engine.tokenize_chat(messages))
        # One control token each, for the call the dialect wrote; the client's spellings of them are text.
        assert tokens.count(open_id) == 1 and tokens.count(close_id) == 1
        inside = tokens[tokens.index(open_id) + 1 : tokens.index(close_id)]
        written = b"".join(asyncio.run(engine.detokenize(inside))).decode()
        assert json.loads(written) == [{"name": "get_weather", "arguments": json.loads(arguments)}]
        text = b"".join(asyncio.run(engine.detokenize(tokens))).decode()
        assert f"Weather? {opening}" in text and f"{closing}18 degrees" in text
    finally:
        engine.close()
