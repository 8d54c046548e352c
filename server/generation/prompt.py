"""A plan's conversation as the model's chat template expects it, tools included."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

from server.generation import tools
from server.generation.plan import Turn

MAX_ARGUMENT_DEPTH = 64  # earlier calls' arguments nested deeper reach the template as text


def conversation(
    turns: tuple[Turn, ...], tool_plan: tools.ToolPlan | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and tools for the chat template: the template's own tool support where it has one we read,
    else tools described in the system message."""
    native = tool_plan is not None and tool_plan.template_tools is not None
    messages = [template_message(turn, native_tools=native) for turn in turns]
    if tool_plan is not None:
        messages = tools.with_instructions(messages, tool_plan)
    return messages, tool_plan.template_tools if native else None


def template_message(turn: Turn, *, native_tools: bool = False) -> dict[str, Any]:
    """A turn as chat templates expect it. Earlier tool calls go to a template that knows tools as the
    structured `tool_calls` it expects (arguments as objects); to any other template as text in the generic
    call syntax the model is taught (see tools.py)."""
    if turn.tool_calls and native_tools:
        structured = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _json_or_text(c.arguments)}}
            for c in turn.tool_calls
        ]
        return {"role": "assistant", "content": turn.content, "tool_calls": structured}
    if native_tools and turn.role == "tool":
        return {"role": "tool", "content": turn.content, "tool_call_id": turn.tool_call_id}
    content = turn.content
    if turn.tool_calls:
        generic = [{"name": c.name, "arguments": _json_or_text(c.arguments)} for c in turn.tool_calls]
        content = json.dumps({"tool_calls": generic})
    return {"role": turn.role, "content": content}


def _json_or_text(value: str) -> Any:
    try:  # pydantic's parser, unlike json.loads, refuses lone surrogates (which cannot be encoded for the model)
        parsed = pydantic_core.from_json(value)
    except (TypeError, ValueError, RecursionError):
        return value
    return parsed if _depth(parsed) <= MAX_ARGUMENT_DEPTH else value


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
        ]
        if depth > MAX_ARGUMENT_DEPTH:
            break
    return depth
