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
import re
import uuid
from dataclasses import dataclass
from typing import Any

from server.errors import InvalidRequestError
from server.response_format import check_schema

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


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


GENERIC, HERMES = "generic", "hermes"
HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


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


def plan(
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
    parallel: bool = True,
    dialect: str | None = None,
) -> ToolPlan | None:
    """Validate `tools` and `tool_choice`; None when no tool may be called."""
    if not tools or tool_choice == "none":
        if isinstance(tool_choice, dict) or tool_choice == "required":
            raise InvalidRequestError("'tool_choice' needs 'tools'.", param="tool_choice")
        return None
    functions: dict[str, dict[str, Any]] = {}
    described = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
            raise InvalidRequestError(f"'tools[{i}]' must be a function with a name.", param=f"tools[{i}]")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        check_schema(parameters, f"tools[{i}].function.parameters")
        functions[function["name"]] = parameters
        described.append(json.dumps({k: function[k] for k in ("name", "description", "parameters") if k in function}))
    choice = tool_choice or "auto"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in functions:
            raise InvalidRequestError(f"'tool_choice' names an unknown function: {name!r}.", param="tool_choice")
        allowed, when = [name], f"You must call the function {name}."
    elif choice in WHEN:
        allowed, when = list(functions), WHEN[choice]
    else:
        raise InvalidRequestError(f"Invalid value for 'tool_choice': {choice!r}.", param="tool_choice")
    most = MAX_CALLS if parallel else 1
    forced = None if choice == "auto" else {n: functions[n] for n in allowed}
    if dialect == HERMES:
        return ToolPlan(
            calls=CallFormat(functions, HERMES),
            system_prompt=None if choice == "auto" else when,
            forced_schema=None if forced is None else json.dumps({"anyOf": _call_schemas(forced)}),
            template_tools=[{"type": "function", "function": tool["function"]} for tool in tools],
            forced_blocks=most,
        )
    prompt = CALL_INSTRUCTIONS.format(functions="\n".join(described), when=when)
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
    """The tool calls in a reply, or None when the reply is plain text (or not a well-formed call)."""
    stripped = text.strip()
    if calls_format.dialect == HERMES:
        if not stripped.startswith("<tool_call>"):
            return None
        try:
            calls = [json.loads(block) for block in HERMES_BLOCK.findall(stripped)]
        except json.JSONDecodeError:
            return None
    else:
        if not stripped.startswith("{"):
            return None
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            return None
        calls = data.get("tool_calls") if isinstance(data, dict) else None
    if not isinstance(calls, list) or not calls:
        return None
    parsed = []
    for call in calls:
        if not isinstance(call, dict) or call.get("name") not in calls_format.functions:
            return None
        arguments = call.get("arguments", {})
        parsed.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", call["name"], json.dumps(arguments)))
    return parsed


def may_be_calls(text_so_far: str, calls_format: CallFormat) -> bool:
    """While streaming with tool_choice "auto": could this reply still turn out to be tool calls?"""
    stripped = text_so_far.lstrip()
    if calls_format.dialect == HERMES:
        return stripped.startswith("<tool_call>") or "<tool_call>".startswith(stripped)
    return not stripped or stripped.startswith("{")


def with_instructions(messages: list[dict[str, Any]], tool_plan: ToolPlan) -> list[dict[str, Any]]:
    """The conversation with the functions described in its system message (added first if there is none)."""
    if tool_plan.system_prompt is None:
        return messages
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{tool_plan.system_prompt}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": tool_plan.system_prompt}, *messages]
