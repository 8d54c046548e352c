"""Hermes 2 Pro / 3, Qwen 2.5, Qwen 3 and others: the template lists the tools and the model writes each call as
JSON in a block, `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one block per call."""

from __future__ import annotations

from server.engine import tool_syntax
from server.generation.grammar_rules import gbnf_literal
from server.generation.reply import ToolCall
from server.generation.tool_dialects.base import (
    BLANK,
    JSON,
    CallFormat,
    Dialect,
    json_call,
    json_header,
    read_calls,
    repeated,
    streamed_calls,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class Hermes(Dialect):
    name = tool_syntax.HERMES
    opening = OPEN
    markers = (OPEN, CLOSE)
    first_call, next_call = streamed_calls(
        f"{BLANK}{OPEN}{BLANK}", f"{BLANK}{CLOSE}{BLANK}{OPEN}{BLANK}", json_header("arguments")
    )

    def parse(self, text: str, calls: CallFormat) -> list[ToolCall] | None:
        stripped = text.strip()
        if not stripped.startswith(OPEN):
            return None
        try:
            return read_calls([JSON.decode(block) for block in blocks(stripped, OPEN, CLOSE, calls.most)], calls)
        except (ValueError, RecursionError):
            return None

    def call(self, name: str, arguments: str) -> str:
        return json_call(name, arguments)

    def calls(self, call: str, most: int) -> str:
        block = f"{gbnf_literal(OPEN + chr(10))} {call} {gbnf_literal(chr(10) + CLOSE)}"
        return repeated(f"({block})", "\n", most)


def blocks(text: str, opening: str, closing: str, most: int) -> list[str]:
    """The contents of the first `most` closed `opening ... closing` blocks, by a forward scan."""
    found: list[str] = []
    start = text.find(opening)
    while start != -1 and len(found) < most:
        end = text.find(closing, start + len(opening))
        if end == -1:
            break
        found.append(text[start + len(opening) : end].strip())
        start = text.find(opening, end + len(closing))
    return found
