"""Llama 3.1, 3.2 and 3.3: the template lists the tools (in the first user message) and asks for a JSON object
`{"name": ..., "parameters": {...}}`; Llama 3.1 and 3.3 may also put `<|python_tag|>` before a call, and write a
built-in tool's call as `<|python_tag|>name.call(key="value", ...)`. The templates show one call per assistant
message, so a reply is read as one call or more written one after the other; a forced reply is one call."""

from __future__ import annotations

import json
import re
from typing import Any

from server.engine import tool_syntax
from server.generation.plan import Turn
from server.generation.reply import ToolCall
from server.generation.tool_dialects.base import (
    BLANK,
    JSON,
    CallFormat,
    Dialect,
    json_call,
    json_header,
    json_values,
    new_call_id,
    read_call,
    streamed_calls,
)

PYTHON_TAG = "<|python_tag|>"
_BUILTIN_CALL = re.compile(r"([A-Za-z0-9_-]{1,64})\.call\(")
_KEYWORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*=\s*")


class Llama3(Dialect):
    name = tool_syntax.LLAMA3
    opening = PYTHON_TAG
    json_at_start = True
    markers = (PYTHON_TAG,)
    first_call, next_call = streamed_calls(
        rf"{BLANK}(?:{re.escape(PYTHON_TAG)}{BLANK})?", "[ \t\r\n;,]{0,32}", json_header("parameters", "arguments")
    )

    def messages(self, turn: Turn) -> list[dict[str, Any]]:
        """The templates refuse an assistant message with more than one call: each call is its own message."""
        if len(turn.tool_calls) <= 1 and not (turn.tool_calls and turn.content):
            return super().messages(turn)
        said = [{"role": "assistant", "content": turn.content}] if turn.content else []
        one_each = [{"role": "assistant", "content": None, "tool_calls": [self.structured(c)]} for c in turn.tool_calls]
        return said + one_each

    def parse(self, text: str, calls: CallFormat) -> list[ToolCall] | None:
        stripped = text.strip()
        if stripped.startswith(PYTHON_TAG):
            stripped = stripped[len(PYTHON_TAG) :].lstrip()
            if not stripped.startswith("{"):
                found = _builtin_call(stripped, calls)
                return None if found is None else [found]
        if not stripped.startswith("{"):
            return None
        items = json_values(stripped, calls.most, separators=" \t\r\n;,")
        found = [read_call(item, calls, keys=("parameters", "arguments")) for item in items]
        return found if found and None not in found else None  # type: ignore[return-value]

    def call(self, name: str, arguments: str) -> str:
        return json_call(name, arguments, key="parameters")

    def calls(self, call: str, most: int) -> str:
        return call  # one call: the templates show one call per message


def _builtin_call(text: str, calls: CallFormat) -> ToolCall | None:
    """`name.call(key=value, ...)` with JSON values (a built-in tool's call); None if it is not one."""
    match = _BUILTIN_CALL.match(text)
    if match is None or match.group(1) not in calls.functions:
        return None
    arguments, at = {}, match.end()
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        if text.startswith(")", at):
            return ToolCall(new_call_id(), match.group(1), json.dumps(arguments))
        keyword = _KEYWORD.match(text, at)
        if keyword is None:
            return None
        try:
            arguments[keyword.group(1)], at = JSON.raw_decode(text, keyword.end())
        except (ValueError, RecursionError):
            return None
