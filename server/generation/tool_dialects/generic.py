"""The generic syntax, for models whose template has no tool syntax we read: the tools are described in the
system message, and the model answers with only a JSON object `{"tool_calls": [{"name": ..., "arguments": ...}]}`
(as llama.cpp's server does for such models)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from server.generation.grammar_rules import gbnf_literal
from server.generation.plan import FunctionSpec, Turn
from server.generation.reply import ToolCall
from server.generation.tool_dialects.base import (
    BLANK,
    JSON,
    CallFormat,
    Dialect,
    arguments_value,
    json_call,
    json_header,
    read_calls,
    repeated,
    streamed_calls,
)

CALL_INSTRUCTIONS = (
    "You can call these functions:\n{functions}\n\n"
    "To call one or more of them, reply with only a JSON object of this form and nothing else:\n"
    '{{"tool_calls": [{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}]}}\n'
    "{when}"
)


class Generic(Dialect):
    name = "generic"
    template_lists_tools = False
    json_at_start = True
    first_call, next_call = streamed_calls(
        rf'{BLANK}\{{{BLANK}"tool_calls"{BLANK}:{BLANK}\[{BLANK}', f"{BLANK},{BLANK}", json_header("arguments")
    )

    def instructions(self, functions: Sequence[FunctionSpec], when: str, forced: bool) -> str | None:
        described = "\n".join(json.dumps(f.described()) for f in functions)
        return CALL_INSTRUCTIONS.format(functions=described, when=when)

    def messages(self, turn: Turn) -> list[dict[str, Any]]:
        """Earlier calls as the JSON the model is taught to write; results as role `tool` (no call id: a
        template that knows no tools prints nothing more)."""
        content = turn.content
        if turn.tool_calls:
            written = [{"name": c.name, "arguments": arguments_value(c.arguments)} for c in turn.tool_calls]
            content = json.dumps({"tool_calls": written})
        return [{"role": turn.role, "content": content}]

    def parse(self, text: str, calls: CallFormat) -> list[ToolCall] | None:
        stripped = text.strip()
        if not stripped.startswith("{"):
            return None
        try:
            data = JSON.decode(stripped)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
            return None
        return read_calls(data.get("tool_calls") if isinstance(data, dict) else None, calls)

    def call(self, name: str, arguments: str) -> str:
        return json_call(name, arguments)

    def calls(self, call: str, most: int) -> str:
        opening, closing = gbnf_literal('{"tool_calls": ['), gbnf_literal("]}")
        return f"{opening} {repeated(call, ', ', most)} {closing}"
