"""A chat or legacy completion request's output constraint: at most one of `response_format` (OpenAI),
`structured_outputs` (vLLM: `json`, `regex`, `choice`, `grammar` or `json_object`), vLLM's older `guided_json`,
`guided_regex`, `guided_choice`, `guided_grammar`, and `grammar` (llama.cpp's server, GBNF). A JSON schema becomes
the plan's `json_schema`; the others a GBNF grammar (server/generation/constraint_grammars.py). Each is checked here,
so a constraint the server cannot enforce is a 400 naming its field before any model is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pydantic_core

from server.api.openai.request_parts import NamedToolChoiceParam, ResponseFormatText
from server.api.openai.response_format import ANY_OBJECT, check_schema, json_schema_of
from server.api.openai.schemas import ChatCompletionRequest, SamplingFields
from server.errors import InvalidRequestError, UnsupportedParameterError
from server.generation.constraint_grammars import choice_grammar, client_grammar, regex_grammar

STRUCTURED_OUTPUTS = "structured_outputs"
STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object")
GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


@dataclass(frozen=True)
class OutputConstraint:
    json_schema: str | None = None  # as GenerationPlan.json_schema
    grammar: str | None = None  # as GenerationPlan.grammar
    param: str = "response_format"  # the field that asked for it


def output_constraint(body: SamplingFields) -> OutputConstraint:
    """The one constraint a request asks for (none: an empty OutputConstraint); a 400 when it asks for more, or
    for one beside a forced tool call, or for one past a bound."""
    asked = _asked(body)
    if not asked:
        return OutputConstraint()
    if len(asked) > 1:
        (first, _, _), (second, _, _) = asked[:2]
        raise InvalidRequestError(
            f"'{first}' and '{second}' both constrain the output; a request may ask for one only.", param=second
        )
    [(param, kind, value)] = asked
    if kind != "response_format" and _forces_a_tool(body):
        raise InvalidRequestError(
            f"'{param}' cannot be combined with a forced tool call ('tool_choice' required or a named function), "
            "whose own grammar constrains the output.",
            param=param,
        )
    if kind == "response_format":
        return OutputConstraint(json_schema=json_schema_of(value), param=param)
    if kind == "json_object":
        return OutputConstraint(json_schema=ANY_OBJECT, param=param)
    if kind == "json":
        return OutputConstraint(json_schema=_schema_text(value, param), param=param)
    if kind == "regex":
        return OutputConstraint(grammar=regex_grammar(value, param), param=param)
    if kind == "choice":
        return OutputConstraint(grammar=choice_grammar(value, param), param=param)
    return OutputConstraint(grammar=client_grammar(value, param), param=param)


def asks_for_a_constraint(body: SamplingFields) -> bool:
    return bool(_asked(body))


def _asked(body: SamplingFields) -> list[tuple[str, str, Any]]:
    """(field, kind, value) of every constraint the request sets."""
    asked: list[tuple[str, str, Any]] = []
    response_format = body.response_format if isinstance(body, ChatCompletionRequest) else None
    if response_format is not None and not isinstance(response_format, ResponseFormatText):
        asked.append(("response_format", "response_format", response_format))
    structured = body.structured_outputs
    if structured is not None:
        if structured.structural_tag is not None:
            raise UnsupportedParameterError(
                f"'{STRUCTURED_OUTPUTS}.structural_tag' is not supported by this server; use json, regex, choice "
                "or grammar.",
                param=f"{STRUCTURED_OUTPUTS}.structural_tag",
            )
        values = {
            "json": structured.json_,
            "regex": structured.regex,
            "choice": structured.choice,
            "grammar": structured.grammar,
            "json_object": structured.json_object or None,
        }
        kinds = [kind for kind in STRUCTURED_KINDS if values[kind] is not None]
        if len(kinds) != 1:
            named = " and ".join(f"'{kind}'" for kind in kinds) if kinds else "none"
            raise InvalidRequestError(
                f"'{STRUCTURED_OUTPUTS}' must hold exactly one of {', '.join(STRUCTURED_KINDS)}; it holds {named}.",
                param=STRUCTURED_OUTPUTS,
            )
        asked.append((f"{STRUCTURED_OUTPUTS}.{kinds[0]}", kinds[0], values[kinds[0]]))
    for name in GUIDED:
        if getattr(body, name) is not None:
            asked.append((name, name.removeprefix("guided_"), getattr(body, name)))
    if body.grammar is not None:
        asked.append(("grammar", "grammar", body.grammar))
    return asked


def _forces_a_tool(body: SamplingFields) -> bool:
    if not isinstance(body, ChatCompletionRequest):
        return False
    return body.tool_choice == "required" or isinstance(body.tool_choice, NamedToolChoiceParam)


def _schema_text(value: dict[str, Any] | str, param: str) -> str:
    """A JSON schema given as an object or as its JSON text, checked like a response_format's."""
    schema: Any = value
    if isinstance(value, str):
        try:  # pydantic's parser, unlike json.loads, refuses lone surrogates
            schema = pydantic_core.from_json(value)
        except (ValueError, RecursionError):
            raise InvalidRequestError(f"'{param}' is not a JSON schema's JSON text.", param=param) from None
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"'{param}' must be a JSON schema object.", param=param)
    check_schema(schema, param)
    return json.dumps(schema) if schema else ANY_OBJECT
