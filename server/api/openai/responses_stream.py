"""A streamed Response: the documented event sequence, from the generation's reply events (one choice).

response.created and response.in_progress; then, in output order, a reasoning item (server/api/openai/
responses_reasoning.py), a message item (output_item.added, content_part.added, output_text.delta ...,
output_text.done, content_part.done, output_item.done) and a function_call item per call as it streams
(output_item.added, function_call_arguments.delta ..., function_call_arguments.done, output_item.done); then
response.completed, or response.incomplete when the token limit ended it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from server.api.openai.responses import envelope, function_call_item, message_item, text_part, usage_of
from server.api.openai.responses_reasoning import ReasoningOutput
from server.api.openai.responses_request import ResponsesRequest
from server.generation.pipeline import Generation
from server.generation.reply import ChoiceEnd, ReasoningPiece, ToolCall, ToolCallArguments, ToolCallStart

Event = dict[str, Any]


async def events(body: ResponsesRequest, generation: Generation) -> AsyncIterator[Event]:
    """The events of the reply. The SSE encoder numbers them (`sequence_number`); closing this closes the
    generation."""
    async with contextlib.aclosing(generation.events), contextlib.aclosing(_events(body, generation)) as events:  # type: ignore[type-var]
        async for event in events:
            yield event


async def _events(body: ResponsesRequest, generation: Generation) -> AsyncIterator[Event]:
    response_id = f"resp_{uuid.uuid4().hex}"
    yield {"type": "response.created", "response": envelope(response_id, body, "in_progress", [])}
    yield {"type": "response.in_progress", "response": envelope(response_id, body, "in_progress", [])}
    output: list[Any] = []
    thought, message, call = ReasoningOutput(), MessageOutput(), None
    end = None
    async for event in generation.events:
        if isinstance(event, ReasoningPiece):
            for item in thought.piece(event.text, len(output)):
                yield item
            continue
        if thought.open:  # the thinking is over
            for item in thought.close():
                yield item
            output.append(thought.item())
        if isinstance(event, ToolCallStart):
            for item in _close(message, call, output):
                yield item
            call = FunctionCallOutput(ToolCall(event.id, event.name, ""), len(output))
            yield call.added()
        elif isinstance(event, ToolCallArguments):
            assert call is not None
            yield call.delta(event.text)
        elif isinstance(event, ChoiceEnd):
            end = event
        else:
            for item in message.piece(event.text, len(output)):
                yield item
    if call is None and message.index is None:  # no text and no calls: an empty message, as not streamed
        for item in message.piece("", len(output)):
            yield item
    incomplete = end is not None and end.reason == "length"
    if incomplete and call is not None:  # the token limit cut the last call short
        call.item["status"] = "incomplete"
    for item in _close(message, call, output):
        yield item
    final = envelope(
        response_id,
        body,
        "incomplete" if incomplete else "completed",
        output,
        incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
        usage=None if end is None else usage_of(generation.prompt_tokens, end),
    )
    yield {"type": "response.incomplete" if incomplete else "response.completed", "response": final}


def _close(message: MessageOutput, call: FunctionCallOutput | None, output: list[Any]) -> Iterator[Event]:
    """End the item that streams now (the message, or the last call), adding it to the output."""
    if message.open:
        yield from message.close()
        output.append(message.item())
    elif call is not None and call.open:
        yield from call.close()
        output.append(call.item)


class MessageOutput:
    """The events of the streamed message item: it opens with its first piece of text, at `index` in the output."""

    def __init__(self) -> None:
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.index: int | None = None
        self.text = ""
        self.open = False

    def piece(self, text: str, index: int) -> Iterator[Event]:
        if self.index is None:
            self.index, self.open = index, True
            item = message_item(self.id, "", "in_progress") | {"content": []}
            yield {"type": "response.output_item.added", "output_index": index, "item": item}
            yield {**self._part(), "type": "response.content_part.added", "part": text_part("")}
        if text:
            self.text += text
            yield {**self._part(), "type": "response.output_text.delta", "delta": text, "logprobs": []}

    def close(self) -> Iterator[Event]:
        self.open = False
        yield {**self._part(), "type": "response.output_text.done", "text": self.text, "logprobs": []}
        yield {**self._part(), "type": "response.content_part.done", "part": text_part(self.text)}
        yield {"type": "response.output_item.done", "output_index": self.index, "item": self.item()}

    def item(self) -> Event:
        return message_item(self.id, self.text)

    def _part(self) -> Event:
        return {"item_id": self.id, "output_index": self.index, "content_index": 0}


class FunctionCallOutput:
    """The events of one streamed function_call item, at `index` in the output."""

    def __init__(self, call: ToolCall, index: int) -> None:
        self.item = function_call_item(call)
        self.index = index
        self.open = True

    def added(self) -> Event:
        return {"type": "response.output_item.added", "output_index": self.index, "item": self._now("in_progress")}

    def delta(self, text: str) -> Event:
        self.item["arguments"] += text
        return {
            "type": "response.function_call_arguments.delta",
            "output_index": self.index,
            "item_id": self.item["id"],
            "delta": text,
        }

    def close(self) -> Iterator[Event]:
        self.open = False
        item = self.item
        done = {"output_index": self.index, "item_id": item["id"], "name": item["name"], "arguments": item["arguments"]}
        yield {"type": "response.function_call_arguments.done", **done}
        yield {"type": "response.output_item.done", "output_index": self.index, "item": self.item}

    def _now(self, status: str) -> Event:
        return {**self.item, "status": status}
