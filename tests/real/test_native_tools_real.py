"""Tools with a model whose chat template has tool support of its own (the Hermes/Qwen <tool_call> syntax):
the template lists the tools and shows earlier calls in its own terms, and calls come back in that syntax,
grammar-constrained when forced, as OpenAI tool_calls."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import yaml

from tests.gguf_factory import write_tiny_llama
from tests.real.conftest import ServerProcess

# A Hermes-style template, in the shape Qwen 2.5 and Hermes models ship.
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}<|im_start|>user\n{{ message.content }}<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant"
    "{% if message.content %}\n{{ message.content }}{% endif %}"
    "{% for call in message.tool_calls or [] %}\n<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            # maxLength bounds what a random model writes; its length is not asserted below: a random byte-level
            # model can emit bytes that are not UTF-8, which decode to extra U+FFFD characters (the SmolLM2 tool
            # tests in test_http_real.py do assert maxLength)
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def hermes_server(tmp_path_factory) -> ServerProcess:
    folder = tmp_path_factory.mktemp("hermes")
    path = write_tiny_llama(folder / "hermes.gguf", chat_template=HERMES_TEMPLATE, quant="Q4_1")
    models = {"models": [{"name": "tiny-hermes", "source": {"path": str(path)}, "n_ctx": 1024, "n_threads": 1}]}
    (folder / "models.yaml").write_text(yaml.safe_dump(models))
    process = ServerProcess(folder / "models.yaml")
    yield process
    process.stop()


def test_the_template_lists_the_tools_itself(hermes_server):
    body = {"model": "tiny-hermes", "messages": QUESTION, "tools": [WEATHER]}
    prompt = httpx.post(hermes_server.url + "/apply-template", json=body, timeout=120).json()["prompt"]
    # (rendered with trim_blocks and lstrip_blocks, as Hugging Face renders chat templates)
    assert "<tools>" + json.dumps(WEATHER, ensure_ascii=False) + "</tools>" in prompt
    assert '{"tool_calls"' not in prompt  # the generic syntax is not taught to this model


def test_earlier_calls_and_results_are_shown_in_the_templates_own_syntax(hermes_server):
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"},
    ]
    body = {"model": "tiny-hermes", "messages": history, "tools": [WEATHER]}
    prompt = httpx.post(hermes_server.url + "/apply-template", json=body, timeout=120).json()["prompt"]
    expected_call = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
    )
    assert "<|im_start|>assistant" + expected_call + "<|im_end|>" in prompt
    assert "<tool_response>\n18 degrees\n</tool_response>" in prompt


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_forced_call_in_the_native_syntax_is_always_valid(hermes_server, tool_choice):
    api = openai.OpenAI(base_url=hermes_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    for seed in (1, 2, 3):  # random weights: only the grammar makes these calls valid
        reply = api.chat.completions.create(
            model="tiny-hermes",
            messages=QUESTION,
            tools=[WEATHER],
            tool_choice=tool_choice,
            parallel_tool_calls=False,  # one <tool_call> block: a random model would otherwise run to max_tokens
            temperature=1.0,
            seed=seed,
            max_tokens=300,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        for call in choice.message.tool_calls:
            arguments = json.loads(call.function.arguments)
            assert call.function.name == "get_weather" and set(arguments) == {"city", "unit"}
            assert arguments["unit"] in ("celsius", "fahrenheit") and isinstance(arguments["city"], str)


def test_a_streamed_native_call_assembles_in_the_sdk(hermes_server):
    api = openai.OpenAI(base_url=hermes_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with api.chat.completions.stream(
        model="tiny-hermes",
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        seed=5,
        max_tokens=300,
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls and all(call.function.name == "get_weather" for call in calls)
    assert all(set(json.loads(call.function.arguments)) == {"city", "unit"} for call in calls)
