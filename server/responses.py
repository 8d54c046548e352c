"""The Responses API (`POST /v1/responses`) as a translation onto chat completions, both ways.

Requests become a `ChatCompletionRequest`; a chat completion becomes a Response object; a stream of chat chunks
becomes the documented event sequence. Responses are not stored: `previous_response_id` is refused with a 400.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.errors import InvalidRequestError, UnsupportedParameterError
from server.schemas import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, OpenAIRequest

Role = Literal["system", "developer", "user", "assistant"]


class InputText(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: Literal["message"] = "message"
    role: Role
    content: str | list[InputText]


class FunctionCallOutput(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: Literal["function_call_output"]
    call_id: str
    output: str


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


InputItem = Annotated[InputMessage | FunctionCallOutput | FunctionCallItem, Field(union_mode="left_to_right")]


class ResponsesRequest(OpenAIRequest):
    model: str = Field(min_length=1)
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stream: bool = False
    text: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None


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
    for item in items:
        if isinstance(item, InputMessage):
            content = item.content if isinstance(item.content, str) else "".join(p.text for p in item.content)
            messages.append({"role": item.role, "content": content})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tool_choice": body.tool_choice
        if not isinstance(body.tool_choice, dict)
        else _chat_tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
    }
    if body.tools:
        chat["tools"] = [_chat_tool(tool, i) for i, tool in enumerate(body.tools)]
    fmt = (body.text or {}).get("format")
    if fmt:
        chat["response_format"] = _chat_format(fmt)
    return ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})


def _chat_tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise UnsupportedParameterError(
            f"Only function tools are supported (tools[{index}] is {tool.get('type')!r}).", param=f"tools[{index}]"
        )
    function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": choice.get("name")}}


def _chat_format(fmt: dict[str, Any]) -> dict[str, Any]:
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    if kind in ("text", "json_object"):
        return {"type": kind}
    raise InvalidRequestError(f"Invalid value for 'text.format.type': {kind!r}.", param="text.format.type")


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _envelope(response_id: str, body: ResponsesRequest, status: str, output: list[Any], **extra: Any) -> dict[str, Any]:
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
        "tools": body.tools or [],
        "tool_choice": body.tool_choice or "auto",
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "text": body.text or {"format": {"type": "text"}},
        "metadata": body.metadata or {},
        "output": output,
        "error": None,
        "incomplete_details": extra.pop("incomplete_details", None),
        "usage": extra.pop("usage", None),
        **extra,
    }


def _message(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _function_call(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex[:24]}",
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
        "status": "completed",
    }


def from_chat(body: ResponsesRequest, completion: ChatCompletion) -> dict[str, Any]:
    choice = completion.choices[0]
    if choice.message.tool_calls:
        output = [_function_call(call.model_dump()) for call in choice.message.tool_calls]
    else:
        output = [_message(f"msg_{uuid.uuid4().hex[:24]}", choice.message.content or "")]
    incomplete = choice.finish_reason == "length"
    usage = completion.usage
    return _envelope(
        f"resp_{uuid.uuid4().hex}",
        body,
        "incomplete" if incomplete else "completed",
        output,
        incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
        usage=_usage(usage.prompt_tokens, usage.completion_tokens),
    )


async def events(body: ResponsesRequest, chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[dict[str, Any]]:
    """The documented streaming event sequence, from chat chunks (include_usage must be on), each event numbered
    with its `sequence_number`."""
    sequence_number = 0
    async for event in _events(body, chunks):
        yield {**event, "sequence_number": sequence_number}
        sequence_number += 1


async def _events(body: ResponsesRequest, chunks: AsyncIterator[ChatCompletionChunk]) -> AsyncIterator[dict[str, Any]]:
    response_id, item_id = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex[:24]}"
    yield {"type": "response.created", "response": _envelope(response_id, body, "in_progress", [])}
    yield {"type": "response.in_progress", "response": _envelope(response_id, body, "in_progress", [])}
    text, calls, usage, finish = "", {}, None, None
    opened = False
    async for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                calls.setdefault(call["index"], call)
            if choice.delta.content:
                if not opened:
                    opened = True
                    yield _item_added(item_id)
                    yield {
                        **_part(item_id),
                        "type": "response.content_part.added",
                        "part": {"type": "output_text", "text": "", "annotations": []},
                    }
                text += choice.delta.content
                yield {**_part(item_id), "type": "response.output_text.delta", "delta": choice.delta.content}
    output: list[Any] = []
    if opened:
        yield {**_part(item_id), "type": "response.output_text.done", "text": text}
        yield {
            **_part(item_id),
            "type": "response.content_part.done",
            "part": {"type": "output_text", "text": text, "annotations": []},
        }
        output.append(_message(item_id, text))
        yield {"type": "response.output_item.done", "output_index": 0, "item": output[-1]}
    for call in calls.values():
        item = _function_call(call)
        index = len(output)
        yield {"type": "response.output_item.added", "output_index": index, "item": {**item, "status": "in_progress"}}
        yield {
            "type": "response.function_call_arguments.done",
            "output_index": index,
            "item_id": item["id"],
            "arguments": item["arguments"],
        }
        output.append(item)
        yield {"type": "response.output_item.done", "output_index": index, "item": item}
    incomplete = finish == "length"
    final = _envelope(
        response_id,
        body,
        "incomplete" if incomplete else "completed",
        output,
        incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
        usage=None if usage is None else _usage(usage.prompt_tokens, usage.completion_tokens),
    )
    yield {"type": "response.incomplete" if incomplete else "response.completed", "response": final}


def _item_added(item_id: str) -> dict[str, Any]:
    return {
        "type": "response.output_item.added",
        "output_index": 0,
        "item": _message(item_id, "", "in_progress") | {"content": []},
    }


def _part(item_id: str) -> dict[str, Any]:
    return {"item_id": item_id, "output_index": 0, "content_index": 0}
