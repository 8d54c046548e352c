"""Request parameters to engine parameters: what is refused (unsupported or over a limit) and how the rest maps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from server.engine import SamplingParams
from server.errors import InvalidRequestError, UnsupportedParameterError
from server.request_parts import AssistantMessageParam, MessageParam, ToolMessageParam
from server.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

# Roles most chat templates know; OpenAI's newer "developer" role is a system message to them.
_TEMPLATE_ROLES = {"developer": "system"}


@dataclass(frozen=True)
class RequestLimits:
    """Operator limits on what one request may ask for; each breach is a 400 naming the parameter."""

    max_messages: int = 1000
    max_stop_length: int = 500
    max_prompt_chars: int = 1_000_000
    max_choices: int = 8
    max_embedding_inputs: int = 2048
    max_embedding_tokens: int = 65536


def sampling(body: SamplingFields, n_vocab: int) -> SamplingParams:
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repeat_penalty=body.repeat_penalty or 1.0,
        seed=body.seed,
        logit_bias=_logit_bias(body.logit_bias or {}, n_vocab),
        ignore_eos=body.ignore_eos,
    )


def _logit_bias(bias: dict[str, float], n_vocab: int) -> tuple[tuple[int, float], ...]:
    """The keys are decimal token ids (checked by the request model); each must be one of this model's."""
    out = []
    for key, value in bias.items():
        if int(key) >= n_vocab:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key!r} is not a token id of this model (0 to {n_vocab - 1}).",
                param="logit_bias",
            )
        out.append((int(key), value))
    return tuple(out)


def template_message(message: MessageParam, *, native_tools: bool = False) -> dict[str, Any]:
    """A message as chat templates expect it. Earlier tool calls go to a template that knows tools as the
    structured `tool_calls` it expects (arguments as objects); to any other template as text in the generic
    call syntax the model is taught (see server/tools.py)."""
    content = message.text()
    calls = message.tool_calls if isinstance(message, AssistantMessageParam) else None
    if calls and native_tools:
        structured = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": _json_or_text(call.function.arguments)},
            }
            for call in calls
        ]
        return {"role": "assistant", "content": content, "tool_calls": structured}
    if native_tools and isinstance(message, ToolMessageParam):
        return {"role": "tool", "content": content, "tool_call_id": message.tool_call_id}
    if calls:
        generic = [{"name": call.function.name, "arguments": _json_or_text(call.function.arguments)} for call in calls]
        content = json.dumps({"tool_calls": generic})
    return {"role": _TEMPLATE_ROLES.get(message.role, message.role), "content": content}


MAX_ARGUMENT_DEPTH = 64  # deeper arguments stay text: a template renders objects recursively


def _json_or_text(value: str) -> Any:
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return value
    return parsed if _depth(parsed) <= MAX_ARGUMENT_DEPTH else value


def _depth(value: Any) -> int:
    deepest, level = 0, [value]
    while level:
        deepest += 1
        level = [
            child
            for node in level
            if isinstance(node, dict | list)
            for child in (node.values() if isinstance(node, dict) else node)
        ]
    return deepest


def include_usage(body: SamplingFields) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


# OpenAI chat parameters this server cannot honour: refused by name when set, never silently ignored.
UNHONOURED_CHAT_PARAMETERS = {
    "audio": "audio output is not available",
    "modalities": "only text output is available",
    "prediction": "predicted outputs are not used",
    "web_search_options": "web search is not available",
    "reasoning_effort": "the models served here have no reasoning-effort setting",
    "functions": "the deprecated 'functions' is not served; use 'tools'",
    "function_call": "the deprecated 'function_call' is not served; use 'tool_choice'",
}


def check_chat(body: ChatCompletionRequest, limits: RequestLimits) -> None:
    _check_common(body, limits)
    if len(body.messages) > limits.max_messages:
        raise InvalidRequestError(
            f"Too many messages: {len(body.messages)}; this server accepts at most {limits.max_messages}.",
            param="messages",
        )
    if sum(_chars(m) for m in body.messages) > limits.max_prompt_chars:
        raise InvalidRequestError(
            f"The messages are longer than this server accepts ({limits.max_prompt_chars} characters).",
            param="messages",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequestError("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    for param, what in UNHONOURED_CHAT_PARAMETERS.items():
        value = (body.model_extra or {}).get(param)
        if value not in (None, False, []) and not (param == "modalities" and value == ["text"]):
            _reject(param, what)


def _chars(message: MessageParam) -> int:
    """How much of the prompt a message becomes: its text and the arguments of the calls it made."""
    calls = message.tool_calls if isinstance(message, AssistantMessageParam) else None
    return len(message.text()) + sum(len(call.function.arguments) for call in calls or ())


def check_completion(body: CompletionRequest, limits: RequestLimits) -> None:
    _check_common(body, limits)
    if len(body.prompt_text()) > limits.max_prompt_chars:
        raise InvalidRequestError(
            f"The prompt is longer than this server accepts ({limits.max_prompt_chars} characters).", param="prompt"
        )
    if body.echo:
        _reject("echo", "the prompt is not echoed")
    if body.best_of not in (None, 1):
        _reject("best_of", "only best_of=1 is generated")
    if body.suffix:
        _reject("suffix", "insertion (suffix) is not available")


def check_token_cap(requested: int | None, cap: int | None, param: str) -> None:
    if cap is not None and requested is not None and requested > cap:
        raise InvalidRequestError(
            f"Invalid value for '{param}': at most {cap} tokens may be generated by this model (got {requested}).",
            param=param,
        )


def _check_common(body: SamplingFields, limits: RequestLimits) -> None:
    if (body.n or 1) > limits.max_choices:
        raise InvalidRequestError(f"Invalid value for 'n': at most {limits.max_choices} choices.", param="n")
    for stop in body.stop_list():
        if len(stop) > limits.max_stop_length:
            raise InvalidRequestError(
                f"A stop sequence is longer than {limits.max_stop_length} characters.", param="stop"
            )


def _reject(param: str, what: str) -> None:
    raise UnsupportedParameterError(f"'{param}' is not supported by this server yet: {what}.", param=param)


def chat_logprobs(body: ChatCompletionRequest) -> int | None:
    """How many alternatives to return per token, or None for no log probabilities."""
    return (body.top_logprobs or 0) if body.logprobs else None
