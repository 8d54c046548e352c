"""Function calling for every model: tools described in the prompt, calls read back from the output.

One call format for all models, whatever their chat template knows: the model answers with a JSON object
`{"tool_calls": [{"name": ..., "arguments": {...}}]}`. With `tool_choice` "required" or a named function the
output is constrained by a grammar built from the functions' parameter schemas, so it is always a valid call;
with "auto" the model may answer in text, and a reply that is such an object becomes tool calls.
"""

from __future__ import annotations

import json
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


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for generation: the prompt addition and, when forced, the output schema."""

    functions: dict[str, dict[str, Any]]  # name -> parameters schema
    system_prompt: str
    forced_schema: str | None  # JSON schema text for the grammar, when a call is required


MAX_CALLS = 8  # per reply: a forced call cannot grow without end


def plan(
    tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None, parallel: bool = True
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
    forced = None if choice == "auto" else json.dumps(_calls_schema({n: functions[n] for n in allowed}, most))
    prompt = CALL_INSTRUCTIONS.format(functions="\n".join(described), when=when)
    return ToolPlan(functions=functions, system_prompt=prompt, forced_schema=forced)


def _calls_schema(functions: dict[str, dict[str, Any]], most: int) -> dict[str, Any]:
    call = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, parameters in functions.items()
    ]
    return {
        "type": "object",
        "properties": {"tool_calls": {"type": "array", "items": {"anyOf": call}, "minItems": 1, "maxItems": most}},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }


def parse_calls(text: str, functions: dict[str, dict[str, Any]]) -> list[ToolCall] | None:
    """The tool calls in a reply, or None when the reply is plain text (or not a well-formed call)."""
    stripped = text.strip()
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
        if not isinstance(call, dict) or call.get("name") not in functions:
            return None
        arguments = call.get("arguments", {})
        parsed.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", call["name"], json.dumps(arguments)))
    return parsed


def may_be_calls(text_so_far: str) -> bool:
    """While streaming with tool_choice "auto": could this reply still turn out to be tool calls?"""
    stripped = text_so_far.lstrip()
    return not stripped or stripped.startswith("{")


def with_instructions(messages: list[dict[str, Any]], tool_plan: ToolPlan) -> list[dict[str, Any]]:
    """The conversation with the functions described in its system message (added first if there is none)."""
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{tool_plan.system_prompt}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": tool_plan.system_prompt}, *messages]
