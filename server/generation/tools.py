"""Function calling for every model: tools described in the prompt, calls read back from the output.

Each model family has its own call syntax (server/generation/tool_dialects/: Hermes/Qwen `<tool_call>` blocks,
Llama 3.x JSON and `<|python_tag|>`, Mistral `[TOOL_CALLS]` with call ids, DeepSeek's `tool▁calls▁begin`
markers, Phi-4-mini `<|tool_call|>`), which its chat template teaches: where the template is one we read
(server/engine/tool_syntax.py), the tools and the history are given to it in its own terms and the model answers
in that syntax. For every other model one generic syntax is described in the system message: a JSON object
`{"tool_calls": [{"name": ..., "arguments": {...}}]}`. Either way, with `tool_choice` "required" or a named
function the output is constrained by a grammar of the syntax, built from the functions' parameter schemas, so
it is always a valid call; with "auto" the model may answer in text, and calls in the syntax become tool calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from server.engine.template import join_contents
from server.errors import InvalidRequestError
from server.generation import tool_dialects
from server.generation.json_schema_grammar import arguments_grammar, check_schema
from server.generation.plan import FunctionSpec, ParamNames, ToolRequest
from server.generation.reply import ToolCall
from server.generation.tool_dialects import GENERIC, MAX_CALLS, CallFormat

__all__ = ["GENERIC", "MAX_CALLS", "CallFormat", "ToolPlan", "check_schemas", "parse_calls", "plan"]

WHEN = {
    "auto": "If no function is needed, answer the user normally.",
    "required": "You must call at least one function.",
}


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for generation: the prompt addition and, when forced, the functions the
    grammar allows."""

    calls: CallFormat
    system_prompt: str | None  # None: the chat template describes the tools itself
    forced: tuple[tuple[str, dict[str, Any], str], ...] | None  # (name, parameters, request path), when forced
    template_tools: list[dict[str, Any]] | None = None  # the tools, for a template that lists them itself
    functions: tuple[FunctionSpec, ...] = ()


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
    """Check the tools and the choice against each other; None when no tool may be called. `dialect`: the call
    syntax of the model's chat template (None: the generic one). The parameter schemas are `check_schemas`'s."""
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
    # As at OpenAI: a named function is called exactly once; "required" and "auto" may call several unless
    # parallel calls are off. A small model forced to call a function repeats the call as long as it is allowed.
    most = MAX_CALLS if request.parallel and request.choice in WHEN else 1
    syntax = tool_dialects.dialect(dialect)
    forced = request.choice != "auto"
    paths = {f.name: f.where or params.tools for f in request.functions}
    return ToolPlan(
        calls=CallFormat(functions, syntax.name, most),
        system_prompt=syntax.instructions(request.functions, when, forced),
        forced=tuple((n, functions[n], paths[n]) for n in allowed) if forced else None,
        template_tools=syntax.template_tools(request.functions),
        functions=request.functions,
    )


def forced_grammar(tool_plan: ToolPlan) -> str:
    """The grammar of a forced reply: 1 to `most` calls of the allowed functions, in the model's own syntax,
    each call's arguments valid against its function's parameters."""
    assert tool_plan.forced is not None
    rules, expressions = arguments_grammar([(schema, where) for _, schema, where in tool_plan.forced])
    names = [name for name, _, _ in tool_plan.forced]
    syntax = tool_dialects.dialect(tool_plan.calls.dialect)
    return syntax.grammar(list(zip(names, expressions, strict=True)), tool_plan.calls.most) + rules


def shown_tokens(tool_plan: ToolPlan | None) -> tuple[str, ...]:
    """The control tokens of the model's call syntax, which the reply must show as text to be read back."""
    return () if tool_plan is None else tool_dialects.dialect(tool_plan.calls.dialect).markers


def parse_calls(text: str, calls_format: CallFormat) -> list[ToolCall] | None:
    """The tool calls in a reply (`text` begins where they do), or None when it is not well-formed calls. At
    most `calls_format.most` are read; the work is linear in the length of the reply, whatever it holds."""
    return tool_dialects.dialect(calls_format.dialect).parse(text, calls_format)


def with_instructions(messages: list[dict[str, Any]], tool_plan: ToolPlan) -> list[dict[str, Any]]:
    """The conversation with what the system message says about the tools (a system message is added first if
    there is none), and anything more the template needs on its messages to show them."""
    if tool_plan.system_prompt is not None:
        if messages and messages[0]["role"] == "system":
            said = messages[0]["content"]
            content = join_contents(said if isinstance(said, str) else f"{said}", "\n\n", tool_plan.system_prompt)
            first = {**messages[0], "content": content}
            messages = [first, *messages[1:]]
        else:
            messages = [{"role": "system", "content": tool_plan.system_prompt}, *messages]
    return tool_dialects.dialect(tool_plan.calls.dialect).with_tools(messages, tool_plan.functions)
