"""A plan's conversation as the model's chat template expects it, tools included."""

from __future__ import annotations

from typing import Any

from server.generation import tool_dialects, tools
from server.generation.plan import Turn


def conversation(
    turns: tuple[Turn, ...], tool_plan: tools.ToolPlan | None, native: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and tools for the chat template. With tools, in the call syntax of the model's template
    (tool_dialects/): the tools given to the template or described in the system message, earlier calls and
    their results as that template shows them. Without tools, earlier calls are still shown in the template's
    own syntax (`native`, the model's dialect, when it has one; else as generic JSON text): a model shown another
    syntax may copy it."""
    dialect = tool_dialects.dialect(native if tool_plan is None else tool_plan.calls.dialect)
    messages = [message for turn in turns for message in _with_reasoning(dialect.messages(turn), turn)]
    if tool_plan is None:
        return messages, None
    return tools.with_instructions(messages, tool_plan), tool_plan.template_tools


def _with_reasoning(messages: list[dict[str, Any]], turn: Turn) -> list[dict[str, Any]]:
    """An assistant turn's thinking as `reasoning_content`, the field templates that show earlier thinking read
    (Qwen3's, after the last user message); other templates ignore it."""
    if not turn.reasoning:
        return messages
    return [{**m, "reasoning_content": turn.reasoning} if m.get("role") == "assistant" else m for m in messages]
