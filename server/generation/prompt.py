"""A plan's conversation as the model's chat template expects it, tools included."""

from __future__ import annotations

from typing import Any

from server.generation import tool_dialects, tools
from server.generation.plan import Turn


def conversation(
    turns: tuple[Turn, ...], tool_plan: tools.ToolPlan | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and tools for the chat template. With tools, in the call syntax of the model's template
    (tool_dialects/): the tools given to the template or described in the system message, earlier calls and
    their results as that template shows them. Without, earlier calls are shown as generic JSON text."""
    dialect = tool_dialects.dialect(None if tool_plan is None else tool_plan.calls.dialect)
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
