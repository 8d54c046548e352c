"""Each family's own tool-call syntax, with its real chat template (tests/templates/): the tools listed in the
template's terms, earlier calls and results shown in its syntax (and a call read from a reply shows again as the
model wrote it), replies read back in that syntax, adversarial replies read as text, and the shown tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.engine import tool_syntax
from server.engine.template import ChatTemplate
from server.generation import tools
from server.generation.plan import FunctionSpec, ParamNames, ToolCallRecord, ToolRequest, Turn
from server.generation.prompt import conversation
from server.generation.tool_dialects import MAX_CALLS, CallFormat, dialect
from server.generation.tools import parse_calls

TEMPLATES = Path(__file__).parents[1] / "templates"
DS_BEGIN, DS_CALL = "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>"  # noqa: RUF001
DS_SEP, DS_END = "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"  # noqa: RUF001
WEATHER = FunctionSpec(
    "get_weather",
    "Current weather",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
ASKED = Turn("user", "Weather in Paris?")
CALLED = Turn("assistant", "", tool_calls=(ToolCallRecord("call_1", "get_weather", '{"city": "Paris"}'),))
ANSWERED = Turn("tool", "18C", tool_call_id="call_1")
FAMILIES = {  # dialect: (template, a reply that calls get_weather(city="Paris"), as the grammar writes it)
    "llama3": ("meta-llama-Llama-3.1-8B-Instruct.jinja", '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
    "mistral": (
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1B2c3D4e"}]',
    ),
    "deepseek": (  # DeepSeek's own (its GGUFs carry it; text as tests/seed_models.py cites it)
        "../seed_templates/deepseek-r1-distill-qwen.jinja",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"  # noqa: RUF001
        '{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',  # noqa: RUF001
    ),
    "deepseek_v31": (
        "deepseek-ai-DeepSeek-V3.1.jinja",
        f'{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}{{"city": "Paris"}}{DS_END}<｜tool▁calls▁end｜>',  # noqa: RUF001
    ),
    "phi4mini": (
        "microsoft-Phi-4-mini-instruct.jinja",
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>',
    ),
    "hermes": (
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    ),
}


def render(name: str, turns: tuple[Turn, ...], choice: str = "auto", template: str | None = None) -> str:
    tool_plan = tools.plan(ToolRequest((WEATHER,), choice), ParamNames(), name)
    messages, template_tools = conversation(turns, tool_plan)
    source = (TEMPLATES / (template or FAMILIES[name][0])).read_text(encoding="utf-8")
    return ChatTemplate(source, bos_token="<s>", eos_token="</s>").render(messages, tools=template_tools)


def calls_of(name: str, most: int = MAX_CALLS) -> CallFormat:
    return CallFormat({"get_weather": WEATHER.parameters, "get_time": {"type": "object"}}, name, most)


def test_llama3_lists_the_tools_in_the_first_user_message_and_shows_calls_as_its_json():
    prompt = render("llama3", (ASKED, CALLED, ANSWERED))
    assert "Given the following functions" in prompt and '"name": "get_weather",\n        "description"' in prompt
    assert (
        '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": {"city": "Paris"}}'
        '<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n"18C"<|eot_id|>'
    ) in prompt
    assert '{"tool_calls"' not in prompt  # the generic syntax is not taught


def test_llama3_shows_several_calls_of_one_turn_one_message_each():
    two = ToolCallRecord("call_2", "get_weather", '{"city": "Oslo"}')
    turn = Turn("assistant", "Checking.", tool_calls=(*CALLED.tool_calls, two))
    prompt = render("llama3", (ASKED, turn), template="meta-llama-Llama-3.2-3B-Instruct.jinja")  # no exception
    assert prompt.count("<|start_header_id|>assistant<|end_header_id|>\n\n") == 4  # text, 2 calls, the reply's
    assert "Checking.<|eot_id|>" in prompt and '"parameters": {"city": "Oslo"}}' in prompt


def test_mistral_lists_the_tools_and_gives_the_template_ids_it_accepts():
    prompt = render("mistral", (ASKED, CALLED, ANSWERED))
    listed = '[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather", "description": "Current'
    assert listed in prompt
    derived = dialect("mistral").call_id("call_1")
    assert derived is not None and len(derived) == 9 and derived.isalnum()
    assert f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {{"city": "Paris"}}, "id": "{derived}"}}]</s>' in prompt
    assert f'[TOOL_RESULTS]{{"content": 18C, "call_id": "{derived}"}}[/TOOL_RESULTS]' in prompt
    assert dialect("mistral").call_id("a1B2c3D4e") == "a1B2c3D4e"  # an id the model made is its own


def test_deepseek_describes_the_tools_in_the_system_message_with_its_syntax():
    prompt = render("deepseek", (ASKED, CALLED, ANSWERED), choice="required")
    assert prompt.startswith("<s>You can call these functions:\n" + json.dumps(WEATHER.described()))
    assert "You must call at least one function." in prompt.split("<｜User｜>")[0]  # noqa: RUF001
    assert "<｜Assistant｜>" + FAMILIES["deepseek"][1] + "<｜end▁of▁sentence｜>" in prompt  # noqa: RUF001
    assert "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>18C<｜tool▁output▁end｜>" in prompt  # noqa: RUF001


def test_deepseek_templates_that_dump_the_arguments_show_them_the_same():
    adapted = render("deepseek", (ASKED, CALLED), template="deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja")
    assert FAMILIES["deepseek"][1] in adapted
    # The 8B's closes the calls only after a second one (its own quirk); the call itself is shown the same.
    eight_b = render("deepseek", (ASKED, CALLED), template="deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja")
    assert FAMILIES["deepseek"][1].removesuffix("<｜tool▁calls▁end｜>") in eight_b  # noqa: RUF001


def test_deepseek_v31_describes_the_tools_as_its_model_card_does_and_shows_calls_in_its_form():
    two = ToolCallRecord("call_2", "get_time", "{}")
    turn = Turn("assistant", "Checking.", tool_calls=(*CALLED.tool_calls, two))
    answered = (ANSWERED, Turn("tool", "12:00", tool_call_id="call_2"), Turn("assistant", "Mild."), ASKED)
    prompt = render("deepseek_v31", (Turn("system", "Be brief."), ASKED, turn, *answered), choice="required")
    system = prompt.split("<｜User｜>")[0]  # noqa: RUF001
    assert system.startswith("<s>Be brief.\n\n## Tools\nYou have access to the following tools:\n\n### get_weather\n")
    assert "Parameters: " + json.dumps(WEATHER.parameters) in system
    assert f"{DS_BEGIN}{DS_CALL}tool_call_name{DS_SEP}tool_call_arguments{DS_END}" in system  # V3.1's form
    assert "function" + DS_SEP not in system and "```" not in system  # not V3's
    assert system.endswith("You must call at least one function.")
    assert (
        f'<｜Assistant｜><think></think>Checking.{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}{{"city": "Paris"}}{DS_END}'  # noqa: RUF001
        f"{DS_CALL}get_time{DS_SEP}{{}}{DS_END}<｜tool▁calls▁end｜><｜end▁of▁sentence｜>"  # noqa: RUF001
        "<｜tool▁output▁begin｜>18C<｜tool▁output▁end｜><｜tool▁output▁begin｜>12:00<｜tool▁output▁end｜>"  # noqa: RUF001
        "Mild.<｜end▁of▁sentence｜><｜User｜>Weather in Paris?<｜Assistant｜><think></think>"  # noqa: RUF001
    ) in prompt
    assert prompt.endswith("<｜Assistant｜><think></think>")  # the template's default: no thinking  # noqa: RUF001


def test_deepseek_v31_forces_calls_in_its_own_form_one_right_after_the_other():
    tool_plan = tools.plan(ToolRequest((WEATHER,), "required"), ParamNames(), "deepseek_v31")
    grammar = tools.forced_grammar(tool_plan)
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines() if " ::= " in line)
    assert rules["root"] == f'"{DS_BEGIN}" call (call){{0,{MAX_CALLS - 1}}} "<｜tool▁calls▁end｜>"'  # noqa: RUF001
    assert rules["call"].startswith(f'"{DS_CALL}get_weather{DS_SEP}" ') and rules["call"].endswith(f' "{DS_END}"')
    v3 = tools.forced_grammar(tools.plan(ToolRequest((WEATHER,), "required"), ParamNames(), "deepseek"))
    assert f"function{DS_SEP}get_weather" in v3 and "function" not in rules["call"]


def test_phi4_mini_lists_the_tools_on_the_system_message_and_writes_calls_in_the_content():
    prompt = render("phi4mini", (ASKED, CALLED, ANSWERED))
    assert prompt.startswith("<|system|><|tool|>" + json.dumps([WEATHER.described()]) + "<|/tool|><|end|>")
    assert "<|assistant|>" + FAMILIES["phi4mini"][1] + "<|end|><|tool|>18C<|end|>" in prompt


def test_hermes_lists_the_tools_and_shows_calls_in_blocks():
    prompt = render("hermes", (ASKED, CALLED, ANSWERED))
    assert "<tools>\n" + json.dumps({"type": "function", "function": WEATHER.described()}) + "\n</tools>" in prompt
    assert "<|im_start|>assistant\n" + FAMILIES["hermes"][1] + "<|im_end|>" in prompt
    assert "<tool_response>\n18C\n</tool_response>" in prompt


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_call_read_from_a_reply_shows_in_the_history_as_it_was_written(name):
    [call] = parse_calls(FAMILIES[name][1], calls_of(name))
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    if name == "mistral":
        assert call.id == "a1B2c3D4e"  # the model's own id
    else:
        assert call.id.startswith("call_")
    turn = Turn("assistant", "", tool_calls=(ToolCallRecord(call.id, call.name, call.arguments),))
    prompt = render(name, (ASKED, turn, Turn("tool", "18C", tool_call_id=call.id)))
    assert FAMILIES[name][1] in prompt


@pytest.mark.parametrize(
    ("name", "reply", "names"),
    [
        ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "X"}}', ["get_weather"]),
        ("llama3", '{"type": "function", "name": "get_time", "parameters": {}}', ["get_time"]),
        ("llama3", '{"name": "get_time", "parameters": {}}; {"name": "get_weather", "arguments": {}}',
         ["get_time", "get_weather"]),
        ("llama3", '<|python_tag|>get_weather.call(city="Paris", days=3)', ["get_weather"]),
        ("mistral", '[TOOL_CALLS] [{"name": "get_time", "arguments": {}}]', ["get_time"]),  # no id (7B v0.3)
        ("mistral", '[TOOL_CALLS]{"name": "get_time", "arguments": "{}"}', ["get_time"]),
        ("deepseek", f"{DS_BEGIN}{DS_CALL}get_time{DS_SEP}{{}}{DS_END}", ["get_time"]),  # V3.1's way
        ("deepseek_v31", f"{DS_BEGIN}{DS_CALL}get_time{DS_SEP}{{}}{DS_END}{DS_CALL}get_weather{DS_SEP}{{}}{DS_END}",
         ["get_time", "get_weather"]),  # chained, unclosed
        ("deepseek_v31", f"{DS_BEGIN}{DS_CALL}function{DS_SEP}get_time\n```json\n{{}}\n```{DS_END}", ["get_time"]),
        ("phi4mini", '<|tool_call|>[{"name": "get_time", "arguments": {}}]', ["get_time"]),  # left unclosed
        ("phi4mini", '<|tool_call|>{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {}}',
         ["get_time", "get_time"]),  # bare calls, not in a list
    ],
)  # fmt: skip
def test_the_ways_each_family_writes_calls_are_read(name, reply, names):
    found = parse_calls(reply, calls_of(name))
    assert found is not None and [call.name for call in found] == names
    assert all(isinstance(json.loads(call.arguments), dict) for call in found)


def test_llama3_builtin_call_arguments_and_mistral_ids():
    [builtin] = parse_calls('<|python_tag|>get_weather.call(city="Paris", days=3)', calls_of("llama3"))
    assert json.loads(builtin.arguments) == {"city": "Paris", "days": 3}
    same = '{"name": "get_time", "arguments": {}, "id": "abcdefghi"}'
    found = parse_calls(f"[TOOL_CALLS][{same}, {same}, {same.replace('abcdefghi', 'bad id!')}]", calls_of("mistral"))
    ids = [call.id for call in found]
    assert ids[0] == "abcdefghi" and len(set(ids)) == 3  # a repeated or malformed id is replaced
    assert all(len(i) == 9 and i.isalnum() for i in ids)


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("name", "reply"),
    [
        ("llama3", "{" + " " * 1_000_000),
        ("llama3", '{"name": "get_weather", "parameters": ' + DEEP + "}"),
        ("llama3", '{"name": "nope", "parameters": {}}'),
        ("llama3", '{"a": 1} is JSON'),
        ("llama3", "<|python_tag|>print('hi')"),
        ("llama3", "<|python_tag|>get_weather.call(city=Paris)"),
        ("llama3", "<|python_tag|>get_weather.call(" + "x=1, " * 100_000),
        ("mistral", "[TOOL_CALLS]" + DEEP),
        ("mistral", "[TOOL_CALLS][]"),
        ("mistral", '[TOOL_CALLS][{"name": "nope", "arguments": {}}]'),
        ("mistral", "[TOOL_CALLS]" + "[" * 1_000_000),
        ("mistral", "[TOOL_CALLS]not json"),
        ("deepseek", "<｜tool▁calls▁begin｜>" + " " * 1_000_000),  # noqa: RUF001
        ("deepseek", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function get_weather<｜tool▁call▁end｜>"),  # noqa: RUF001
        ("deepseek", f"{DS_BEGIN}{DS_CALL}function{DS_SEP}get_weather\n```json\n{DEEP}\n```{DS_END}"),
        ("deepseek_v31", f"{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}{DEEP}{DS_END}"),
        ("deepseek_v31", f"{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}not json{DS_END}"),
        ("deepseek_v31", f"{DS_BEGIN}{DS_CALL}nope{DS_SEP}{{}}{DS_END}"),
        ("phi4mini", "<|tool_call|>" + DEEP),
        ("phi4mini", "<|tool_call|><|/tool_call|>"),
        ("phi4mini", '<|tool_call|>[{"name": "get_time", "arguments": {}}, 7]<|/tool_call|>'),
    ],
)  # fmt: skip
def test_malformed_calls_are_text(name, reply):
    assert parse_calls(reply, calls_of(name)) is None


@pytest.mark.parametrize(
    ("name", "reply"),
    [
        ("llama3", '{"name": "get_time", "parameters": {}} ' * 10_000),
        ("mistral", "[TOOL_CALLS][" + ", ".join(['{"name": "get_time", "arguments": {}}'] * 10_000) + "]"),
        ("deepseek", DS_BEGIN + f"{DS_CALL}function{DS_SEP}get_time\n```json\n{{}}\n```{DS_END}" * 10_000),
        ("deepseek_v31", DS_BEGIN + f"{DS_CALL}get_time{DS_SEP}{{}}{DS_END}" * 10_000),
        ("phi4mini", "<|tool_call|>[" + ", ".join(['{"name": "get_time", "arguments": {}}'] * 10_000) + "]"),
    ],
)  # fmt: skip
def test_many_calls_give_at_most_the_allowed_number(name, reply):
    assert len(parse_calls(reply, calls_of(name))) == MAX_CALLS
    assert len(parse_calls(reply, calls_of(name, most=1))) == 1


def test_the_syntaxs_control_tokens_are_shown_in_replies_only_with_tools():
    assert tools.shown_tokens(None) == ()
    assert tools.shown_tokens(tools.plan(ToolRequest((WEATHER,)), ParamNames(), "mistral")) == ("[TOOL_CALLS]",)
    assert tools.shown_tokens(tools.plan(ToolRequest((WEATHER,)), ParamNames(), "llama3")) == ("<|python_tag|>",)
    assert tools.shown_tokens(tools.plan(ToolRequest((WEATHER,)), ParamNames(), None)) == ()


@pytest.mark.parametrize("name", [tool_syntax.HERMES, tool_syntax.LLAMA3, tool_syntax.MISTRAL, tool_syntax.DEEPSEEK,
                                  tool_syntax.DEEPSEEK_V31, tool_syntax.PHI4_MINI])  # fmt: skip
def test_every_syntax_the_engine_recognises_has_its_dialect(name):
    assert dialect(name).name == name
    assert dialect(None).name == dialect("a later version's").name == "generic"


@pytest.mark.parametrize("name", ["hermes", "generic", "llama3", "mistral", "deepseek", "deepseek_v31", "phi4mini"])
def test_arguments_that_are_not_json_make_no_call(name):
    reply = {
        "hermes": '<tool_call>{"name": "get_time", "arguments": {"x": NaN}}</tool_call>',
        "generic": '{"tool_calls": [{"name": "get_time", "arguments": {"x": Infinity}}]}',
        "llama3": '{"name": "get_time", "parameters": {"x": -Infinity}}',
        "mistral": '[TOOL_CALLS][{"name": "get_time", "arguments": {"x": NaN}}]',
        "deepseek": f'{DS_BEGIN}{DS_CALL}function{DS_SEP}get_time\n```json\n{{"x": NaN}}\n```{DS_END}',
        "deepseek_v31": f'{DS_BEGIN}{DS_CALL}get_time{DS_SEP}{{"x": NaN}}{DS_END}',
        "phi4mini": '<|tool_call|>[{"name": "get_time", "arguments": {"x": NaN}}]',
    }[name]
    assert parse_calls(reply, calls_of(name)) is None


@pytest.mark.parametrize("name", list(FAMILIES))
def test_without_tools_earlier_calls_are_shown_in_the_familys_own_syntax(name):
    """With no tools now (or tool_choice none), a conversation's earlier calls still reach the template as its
    structured calls (or, for Phi-4-mini, its syntax in the content), never as another syntax the model could copy."""
    [call] = parse_calls(FAMILIES[name][1], calls_of(name))
    turn = Turn("assistant", "", tool_calls=(ToolCallRecord(call.id, call.name, call.arguments),))
    messages, template_tools = conversation((ASKED, turn, Turn("tool", "18C", tool_call_id=call.id)), None, name)
    source = (TEMPLATES / FAMILIES[name][0]).read_text(encoding="utf-8")
    prompt = ChatTemplate(source, bos_token="<s>", eos_token="</s>").render(messages, tools=template_tools)
    assert template_tools is None and '{"tool_calls"' not in prompt
    assert FAMILIES[name][1] in prompt
