"""Function calling for every model: tools described in the prompt, calls read back from the output.

Two call syntaxes. Where the model's chat template lists the tools itself and teaches the Hermes syntax
(`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks: Hermes, Qwen 2.5, SmolLM3 ...), the template
gets the tools and the history in its own terms and the model answers in that syntax. For every other model
one generic syntax is described in the system message: a JSON object
`{"tool_calls": [{"name": ..., "arguments": {...}}]}`. Either way, with `tool_choice` "required" or a named
function the output is constrained by a grammar built from the functions' parameter schemas, so it is always a
valid call; with "auto" the model may answer in text, and a reply in the call syntax becomes tool calls.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from server.errors import InvalidRequestError
from server.generation.json_schema_grammar import check_schema
from server.generation.plan import ParamNames, ToolRequest
from server.generation.reply import ToolCall

CALL_INSTRUCTIONS = (
    "You can call these functions:\n{functions}\n\n"
    "To call one or more of them, reply with only a JSON object of this form and nothing else:\n"
    '{{"tool_calls": [{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}]}}\n'
    "{when}"
)
WHEN = {
    "auto": "If no function is needed, answer the user normally.",
    "required": "You must call at least one function.",
}


GENERIC, HERMES = "generic", "hermes"
OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class CallFormat:
    """The functions a reply may call, and the syntax it calls them in."""

    functions: dict[str, dict[str, Any]]  # name -> parameters schema
    dialect: str = GENERIC


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for generation: the prompt addition and, when forced, the output schema."""

    calls: CallFormat
    system_prompt: str | None  # None: the chat template describes the tools itself
    forced_schema: str | None  # JSON schema text for the grammar, when a call is required
    template_tools: list[dict[str, Any]] | None = None  # the tools, for a template that lists them itself
    forced_blocks: int | None = None  # Hermes syntax: at most this many <tool_call> blocks when forced


MAX_CALLS = 8  # per reply: a forced call cannot grow without end
MAX_TOOL_SCHEMA_BYTES = 256 * 1024  # all of a request's parameter schemas together
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}  # a function without parameters


def check_schemas(request: ToolRequest | None, params: ParamNames) -> None:
    """Refuse parameter schemas past the bounds: work in proportion to the request, so done once, off the event
    loop (`plan` then trusts them)."""
    if request is None:
        return
    total = sum(len(json.dumps(f.parameters)) for f in request.functions if f.parameters)
    if total > MAX_TOOL_SCHEMA_BYTES:
        raise InvalidRequestError(
            f"The tools' parameter schemas are larger than this server accepts together ({MAX_TOOL_SCHEMA_BYTES} "
            "bytes as JSON).",
            param=params.tools,
        )
    for function in request.functions:
        check_schema(function.parameters or EMPTY_PARAMETERS, function.where or params.tools)


def plan(request: ToolRequest | None, params: ParamNames, dialect: str | None = None) -> ToolPlan | None:
    """Check the tools and the choice against each other; None when no tool may be called. The parameter schemas
    are `check_schemas`'s to check."""
    if request is None or not request.functions or request.choice == "none":
        if request is not None and request.choice not in ("auto", "none"):
            raise InvalidRequestError(f"'{params.tool_choice}' needs '{params.tools}'.", param=params.tool_choice)
        return None
    functions = {f.name: f.parameters or EMPTY_PARAMETERS for f in request.functions}
    if request.choice in WHEN:
        allowed, when = list(functions), WHEN[request.choice]
    else:
        name = request.choice
        if name not in functions:
            raise InvalidRequestError(
                f"Invalid value for '{params.tool_choice}': no tool is named {name[:64]!r}.", param=params.tool_choice
            )
        allowed, when = [name], f"You must call the function {name}."
    most = MAX_CALLS if request.parallel else 1
    forced = None if request.choice == "auto" else {n: functions[n] for n in allowed}
    if dialect == HERMES:
        return ToolPlan(
            calls=CallFormat(functions, HERMES),
            system_prompt=None if request.choice == "auto" else when,
            forced_schema=None if forced is None else json.dumps({"anyOf": _call_schemas(forced)}),
            template_tools=[{"type": "function", "function": f.described()} for f in request.functions],
            forced_blocks=most,
        )
    described = "\n".join(json.dumps(f.described()) for f in request.functions)
    prompt = CALL_INSTRUCTIONS.format(functions=described, when=when)
    schema = None if forced is None else json.dumps(_calls_schema(forced, most))
    return ToolPlan(calls=CallFormat(functions), system_prompt=prompt, forced_schema=schema)


def _call_schemas(functions: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, parameters in functions.items()
    ]


def _calls_schema(functions: dict[str, dict[str, Any]], most: int) -> dict[str, Any]:
    call = _call_schemas(functions)
    return {
        "type": "object",
        "properties": {"tool_calls": {"type": "array", "items": {"anyOf": call}, "minItems": 1, "maxItems": most}},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }


def parse_calls(text: str, calls_format: CallFormat) -> list[ToolCall] | None:
    """The tool calls in a reply, or None when the reply is plain text (or not a well-formed call). At most
    MAX_CALLS are read; the work is linear in the length of the reply, whatever it holds."""
    stripped = text.strip()
    if calls_format.dialect == HERMES:
        if not stripped.startswith(OPEN_TAG):
            return None
        try:
            calls = [json.loads(block) for block in _hermes_blocks(stripped)]
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
            return None
    else:
        if not stripped.startswith("{"):
            return None
        try:
            data = json.loads(stripped)
        except (ValueError, RecursionError):
            return None
        calls = data.get("tool_calls") if isinstance(data, dict) else None
    if not isinstance(calls, list) or not calls:
        return None
    parsed = []
    for call in calls[:MAX_CALLS]:
        if not isinstance(call, dict) or call.get("name") not in calls_format.functions:
            return None
        arguments = call.get("arguments", {})
        parsed.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", call["name"], json.dumps(arguments)))
    return parsed


def _hermes_blocks(text: str) -> list[str]:
    """The contents of the first MAX_CALLS closed `<tool_call>...</tool_call>` blocks, by a forward scan."""
    blocks: list[str] = []
    start = text.find(OPEN_TAG)
    while start != -1 and len(blocks) < MAX_CALLS:
        end = text.find(CLOSE_TAG, start + len(OPEN_TAG))
        if end == -1:
            break
        blocks.append(text[start + len(OPEN_TAG) : end].strip())
        start = text.find(OPEN_TAG, end + len(CLOSE_TAG))
    return blocks


def may_be_calls(text_so_far: str, calls_format: CallFormat) -> bool:
    """While streaming with tool_choice "auto": could this reply still turn out to be tool calls?"""
    first = len(text_so_far) - len(text_so_far.lstrip())
    if calls_format.dialect == HERMES:
        return OPEN_TAG.startswith(text_so_far[first : first + len(OPEN_TAG)])
    return first == len(text_so_far) or text_so_far[first] == "{"


def with_instructions(messages: list[dict[str, Any]], tool_plan: ToolPlan) -> list[dict[str, Any]]:
    """The conversation with the functions described in its system message (added first if there is none)."""
    if tool_plan.system_prompt is None:
        return messages
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{tool_plan.system_prompt}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": tool_plan.system_prompt}, *messages]
