"""Mistral (Nemo, 7B v0.3 and their kin): the template lists the tools in `[AVAILABLE_TOOLS]` and the model
answers `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "..."}]`, each call with an id of its own: nine
letters or digits, which the template requires of earlier calls and of the results that answer them."""

from __future__ import annotations

import hashlib
import re

from server.engine import tool_syntax
from server.generation.grammar_rules import gbnf_literal
from server.generation.reply import ToolCall
from server.generation.tool_dialects.base import (
    BLANK,
    CallFormat,
    Dialect,
    alphanumeric_id,
    json_call,
    json_header,
    json_values,
    read_call,
    repeated,
    streamed_calls,
)

TOOL_CALLS = "[TOOL_CALLS]"
_ID = re.compile(r"[A-Za-z0-9]{9}")
ID_MEMBER = gbnf_literal(', "id": "') + " [a-zA-Z0-9]{9} " + gbnf_literal('"')  # GBNF: the call's id
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Mistral(Dialect):
    name = tool_syntax.MISTRAL
    opening = TOOL_CALLS
    markers = (TOOL_CALLS,)
    # An id the model writes after the arguments comes too late for a stream: calls get theirs as they begin.
    first_call, next_call = streamed_calls(
        rf"{BLANK}{re.escape(TOOL_CALLS)}{BLANK}\[?{BLANK}", f"{BLANK},{BLANK}", json_header("arguments")
    )

    def fresh_id(self) -> str:
        return alphanumeric_id()

    def call_id(self, client_id: str | None) -> str | None:
        """A client's call id as nine letters and digits: itself when it is one (an id this model made), else
        one derived from it, the same for the call and for the result that answers it."""
        if client_id is None or _ID.fullmatch(client_id):
            return client_id
        number = int.from_bytes(hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).digest()[:8], "big")
        digits = []
        for _ in range(9):
            number, digit = divmod(number, len(_DIGITS))
            digits.append(_DIGITS[digit])
        return "".join(digits)

    def parse(self, text: str, calls: CallFormat) -> list[ToolCall] | None:
        stripped = text.strip()
        if not stripped.startswith(TOOL_CALLS):
            return None
        [items] = json_values(stripped[len(TOOL_CALLS) :], 1) or [None]
        if isinstance(items, dict):  # one call, not in a list
            items = [items]
        if not isinstance(items, list) or not items:
            return None
        found: list[ToolCall] = []
        for item in items[: calls.most]:
            given = item.get("id") if isinstance(item, dict) else None
            taken = {call.id for call in found}
            fresh = isinstance(given, str) and _ID.fullmatch(given) and given not in taken
            call = read_call(item, calls, call_id=given if fresh else alphanumeric_id())
            if call is None:
                return None
            found.append(call)
        return found

    def call(self, name: str, arguments: str) -> str:
        return json_call(name, arguments, tail=ID_MEMBER)

    def calls(self, call: str, most: int) -> str:
        return f"{gbnf_literal(TOOL_CALLS + '[')} {repeated(call, ', ', most)} {gbnf_literal(']')}"
