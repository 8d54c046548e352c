"""A reasoning template's switch and where its reply begins, with DeepSeek V3.1's real template: thinking is off
unless asked for (the generation prompt ends `<think></think>`), on when asked (it ends `<think>`, the reply begins
inside the block); its own switch is `thinking`, and it honours the `enable_thinking` we set."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.engine.reasoning import reasoning_format
from server.engine.template import ChatTemplate
from server.generation.plan import GenerationPlan, ReasoningRequest, Turn
from server.generation.thinking import thinking_of

V31 = (Path(__file__).parents[1] / "templates" / "deepseek-ai-DeepSeek-V3.1.jinja").read_text(encoding="utf-8")
ASKED = [{"role": "user", "content": "Hi"}]


def test_deepseek_v31s_markers_and_switch_are_found_in_its_template():
    fmt = reasoning_format(None, V31)
    assert fmt is not None and (fmt.start, fmt.end, fmt.switch) == ("<think>", "</think>", "enable_thinking")


@pytest.mark.parametrize(
    ("asked", "prompt_end", "start"),
    [
        (None, "<｜Assistant｜><think></think>", None),  # the template's default: no thinking  # noqa: RUF001
        (ReasoningRequest(enabled=False), "<｜Assistant｜><think></think>", None),  # noqa: RUF001
        (ReasoningRequest(enabled=True), "<｜Assistant｜><think>", "inside"),  # noqa: RUF001
    ],
)
def test_deepseek_v31s_reply_begins_where_the_switch_puts_it(asked, prompt_end, start):
    fmt = reasoning_format(None, V31)
    thinking = thinking_of(GenerationPlan(model="m", turns=(Turn("user", "Hi"),), reasoning=asked), fmt)
    prompt = ChatTemplate(V31, bos_token="<s>").render(ASKED, variables=thinking.template_vars)
    assert prompt.endswith(prompt_end)
    assert thinking.start(prompt) == start


def test_after_a_tool_result_deepseek_v31_writes_no_generation_prompt_and_the_reply_may_open_a_block():
    call = {"type": "function", "function": {"name": "f", "arguments": {}}}
    messages = [*ASKED, {"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "tool", "content": "1"}]
    fmt = reasoning_format(None, V31)
    thinking = thinking_of(GenerationPlan(model="m", turns=(Turn("user", "Hi"),)), fmt)
    prompt = ChatTemplate(V31).render(messages, variables={"enable_thinking": True})
    assert prompt.endswith("<｜tool▁output▁begin｜>1<｜tool▁output▁end｜>")  # the template's own way  # noqa: RUF001
    assert thinking.start(prompt) == "before"
