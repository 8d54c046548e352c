"""The Responses API (`POST /v1/responses`) as a translation onto chat completions, both ways.

Requests become a `ChatCompletionRequest`; a whole reply becomes a Response object (a streamed one, the documented
event sequence: server/api/openai/responses_stream.py). Responses are not stored: `previous_response_id` is
refused with a 400.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError

from server.api.openai.plans import chat_plan
from server.api.openai.request_parts import OtherToolParam, ToolChoiceMode
from server.api.openai.responses_reasoning import new_reasoning_id, reasoning_item
from server.api.openai.responses_request import (
    FunctionCallItem,
    FunctionTool,
    InputImage,
    InputMessage,
    InputText,
    NamedFunctionChoice,
    ReasoningInputItem,
    ResponsesRequest,
    TextFormatJSONSchema,
)
from server.api.openai.schemas import ChatCompletionRequest
from server.errors import InvalidRequestError, UnsupportedParameterError, from_validation_errors
from server.generation.plan import GenerationPlan, ImageInput, ParamNames, Turn
from server.generation.reply import ChoiceEnd, FinishedChoice, ToolCall


def to_plan(body: ResponsesRequest) -> GenerationPlan:
    """The request as a generation plan (through its chat-completions equivalent), whose refusals name the
    Responses request's own fields."""
    try:
        plan = chat_plan(to_chat(body))
    except InvalidRequestError as exc:  # named as the chat request spells it: renamed as this one does
        if exc.param is not None:
            exc.message = exc.message.replace(exc.param, _responses_param(exc.param))
            exc.param = _responses_param(exc.param)
        raise
    names = ParamNames(
        prompt="input", max_tokens="max_output_tokens", output_schema="text.format", reasoning="reasoning.effort"
    )
    if plan.tools is not None:  # the pipeline checks the schemas: at the paths this request has them
        functions = tuple(dataclasses.replace(f, where=_responses_param(f.where)) for f in plan.tools.functions)
        plan = dataclasses.replace(plan, tools=dataclasses.replace(plan.tools, functions=functions))
    return dataclasses.replace(plan, turns=_with_image_paths(plan.turns, body), params=names)


def _with_image_paths(turns: tuple[Turn, ...], body: ResponsesRequest) -> tuple[Turn, ...]:
    """The turns with each image named at its path in this request (`input[2].content[1].image_url`) and with its
    own `detail`: the chat request's images are this request's, in the same order."""
    parts = iter(
        (f"input[{i}].content[{j}].image_url", part)
        for i, item in enumerate(body.input if isinstance(body.input, list) else ())
        if isinstance(item, InputMessage) and isinstance(item.content, list)
        for j, part in enumerate(item.content)
        if isinstance(part, InputImage)
    )

    def renamed(image: ImageInput) -> ImageInput:
        where, part = next(parts)
        return ImageInput(image.url, where, part.detail)

    return tuple(
        dataclasses.replace(turn, images=tuple((offset, renamed(image)) for offset, image in turn.images))
        if turn.images
        else turn
        for turn in turns
    )


def to_chat(body: ResponsesRequest) -> ChatCompletionRequest:
    if body.previous_response_id is not None:
        raise UnsupportedParameterError(
            "'previous_response_id' is not supported: this server does not store responses; "
            "send the earlier turns in 'input'.",
            param="previous_response_id",
        )
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    items = [InputMessage(role="user", content=body.input)] if isinstance(body.input, str) else body.input
    thinking = ""  # of a reasoning item: it goes with the assistant item after it
    for i, item in enumerate(items):
        if isinstance(item, ReasoningInputItem):
            thinking += "".join(part.text for part in item.content or item.summary)
            continue
        if isinstance(item, InputMessage):
            messages.append({"role": item.role, "content": _chat_content(item, f"input[{i}].content")})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            output = item.output if isinstance(item.output, str) else "".join(part.text for part in item.output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        if thinking and messages[-1]["role"] == "assistant":
            messages[-1]["reasoning_content"], thinking = thinking, ""
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tool_choice": _chat_tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
        "reasoning_effort": None if body.reasoning is None else body.reasoning.effort,
    }
    if body.tools:
        chat["tools"] = [_chat_tool(tool, i) for i, tool in enumerate(body.tools)]
    if body.text is not None and body.text.format is not None:
        chat["response_format"] = _chat_format(body.text.format)
    try:
        request = ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})
    except ValidationError as exc:  # the bounds are the same on both sides: this is not expected
        raise from_validation_errors(exc.errors()) from None
    return request


def _chat_content(item: InputMessage, path: str) -> str | list[dict[str, Any]]:
    """A message's content in the chat request: its text, or, with images (a user message's only), its parts."""
    if isinstance(item.content, str) or not any(isinstance(part, InputImage) for part in item.content):
        return item.text()
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(item.content):
        where = f"{path}[{j}]"
        if isinstance(part, InputImage):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(part, where, item.role)}})
        else:
            parts.append({"type": "text", "text": part.text if isinstance(part, InputText) else part.refusal})
    return parts


def _image_url(part: InputImage, where: str, role: str) -> str:
    if role != "user":
        raise InvalidRequestError(
            f"Invalid value for '{where}.type': only user messages may hold images (this is a {role} message).",
            param=f"{where}.type",
        )
    if part.file_id is not None:
        raise UnsupportedParameterError(
            f"'{where}.file_id' is not supported: send the image as 'image_url' (a base64 data URL, or an http(s) "
            "URL).",
            param=f"{where}.file_id",
        )
    if part.image_url is None:
        raise InvalidRequestError(f"Missing required parameter: '{where}.image_url'.", param=f"{where}.image_url")
    return part.image_url


_RENAMED_PREFIXES = (
    ("tool_choice.function.", "tool_choice."),
    ("response_format.json_schema.", "text.format."),
    ("reasoning_effort", "reasoning.effort"),
)


def _responses_param(param: str) -> str:
    """The path of a chat request's parameter in the Responses request it came from."""
    if param.startswith("tools["):
        head, nested, rest = param.partition("].function.")
        return f"{head}].{rest}" if nested else param
    for chat, responses in _RENAMED_PREFIXES:
        if param.startswith(chat):
            return responses + param[len(chat) :]
    return param


def _chat_tool(tool: FunctionTool | OtherToolParam, index: int) -> dict[str, Any]:
    if not isinstance(tool, FunctionTool):
        raise UnsupportedParameterError(
            f"Only function tools are supported (tools[{index}] is {tool.type[:40]!r}).", param=f"tools[{index}].type"
        )
    function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


def _chat_tool_choice(choice: ToolChoiceMode | NamedFunctionChoice | None) -> str | dict[str, Any] | None:
    if isinstance(choice, NamedFunctionChoice):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def _chat_format(fmt: BaseModel) -> dict[str, Any]:
    if isinstance(fmt, TextFormatJSONSchema):
        spec = {"name": fmt.name, "schema": fmt.schema_, "description": fmt.description, "strict": fmt.strict}
        return {"type": "json_schema", "json_schema": {k: v for k, v in spec.items() if v is not None}}
    return {"type": fmt.type}  # text or json_object


def _echo(value: BaseModel | str | None) -> Any:
    """A request object as the Response object repeats it."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return value


def _echo_tool(tool: BaseModel) -> Any:
    """A tool as the Response object repeats it: a function tool always says whether it is strict."""
    echoed = _echo(tool)
    if echoed.get("type") == "function":
        echoed.setdefault("strict", None)
    return echoed


def usage_of(prompt: int, end: ChoiceEnd) -> dict[str, Any]:
    completion = end.completion_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": end.reasoning_tokens},
        "total_tokens": prompt + completion,
    }


def envelope(response_id: str, body: ResponsesRequest, status: str, output: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": body.model,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tools": [_echo_tool(tool) for tool in body.tools or ()],
        "tool_choice": _echo(body.tool_choice) or "auto",
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "text": _echo(body.text) or {"format": {"type": "text"}},
        "metadata": body.metadata or {},
        "reasoning": _echo(body.reasoning),
        "output": output,
        "error": None,
        "incomplete_details": extra.pop("incomplete_details", None),
        **({"usage": usage} if (usage := extra.pop("usage", None)) is not None else {}),  # an object, or left out
        **extra,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [text_part(text)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def function_call_item(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex[:24]}",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": "completed",
    }


def from_finished(body: ResponsesRequest, choice: FinishedChoice, prompt_tokens: int) -> dict[str, Any]:
    """The Response object of a whole (not streamed) reply."""
    output = [reasoning_item(new_reasoning_id(), choice.reasoning)] if choice.reasoning else []
    if choice.text or not choice.calls:  # the text, also when the model wrote some before its calls
        output.append(message_item(f"msg_{uuid.uuid4().hex[:24]}", choice.text))
    incomplete = choice.end.reason == "length"
    output += [function_call_item(call) for call in choice.calls]
    if incomplete and choice.calls:  # the token limit cut the last call short
        output[-1]["status"] = "incomplete"
    return envelope(
        f"resp_{uuid.uuid4().hex}",
        body,
        "incomplete" if incomplete else "completed",
        output,
        incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
        usage=usage_of(prompt_tokens, choice.end),
    )


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
