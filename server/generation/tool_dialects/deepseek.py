"""DeepSeek V2.5, V3 and R1 (and the R1 distills): each call is
`<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGUMENTS\n```<｜tool▁call▁end｜>`, the calls of a reply
between `<｜tool▁calls▁begin｜>` and `<｜tool▁calls▁end｜>`. Their templates print earlier calls and results in
that syntax but do not list the tools: those are described in the system message, with the syntax."""  # noqa: RUF002

from __future__ import annotations

import json
from collections.abc import Sequence

from server.engine import tool_syntax
from server.generation.grammar_rules import gbnf_literal
from server.generation.plan import FunctionSpec
from server.generation.reply import ToolCall
from server.generation.tool_dialects.base import JSON, CallFormat, Dialect, read_calls, repeated
from server.generation.tool_dialects.hermes import blocks

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"  # noqa: RUF001
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"  # noqa: RUF001
FENCE_OPEN, FENCE_CLOSE = "\n```json\n", "\n```"
INSTRUCTIONS = (
    "You can call these functions:\n{functions}\n\n"
    "To call one or more of them, reply with:\n"
    f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}<function name>{FENCE_OPEN}<arguments as JSON>{FENCE_CLOSE}{CALL_END}"
    f"{CALLS_END}\n(one {CALL_BEGIN}...{CALL_END} for each call, on its own line).\n"
    "{when}"
)


class DeepSeek(Dialect):
    name = tool_syntax.DEEPSEEK
    template_lists_tools = False
    opening = CALLS_BEGIN
    markers = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, SEP)

    def instructions(self, functions: Sequence[FunctionSpec], when: str, forced: bool) -> str | None:
        described = "\n".join(json.dumps(f.described(), ensure_ascii=False) for f in functions)
        return INSTRUCTIONS.format(functions=described, when=when)

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
