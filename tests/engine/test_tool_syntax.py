"""Which tool-call syntax a chat template teaches, read from the real templates of each family; and earlier calls'
arguments that templates print as an object or concatenate as JSON text alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.engine.template import ChatTemplate
from server.engine.tool_syntax import JSONArguments, tool_dialect

TEMPLATES = Path(__file__).parents[1] / "templates"
V31_CALL = 'get_weather<｜tool▁sep｜>{"city": "Paris", "n": [1, 2]}<｜tool▁call▁end｜>'  # noqa: RUF001


@pytest.mark.parametrize(
    ("template", "dialect"),
    [
        ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3"),
        ("meta-llama-Llama-3.2-3B-Instruct.jinja", "llama3"),
        ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral"),
        ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", "deepseek"),
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "deepseek"),
        ("deepseek-ai-DeepSeek-V3.1.jinja", "deepseek_v31"),
        ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes"),
        ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "hermes"),
        ("microsoft-Phi-4-mini-instruct.jinja", "phi4mini"),
        ("../seed_templates/qwen3.jinja", "hermes"),
    ],
)
def test_each_familys_template_is_recognised(template, dialect):
    assert tool_dialect((TEMPLATES / template).read_text(encoding="utf-8")) == dialect


@pytest.mark.parametrize(
    "source",
    [
        "",
        # syntaxes we do not read are not taken for one we do (the generic syntax is used for them):
        "{% if tools %}<tool_call>\n<function={{ tool_call.name }}>\n<parameter=x>{% endif %}",  # Qwen3-Coder's XML
        "{{ '[AVAILABLE_TOOLS]' + tools|tojson }}{{ '[TOOL_CALLS]' + name + '[ARGS]' + arguments }}",  # Mistral v11
        "<|start_header_id|>user<|end_header_id|>{{ content }}<|eot_id|>",  # Llama 3 without tools
    ],
)
def test_templates_without_a_syntax_we_read_have_none(source):
    assert tool_dialect(source) is None


def test_deepseek_v31s_form_is_told_from_v3s_by_the_fence():
    v31 = "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + name + '<｜tool▁sep｜>' + arguments}}"  # noqa: RUF001
    assert tool_dialect(v31) == "deepseek_v31"
    v3 = "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>' + name + '\\n```json\\n'}}"  # noqa: RUF001
    assert tool_dialect(v3) == "deepseek"


def test_a_templates_own_syntax_is_what_chat_template_reports():
    source = (TEMPLATES / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text(encoding="utf-8")
    assert ChatTemplate(source).tool_dialect == "mistral" and ChatTemplate(None).tool_dialect is None


@pytest.mark.parametrize(
    ("template", "printed"),
    [
        # concatenates the arguments: `'```json' + '\n' + tool['function']['arguments'] + '\n'`
        ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", '```json\n{"city": "Paris", "n": [1, 2]}\n```'),
        # prints them with tojson: `tool['function']['arguments'] | tojson`
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", '```json\n{"city": "Paris", "n": [1, 2]}\n```'),
        # V3.1's prints the name, the separator, then `tool['function']['arguments'] | tojson`
        ("deepseek-ai-DeepSeek-V3.1.jinja", V31_CALL),
        ("Qwen-Qwen2.5-7B-Instruct.jinja", '"arguments": {"city": "Paris", "n": [1, 2]}}'),
        ("mistralai-Mistral-Nemo-Instruct-2407.jinja", '{"city": "Paris", "n": [1, 2]}, "id": "abcdefghi"}'),
    ],
)
def test_arguments_print_as_json_whether_concatenated_or_dumped(template, printed):
    arguments = JSONArguments({"city": "Paris", "n": [1, 2]})
    call = {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "18C", "tool_call_id": "abcdefghi"},
    ]
    prompt = ChatTemplate((TEMPLATES / template).read_text(encoding="utf-8"), bos_token="<s>", eos_token="</s>").render(
        messages
    )
    assert printed in prompt


def test_json_arguments_are_a_dict_and_their_json_text():
    arguments = JSONArguments({"a": "é"})
    assert dict(arguments) == {"a": "é"} and str(arguments) == '{"a": "é"}'
    assert "x" + arguments + "y" == 'x{"a": "é"}y'
    with pytest.raises(TypeError):
        _ = arguments + 1
