"""OpenAI chat and legacy completion requests as generation plans: what is refused by name, how the rest maps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from server.api.openai.constraints import asks_for_a_constraint, output_constraint
from server.api.openai.request_parts import (
    AssistantMessageParam,
    FunctionToolParam,
    ImagePart,
    MessageParam,
    NamedToolChoiceParam,
    ToolMessageParam,
    UserMessageParam,
)
from server.api.openai.schemas import ChatCompletionRequest, CompletionRequest, ReasoningEffort, SamplingFields
from server.errors import InvalidRequestError, UnsupportedParameterError
from server.generation.plan import (
    FunctionSpec,
    GenerationPlan,
    ImageInput,
    ParamNames,
    ReasoningRequest,
    Sampling,
    ToolCallRecord,
    ToolRequest,
    Turn,
)

B = TypeVar("B")


# A chat request maps on the event loop only when its messages, their content parts and their tool calls number
# at most this many together: mapping costs about 5 us each, and a body of 8 MiB can hold 300,000 messages.
INLINE_PLAN_MAX_ITEMS = 64


async def off_loop(make: Callable[[B], GenerationPlan], body: B) -> GenerationPlan:
    """`make(body)` in a worker thread: its output constraint (a client's grammar, regex or JSON schema), its tools
    and its messages are read and checked in proportion to their size, which must not hold up the event loop. Still
    before the response starts: a refusal is the request's status. A small request with neither tools nor a
    constraint maps in microseconds: on the loop, sparing a thread hop."""
    if _maps_quickly(body):
        return make(body)
    return await asyncio.to_thread(make, body)


def _maps_quickly(body: object) -> bool:
    if not isinstance(body, SamplingFields) or getattr(body, "tools", None) or asks_for_a_constraint(body):
        return False
    if isinstance(body, CompletionRequest):
        return True  # one prompt string and at most 4 stops
    if not isinstance(body, ChatCompletionRequest) or len(body.messages) > INLINE_PLAN_MAX_ITEMS:
        return False
    items = 0
    for message in body.messages:
        parts = message.content if isinstance(message.content, list) else ()
        items += 1 + len(parts) + len(getattr(message, "tool_calls", None) or ())
    return items <= INLINE_PLAN_MAX_ITEMS


# Roles most chat templates know; OpenAI's newer "developer" role is a system message to them.
_ROLES = {"developer": "system"}

# OpenAI chat parameters this server cannot honour: refused by name when set, never silently ignored.
UNHONOURED_CHAT_PARAMETERS = {
    "audio": "audio output is not available",
    "modalities": "only text output is available",
    "prediction": "predicted outputs are not used",
    "web_search_options": "web search is not available",
    "functions": "the deprecated 'functions' is not served; use 'tools'",
    "function_call": "the deprecated 'function_call' is not served; use 'tool_choice'",
}


def chat_plan(body: ChatCompletionRequest) -> GenerationPlan:
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequestError("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    for param, what in UNHONOURED_CHAT_PARAMETERS.items():
        value = (body.model_extra or {}).get(param)
        if value not in (None, False, []) and not (param == "modalities" and value == ["text"]):
            _reject(param, what)
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    constraint = output_constraint(body)
    return GenerationPlan(
        model=body.model,
        turns=tuple(turn(m, f"messages[{i}]") for i, m in enumerate(body.messages)),
        sampling=sampling(body),
        max_tokens=body.token_limit(),
        stop=tuple(body.stop_list()),
        n=body.n or 1,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        json_schema=constraint.json_schema,
        grammar=constraint.grammar,
        tools=tool_request(body),
        reasoning=reasoning_request(body.reasoning_effort),
        params=ParamNames(
            prompt="messages", max_tokens=max_param, output_schema=constraint.param, output_grammar=constraint.param
        ),
    )


def completion_plan(body: CompletionRequest) -> GenerationPlan:
    if (body.model_extra or {}).get("response_format") is not None:
        raise InvalidRequestError(
            "'response_format' is a chat completions parameter; a completion request constrains its output with "
            "'structured_outputs' (json, regex, choice or grammar) or 'grammar'.",
            param="response_format",
        )
    if body.echo:
        _reject("echo", "the prompt is not echoed")
    if body.best_of not in (None, 1):
        _reject("best_of", "only best_of=1 is generated")
    if body.suffix:
        _reject("suffix", "insertion (suffix) is not available")
    constraint = output_constraint(body)
    return GenerationPlan(
        model=body.model,
        prompt=body.prompt_text(),
        sampling=sampling(body),
        max_tokens=body.max_tokens,
        stop=tuple(body.stop_list()),
        n=body.n or 1,
        logprobs=body.logprobs,
        json_schema=constraint.json_schema,
        grammar=constraint.grammar,
        params=ParamNames(prompt="prompt", output_schema=constraint.param, output_grammar=constraint.param),
    )


def turn(message: MessageParam, path: str) -> Turn:
    """The message at `path` (`messages[2]`) as a turn."""
    calls = message.tool_calls if isinstance(message, AssistantMessageParam) else None
    return Turn(
        role=_ROLES.get(message.role, message.role),  # type: ignore[arg-type]
        content=message.text(),
        tool_calls=tuple(ToolCallRecord(c.id, c.function.name, c.function.arguments) for c in calls or ()),
        tool_call_id=message.tool_call_id if isinstance(message, ToolMessageParam) else None,
        reasoning=(message.reasoning_content or "") if isinstance(message, AssistantMessageParam) else "",
        images=user_images(message, path) if isinstance(message, UserMessageParam) else (),
    )


def user_images(message: UserMessageParam, path: str) -> tuple[tuple[int, ImageInput], ...]:
    """The image parts of a user message, each at the offset of the text before it in the message's content."""
    if isinstance(message.content, str):
        return ()
    images, offset = [], 0
    for j, part in enumerate(message.content):
        if isinstance(part, ImagePart):
            where = f"{path}.content[{j}].image_url.url"
            images.append((offset, ImageInput(part.image_url.url, where, part.image_url.detail)))
        else:
            offset += len(part.text)
    return tuple(images)


def tool_request(body: ChatCompletionRequest) -> ToolRequest | None:
    if body.tools is None and body.tool_choice is None:
        return None
    functions = []
    for i, tool in enumerate(body.tools or ()):
        if not isinstance(tool, FunctionToolParam):
            raise UnsupportedParameterError(
                f"Only function tools are supported (tools[{i}] is {tool.type[:40]!r}).", param=f"tools[{i}].type"
            )
        f = tool.function
        functions.append(FunctionSpec(f.name, f.description, f.parameters, f"tools[{i}].function.parameters"))
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoiceParam):
        name = choice.function.name
        if functions and name not in {f.name for f in functions}:
            where = "tool_choice.function.name"
            raise InvalidRequestError(f"Invalid value for '{where}': no tool is named {name!r}.", param=where)
        choice = name
    return ToolRequest(tuple(functions), choice or "auto", body.parallel_tool_calls is not False)


# `reasoning_effort`: "none" turns thinking off (a 400 for a model whose template cannot); the others scale the
# model's thinking budget (models.yaml `reasoning.budget_tokens`, which is "medium"); "max" has no budget.
EFFORT_BUDGETS: dict[str, float | None] = {
    "minimal": 0.125,
    "low": 0.5,
    "medium": 1.0,
    "high": 2.0,
    "xhigh": 4.0,
    "max": None,
}


def reasoning_request(effort: ReasoningEffort | None) -> ReasoningRequest | None:
    if effort is None:
        return None
    if effort == "none":
        return ReasoningRequest(enabled=False)
    return ReasoningRequest(enabled=True, budget_scale=EFFORT_BUDGETS[effort])


def sampling(body: SamplingFields) -> Sampling:
    return Sampling(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repeat_penalty=body.repeat_penalty or 1.0,
        seed=body.seed,
        logit_bias=tuple((int(key), value) for key, value in (body.logit_bias or {}).items()),
        ignore_eos=body.ignore_eos,
    )


def include_usage(body: SamplingFields) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _reject(param: str, what: str) -> None:
    raise UnsupportedParameterError(f"'{param}' is not supported by this server yet: {what}.", param=param)
