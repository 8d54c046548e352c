"""DeepSeek V2.5, V3 and R1 (and the R1 distills): each call is
`<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGUMENTS\n```<｜tool▁call▁end｜>`, the calls of a reply
between `<｜tool▁calls▁begin｜>` and `<｜tool▁calls▁end｜>`; DeepSeek V3.1 writes each call
`<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGUMENTS<｜tool▁call▁end｜>`, the calls one right after the other. Their
templates print earlier calls and results in that syntax but do not list the tools: those are described in the
system message, with the syntax (for V3.1, in the form DeepSeek documents for it). Replies are read in either form."""  # noqa: RUF002

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from server.engine import tool_syntax
from server.engine.template import MARKER, TEXT, MarkedContent
from server.generation.grammar_rules import gbnf_literal
from server.generation.plan import FunctionSpec
from server.generation.reply import ToolCall
from server.generation.tool_dialects.base import (
    BLANK,
    JSON,
    NAME,
    CallFormat,
    Dialect,
    read_calls,
    repeated,
    streamed_calls,
)
from server.generation.tool_dialects.hermes import blocks

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"  # noqa: RUF001
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"  # noqa: RUF001
FENCE_OPEN, FENCE_CLOSE = "\n```json\n", "\n```"
# The system message's instructions, around the functions described and when to call (the request's text).
V3_FORMAT = (
    "\n\nTo call one or more of them, reply with:\n"
    f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}<function name>{FENCE_OPEN}<arguments as JSON>{FENCE_CLOSE}{CALL_END}"
    f"{CALLS_END}\n(one {CALL_BEGIN}...{CALL_END} for each call, on its own line).\n"
)
V31_FORMAT = (  # V3.1's tool prompt, as DeepSeek's model card gives it
    "IMPORTANT: ALWAYS adhere to this exact format for tool use:\n"
    f"{CALLS_BEGIN}{CALL_BEGIN}tool_call_name{SEP}tool_call_arguments{CALL_END}{{{{additional_tool_calls}}}}"
    f"{CALLS_END}\n\n"
    "Where:\n"
    "- `tool_call_name` must be an exact match to one of the available tools\n"
    "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n"
    "- For multiple tool calls, chain them directly without separators or spaces\n\n"
)
NO_PARAMETERS = {"type": "object", "properties": {}}
_MARKER = re.compile("(" + "|".join(re.escape(m) for m in (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP)) + ")")


def _instructions(*parts: tuple[str, bool]) -> MarkedContent:
    """The instructions from our own text (True), whose markers reach the model as its control tokens, and the
    request's (False: the functions described, which may hold any text, kept as text)."""
    return MarkedContent(
        piece
        for text, ours in parts
        for piece in (
            [(p, MARKER if i % 2 else TEXT) for i, p in enumerate(_MARKER.split(text))] if ours else [(text, TEXT)]
        )
    )


class DeepSeek(Dialect):
    name = tool_syntax.DEEPSEEK
    template_lists_tools = False
    opening = CALLS_BEGIN
    markers = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP)
    # V3: function<｜tool▁sep｜>NAME, then the arguments fenced; V3.1: NAME<｜tool▁sep｜>ARGUMENTS  # noqa: RUF003
    first_call, next_call = streamed_calls(
        f"{BLANK}{CALLS_BEGIN}{BLANK}",
        f"{BLANK}(?:```{BLANK})?{CALL_END}{BLANK}",
        rf"{CALL_BEGIN}{BLANK}(?:function{BLANK}{SEP}{BLANK}{NAME}[ \t]{{0,32}}\n{BLANK}```(?:json)?{BLANK}"
        rf"|{NAME}{BLANK}{SEP}{BLANK})(?=\{{)",
    )
    call_is_object = False

    def instructions(self, functions: Sequence[FunctionSpec], when: str, forced: bool) -> str | None:
        described = "\n".join(json.dumps(f.described(), ensure_ascii=False) for f in functions)
        return _instructions(("You can call these functions:\n", True), (described, False), (V3_FORMAT, True),
                             (when, False))  # fmt: skip

    def parse(self, text: str, calls: CallFormat) -> list[ToolCall] | None:
        stripped = text.strip()
        if not stripped.startswith(CALLS_BEGIN):
            return None
        items = []
        for block in blocks(stripped, CALL_BEGIN, CALL_END, calls.most):
            kind, sep, rest = block.partition(SEP)
            if not sep:
                return None
            if kind.strip() == "function" and "\n" in rest:  # V3: the name on its line, the arguments fenced
                name, _, arguments = rest.partition("\n")
                arguments = arguments.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
            else:  # V3.1 writes NAME<｜tool▁sep｜>ARGUMENTS  # noqa: RUF003
                name, arguments = kind, rest
            try:
                items.append({"name": name.strip(), "arguments": JSON.decode(arguments)})
            except (ValueError, RecursionError):
                return None
        return read_calls(items, calls)

    def call(self, name: str, arguments: str) -> str:
        head = gbnf_literal(f"{CALL_BEGIN}function{SEP}{name}{FENCE_OPEN}")
        return f"{head} {arguments} {gbnf_literal(FENCE_CLOSE + CALL_END)}"

    def calls(self, call: str, most: int) -> str:
        return f"{gbnf_literal(CALLS_BEGIN)} {repeated(call, chr(10), most)} {gbnf_literal(CALLS_END)}"


class DeepSeekV31(DeepSeek):
    """DeepSeek V3.1's template prints earlier calls as NAME<｜tool▁sep｜>ARGUMENTS, and its model was taught the
    tools and that form in the system message's `## Tools` section: the forced call is written the same way."""  # noqa: RUF002

    name = tool_syntax.DEEPSEEK_V31

    def instructions(self, functions: Sequence[FunctionSpec], when: str, forced: bool) -> str | None:
        listed = "".join(
            f"\n### {f.name}\n"
            + (f"Description: {f.description}\n" if f.description is not None else "")
            + f"\nParameters: {json.dumps(f.parameters or NO_PARAMETERS, ensure_ascii=False)}\n"
            for f in functions
        )
        head = "## Tools\nYou have access to the following tools:\n"
        return _instructions((head, True), (listed, False), ("\n" + V31_FORMAT, True), (when, False))

    def call(self, name: str, arguments: str) -> str:
        return f"{gbnf_literal(CALL_BEGIN + name + SEP)} {arguments} {gbnf_literal(CALL_END)}"

    def calls(self, call: str, most: int) -> str:
        return f"{gbnf_literal(CALLS_BEGIN)} {repeated(call, '', most)} {gbnf_literal(CALLS_END)}"
