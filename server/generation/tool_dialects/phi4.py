"""Phi-4-mini: the tools go on the system message, as JSON text in its `tools` (the template prints them between
`<|tool|>` and `<|/tool|>`), and the model answers `<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>`.
The template prints only contents: earlier calls are written into the assistant's content in that syntax, its
markers kept apart from the text (a MarkedContent) so that they reach the model as its control tokens."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from server.engine import tool_syntax
from server.engine.template import MARKER, TEXT, MarkedContent
from server.generation.grammar_rules import gbnf_literal
from server.generation.plan import FunctionSpec, Turn
from server.generation.reply import ToolCall
from server.generation.tool_dialects.base import (
    BLANK,
    CallFormat,
    Dialect,
    arguments_value,
    json_call,
    json_header,
    json_values,
    read_calls,
    repeated,
    streamed_calls,
)

OPEN, CLOSE = "<|tool_call|>", "<|/tool_call|>"


class Phi4Mini(Dialect):
    name = tool_syntax.PHI4_MINI
    template_lists_tools = False  # listed on the system message instead (`with_tools`)
    opening = OPEN
    markers = (OPEN, CLOSE)
    first_call, next_call = streamed_calls(
        rf"{BLANK}{re.escape(OPEN)}{BLANK}\[?{BLANK}", "[ \t\r\n,]{0,32}", json_header("arguments")
    )

    def with_tools(self, messages: list[dict[str, Any]], functions: Sequence[FunctionSpec]) -> list[dict[str, Any]]:
        listed = json.dumps([f.described() for f in functions], ensure_ascii=False)
        if messages and messages[0]["role"] == "system":
            return [{**messages[0], "tools": listed}, *messages[1:]]
        return [{"role": "system", "content": "", "tools": listed}, *messages]

    def messages(self, turn: Turn) -> list[dict[str, Any]]:
        if turn.tool_calls:
            written = [{"name": c.name, "arguments": arguments_value(c.arguments)} for c in turn.tool_calls]
            pieces = [(turn.content, TEXT), (OPEN, MARKER), (json.dumps(written), TEXT), (CLOSE, MARKER)]
            return [{"role": "assistant", "content": MarkedContent(pieces)}]
        return [{"role": turn.role, "content": turn.content}]

    def parse(self, text: str, calls: CallFormat) -> list[ToolCall] | None:
        stripped = text.strip()
        if not stripped.startswith(OPEN):
            return None
        body = stripped[len(OPEN) :].partition(CLOSE)[0]  # the model may leave the block unclosed
        values = json_values(body, calls.most, separators=" \t\r\n,")
        items = values[0] if len(values) == 1 and isinstance(values[0], list) else values  # a list, or bare calls
        return read_calls(items, calls)

    def call(self, name: str, arguments: str) -> str:
        return json_call(name, arguments)

    def calls(self, call: str, most: int) -> str:
        return f"{gbnf_literal(OPEN + '[')} {repeated(call, ', ', most)} {gbnf_literal(']' + CLOSE)}"
