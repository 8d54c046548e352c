"""What a tool-call dialect is: one model family's syntax for tools, in the prompt, in the history, in replies
and in the grammar that forces a call. Each family's module subclasses `Dialect`; the helpers here are shared."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core

from server.engine.tool_syntax import JSONArguments
from server.generation.grammar_rules import gbnf_literal
from server.generation.plan import FunctionSpec, ToolCallRecord, Turn
from server.generation.reply import ToolCall

MAX_CALLS = 8  # per reply: a forced call cannot grow without end
MAX_ARGUMENT_DEPTH = 64  # earlier calls' arguments nested deeper reach the template as text


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


# A model's JSON: NaN and Infinity (which Python's parser takes) are not calls' arguments; raw control characters
# inside strings (a newline in code a model writes) are read as the characters they are (tool_dialects/json_canon.py
# reads them the same way as they stream).
JSON = json.JSONDecoder(parse_constant=_not_json, strict=False)


@dataclass(frozen=True)
class CallFormat:
    """The functions a reply may call, and the syntax it calls them in."""

    functions: dict[str, dict[str, Any]]  # name -> parameters schema
    dialect: str = "generic"
    most: int = MAX_CALLS  # calls read from one reply: 1 for a named function or parallel_tool_calls false


class Dialect:
    """A family's tool-call syntax. The defaults are those of a template that takes the tools (`tools`) and
    earlier calls (`tool_calls` on assistant messages, role `tool` for results) in the shape Hugging Face
    chat templates share, and prints them in its own syntax."""

    name = ""
    template_lists_tools = True  # the template is given the tools; else they are described in the system message
    opening: str | None = None  # the text calls begin with, wherever in the reply (text before it is content)
    json_at_start = False  # a reply that begins with "{" may be calls (syntaxes whose calls are bare JSON)
    markers: tuple[str, ...] = ()  # the syntax's control tokens, shown as text in replies when tools may be called
    # How calls begin as they stream (tool_dialects/preview.py): `first_call` where the calls begin, `next_call`
    # where the call before ended, each up to the "{" of the call's arguments, with the function's name as the last
    # group that took part (`streamed_calls`); None: the calls are read whole at the reply's end.
    first_call: re.Pattern[str] | None = None
    next_call: re.Pattern[str] | None = None
    call_is_object = True  # a call is a JSON object that holds its arguments: it ends after them

    def instructions(self, functions: Sequence[FunctionSpec], when: str, forced: bool) -> str | None:
        """What the system message says about the tools (None: nothing): the template lists them itself, so
        only a forced choice is said."""
        return when if forced else None

    def template_tools(self, functions: Sequence[FunctionSpec]) -> list[dict[str, Any]] | None:
        if not self.template_lists_tools:
            return None
        return [{"type": "function", "function": f.described()} for f in functions]

    def with_tools(self, messages: list[dict[str, Any]], functions: Sequence[FunctionSpec]) -> list[dict[str, Any]]:
        """The conversation, with anything the template expects on its messages to show the tools."""
        return messages

    def messages(self, turn: Turn) -> list[dict[str, Any]]:
        """A turn as the template's messages: earlier calls as structured `tool_calls`, results as role `tool`."""
        if turn.tool_calls:
            calls = [self.structured(call) for call in turn.tool_calls]
            return [{"role": "assistant", "content": turn.content or None, "tool_calls": calls}]
        if turn.role == "tool":
            return [{"role": "tool", "content": turn.content, "tool_call_id": self.call_id(turn.tool_call_id)}]
        return [{"role": turn.role, "content": turn.content}]

    def structured(self, call: ToolCallRecord) -> dict[str, Any]:
        function = {"name": call.name, "arguments": arguments_value(call.arguments)}
        return {"id": self.call_id(call.id), "type": "function", "function": function}

    def fresh_id(self) -> str:
        """An id for a call the model makes."""
        return new_call_id()

    def call_id(self, client_id: str | None) -> str | None:
        """A call's id as the template is shown it."""
        return client_id

    def parse(self, text: str, calls: CallFormat) -> list[ToolCall] | None:
        """The calls in `text` (which begins, after blanks, where the calls do), or None when it is not calls."""
        raise NotImplementedError

    def call(self, name: str, arguments: str) -> str:
        """The GBNF of one call of `name`, given the expression of its arguments (JSON)."""
        raise NotImplementedError

    def calls(self, call: str, most: int) -> str:
        """The GBNF of a forced reply: 1 to `most` of `call`."""
        raise NotImplementedError

    def grammar(self, arguments: Sequence[tuple[str, str]], most: int) -> str:
        """The rules `root` and `call` of a forced reply, given each function's name and arguments expression."""
        alternatives = " | ".join(self.call(name, expression) for name, expression in arguments)
        return f"root ::= {self.calls('call', most)}\ncall ::= {alternatives}\n"


def repeated(item: str, separator: str, most: int) -> str:
    """GBNF: `item`, then up to `most - 1` more after `separator` (a literal; "": one right after the other)."""
    if most <= 1:
        return item
    return f"{item} ({f'{gbnf_literal(separator)} ' if separator else ''}{item}){{0,{most - 1}}}"


def json_call(name: str, arguments: str, *, key: str = "arguments", tail: str = "") -> str:
    """GBNF of `{"name": NAME, "<key>": ARGUMENTS}` spaced as `json.dumps` spaces it (as templates print calls);
    `tail`: GBNF of more members after the arguments."""
    head = [gbnf_literal('{"name": '), gbnf_literal(json.dumps(name)), gbnf_literal(f', "{key}": '), arguments]
    return " ".join([*head, *([tail] if tail else []), gbnf_literal("}")])


BLANK = "[ \t\r\n]{0,32}"  # blanks as models write them between tokens (bounded: the patterns' length is)
NAME = "([A-Za-z0-9_.-]{1,64})"  # a function's name as requests may give it (bounded, no escapes)


def json_header(*keys: str) -> str:
    """How a call written as `{"name": NAME, "<key>": {...}}` begins (name first, as templates print calls)."""
    key, b = "|".join(re.escape(k) for k in keys), BLANK
    return rf'\{{{b}"name"{b}:{b}"{NAME}"{b},{b}"(?:{key})"{b}:{b}(?=\{{)'


def streamed_calls(lead: str, gap: str, header: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """A dialect's `first_call` and `next_call`: what comes before the first call's header, and between a call's
    end and the next one's (patterns without groups)."""
    return re.compile(f"(?:{lead}){header}"), re.compile(f"(?:{gap}){header}")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def alphanumeric_id(length: int = 9) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def read_call(
    item: Any, calls: CallFormat, keys: tuple[str, ...] = ("arguments",), call_id: str | None = None
) -> ToolCall | None:
    """A call written as a JSON object with its name and its arguments under one of `keys`; None if it is not a
    call of one of the functions (a name that is not one of theirs, or not even a string; arguments that are not
    an object)."""
    if not isinstance(item, dict) or not isinstance(name := item.get("name"), str) or name not in calls.functions:
        return None
    text = arguments_text(next((item[key] for key in keys if key in item), {}))
    return None if text is None else ToolCall(call_id or new_call_id(), name, text)


def arguments_text(arguments: Any) -> str | None:
    """Arguments as the JSON text OpenAI gives: an object as written, or JSON text of one that a model quoted
    (null: none); None for anything else, which no client could read as a call's arguments."""
    if isinstance(arguments, str):
        try:
            arguments = JSON.decode(arguments)
        except (ValueError, RecursionError):
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None
    try:  # a number too large for a float (1e400) is no JSON text
        return json.dumps(arguments, allow_nan=False)
    except ValueError:
        return None


def read_calls(items: Any, calls: CallFormat, keys: tuple[str, ...] = ("arguments",)) -> list[ToolCall] | None:
    """The first `calls.most` items of a list, each a call (`read_call`); None unless the list holds calls only."""
    if not isinstance(items, list) or not items:
        return None
    found = [read_call(item, calls, keys) for item in items[: calls.most]]
    return None if None in found else found  # type: ignore[return-value]


def json_values(text: str, most: int, separators: str = " \t\r\n") -> list[Any]:
    """Up to `most` JSON values written one after the other from the start of `text`, with only `separators`
    between them; the scan stops (without raising) at the first thing that is not one. Linear in the text; a
    value nested deeper than the parser goes ends it."""
    values: list[Any] = []
    at = 0
    while len(values) < most:
        while at < len(text) and text[at] in separators:
            at += 1
        if at >= len(text):
            break
        try:
            value, at = JSON.raw_decode(text, at)
        except (ValueError, RecursionError):
            break
        values.append(value)
    return values


def arguments_value(text: str) -> Any:
    """An earlier call's arguments for a template: an object (that a template may also print or concatenate as
    its JSON text), else the text as it was sent."""
    try:  # pydantic's parser, unlike json.loads, refuses lone surrogates (which cannot be encoded for the model)
        parsed = pydantic_core.from_json(text)
    except (TypeError, ValueError, RecursionError):
        return text
    if _depth(parsed) > MAX_ARGUMENT_DEPTH:
        return text
    return JSONArguments(parsed) if isinstance(parsed, dict) else parsed


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
