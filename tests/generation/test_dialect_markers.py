"""The markers a dialect writes into a content itself (Phi-4-mini's earlier calls, DeepSeek's instructions in the
system message) reach the model as markup, tokenized as its control tokens, with the real templates; the same text
from the client (a message, a call's arguments, a function's description) stays inside content pieces, as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.engine.template import ChatTemplate
from server.generation import tools
from server.generation.plan import FunctionSpec, ParamNames, ToolCallRecord, ToolRequest, Turn
from server.generation.prompt import conversation

TEMPLATES = Path(__file__).parents[1] / "templates"
OPEN, CLOSE = "<|tool_call|>", "<|/tool_call|>"
DS_MARKERS = ("<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>")  # noqa: RUF001
WEATHER = FunctionSpec("get_weather", "Current weather", {"type": "object", "properties": {"city": {"type": "string"}}})
ASKED = Turn("user", "Weather in Paris?")


def segments(template: str, dialect: str | None, turns: tuple[Turn, ...], functions=(WEATHER,)):
    tool_plan = tools.plan(ToolRequest(functions, "auto"), ParamNames(), dialect) if functions else None
    messages, template_tools = conversation(turns, tool_plan, dialect)
    source = (TEMPLATES / template).read_text(encoding="utf-8")
    text, found = ChatTemplate(source, bos_token="<s>").render_segments(messages, tools=template_tools)
    assert found is not None and "".join(piece for piece, _ in found) == text
    return found


def markup(found: list[tuple[str, bool]]) -> str:
    return "".join(piece for piece, is_content in found if not is_content)


def content(found: list[tuple[str, bool]]) -> list[str]:
    return [piece for piece, is_content in found if is_content]


@pytest.mark.parametrize("with_tools", [True, False])
def test_phi4_minis_earlier_call_markers_are_markup_and_its_json_is_content(with_tools):
    call = ToolCallRecord("call_1", "get_weather", '{"city": "Paris"}')
    turns = (ASKED, Turn("assistant", "Checking.", tool_calls=(call,)), Turn("tool", "18C", tool_call_id="call_1"))
    found = segments("microsoft-Phi-4-mini-instruct.jinja", "phi4mini", turns, (WEATHER,) if with_tools else ())
    assert found[-7:] == [
        ("<|end|><|assistant|>", False),
        ("Checking.", True),
        (OPEN, False),  # the model's control token
        ('[{"name": "get_weather", "arguments": {"city": "Paris"}}]', True),  # the client's call: text
        (CLOSE + "<|end|><|tool|>", False),
        ("18C", True),
        ("<|end|><|assistant|>", False),
    ]


def test_phi4_mini_marker_text_from_the_client_stays_content():
    tricky = f'{{"city": "{OPEN}Paris{CLOSE}"}}'  # an argument string that spells the markers
    call = ToolCallRecord("call_1", "get_weather", tricky)
    turns = (
        Turn("user", f"Say {OPEN} please"),
        Turn("assistant", f"Sure {OPEN}", tool_calls=(call,)),
        Turn("tool", f"{CLOSE}18C", tool_call_id="call_1"),
    )
    found = segments("microsoft-Phi-4-mini-instruct.jinja", "phi4mini", turns)
    said = content(found)
    assert said[:2] == [f"Say {OPEN} please", f"Sure {OPEN}"] and said[-1] == f"{CLOSE}18C"
    assert json.loads(said[2]) == [{"name": "get_weather", "arguments": json.loads(tricky)}]
    # Exactly the two markers the dialect wrote are markup; every other spelling of them is content.
    assert markup(found).count(OPEN) == 1 and markup(found).count(CLOSE) == 1


@pytest.mark.parametrize(
    ("template", "dialect"),
    [
        ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", "deepseek"),
        ("deepseek-ai-DeepSeek-V3.1.jinja", "deepseek_v31"),
    ],
)
def test_deepseeks_instructions_show_its_markers_as_markup_and_the_descriptions_as_text(template, dialect):
    described = FunctionSpec("get_weather", f"Never write {DS_MARKERS[0]} yourself", WEATHER.parameters)
    found = segments(template, dialect, (Turn("system", "Be brief."), ASKED), (described,))
    system = found[: found.index(("<｜User｜>", False))]  # noqa: RUF001
    assert system[0] == ("<s>", False) and system[1][0].startswith("Be brief.\n\n")
    assert markup(system).removeprefix("<s>") == "".join(DS_MARKERS) + "<｜tool▁calls▁end｜>" + (  # noqa: RUF001
        "" if dialect == "deepseek_v31" else DS_MARKERS[1] + DS_MARKERS[3]
    )  # the syntax shown in the instructions, as the model's own tokens
    assert f"Never write {DS_MARKERS[0]} yourself" in "".join(content(system))  # the client's text
    assert content(found)[-1] == "Weather in Paris?"
