"""The pipeline's reply (one choice) as Anthropic's answer: a whole `Message`, or the events of a stream, as
(event name, data) pairs. Pure: no I/O.

A stream is message_start, ping, then per content block content_block_start, its deltas and content_block_stop
(a reasoning model's thinking first, then the text, then each tool call, its input as JSON text a piece at a
time), then message_delta (stop reason, output tokens) and message_stop. With `thinking.display` "omitted" the
thinking blocks are there, empty.
"""

from __future__ import annotations

import uuid
from typing import Any

import pydantic_core

from server.api.anthropic.schemas import Message, StopReason, TextBlock, ThinkingBlock, ToolUseBlock, Usage
from server.generation.reply import (
    ChoiceEnd,
    FinishedChoice,
    ReasoningPiece,
    ReplyEvent,
    TextPiece,
    ToolCall,
    ToolCallArguments,
    ToolCallStart,
)

Event = tuple[str, dict[str, Any]]

STOP_REASONS: dict[str, StopReason] = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def stop_of(end: ChoiceEnd) -> tuple[StopReason, str | None]:
    """The stop reason and, when one of the request's stop sequences ended the reply, that sequence."""
    if end.reason == "stop" and end.stop_sequence is not None:
        return "stop_sequence", end.stop_sequence
    return STOP_REASONS[end.reason], None


def tool_use_block(call: ToolCall) -> ToolUseBlock:
    # Anthropic's ids read `toolu_...`; the call's own id stays recognizable in it.
    call_id = call.id if call.id.startswith("toolu_") else f"toolu_{call.id.removeprefix('call_')}"
    return ToolUseBlock(id=call_id, name=call.name, input=tool_input(call.arguments))


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's input as the `anthropic` SDK reads it from a stream's pieces: JSON read in partial mode, so the
    arguments of a call cut short by the token limit give what they hold so far."""
    try:
        value = pydantic_core.from_json(arguments, allow_partial=True) if arguments.strip() else {}
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {}


def build_message(
    choice: FinishedChoice, *, message_id: str, model: str, input_tokens: int, show_thinking: bool = True
) -> Message:
    """The non-streamed answer: a thinking block (when the model thought), a text block (when there is text),
    then a tool_use block per call."""
    content: list[ThinkingBlock | TextBlock | ToolUseBlock] = []
    if choice.reasoning:
        content.append(ThinkingBlock(thinking=choice.reasoning if show_thinking else ""))
    if choice.text:
        content.append(TextBlock(text=choice.text))
    content += [tool_use_block(call) for call in choice.calls]
    reason, sequence = stop_of(choice.end)
    return Message(
        id=message_id,
        content=content,
        model=model,
        stop_reason=reason,
        stop_sequence=sequence,
        usage=Usage(input_tokens=input_tokens, output_tokens=choice.end.completion_tokens),
    )


def _event(name: str, **data: Any) -> Event:
    return name, {"type": name, **data}


class MessageStream:
    """The events of one streamed Message: `start()` first, then `feed` each ReplyEvent of its choice."""

    def __init__(self, *, message_id: str, model: str, input_tokens: int, show_thinking: bool = True) -> None:
        usage = Usage(input_tokens=input_tokens, output_tokens=0)
        self._head = Message(id=message_id, content=[], model=model, stop_reason=None, usage=usage)
        self._blocks = 0  # content blocks started so far: the next one's index
        self._open: str | None = None  # the kind of the block open now: "text", "thinking", "tool_use"
        self._show_thinking = show_thinking
        self.done = False  # message_stop was produced

    def start(self) -> list[Event]:
        return [_event("message_start", message=self._head.model_dump(mode="json")), _event("ping")]

    def feed(self, event: ReplyEvent) -> list[Event]:
        if self.done or event.choice != 0:  # a Messages request has one choice
            return []
        if isinstance(event, TextPiece):
            return self._piece("text", event.text)
        if isinstance(event, ReasoningPiece):
            return self._piece("thinking", event.text)
        if isinstance(event, ToolCallStart):
            block = tool_use_block(ToolCall(event.id, event.name, ""))
            out = self._close_block()
            out.append(_event("content_block_start", index=self._blocks, content_block=block.model_dump(mode="json")))
            self._open = "tool_use"
            return out
        if isinstance(event, ToolCallArguments):
            delta = {"type": "input_json_delta", "partial_json": event.text}
            return [_event("content_block_delta", index=self._blocks, delta=delta)]
        return self._end(event)

    def _piece(self, kind: str, text: str) -> list[Event]:
        if not text:  # a piece that carried only log probabilities
            return []
        out = []
        if self._open != kind:
            out += self._close_block()
            block = {"type": "text", "text": ""} if kind == "text" else ThinkingBlock(thinking="").model_dump()
            out.append(_event("content_block_start", index=self._blocks, content_block=block))
            self._open = kind
        if kind == "text":
            out.append(_event("content_block_delta", index=self._blocks, delta={"type": "text_delta", "text": text}))
        elif self._show_thinking:
            delta = {"type": "thinking_delta", "thinking": text}
            out.append(_event("content_block_delta", index=self._blocks, delta=delta))
        return out

    def _close_block(self) -> list[Event]:
        """Close the text or thinking block that is open, if one is."""
        if self._open is None:
            return []
        self._open = None
        self._blocks += 1
        return [_event("content_block_stop", index=self._blocks - 1)]

    def _end(self, end: ChoiceEnd) -> list[Event]:
        reason, sequence = stop_of(end)
        self.done = True
        return [
            *self._close_block(),
            _event(
                "message_delta",
                delta={"stop_reason": reason, "stop_sequence": sequence},
                usage={"output_tokens": end.completion_tokens},
            ),
            _event("message_stop"),
        ]
