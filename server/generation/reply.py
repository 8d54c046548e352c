"""What the pipeline gives back, in no protocol's terms: per choice, a reasoning model's thinking, text pieces,
then tool calls or not, then the end. Adapters render these as OpenAI chunks, Responses events or Anthropic
content blocks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from server.engine.base import TokenLogprob

EndReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class TextPiece:
    choice: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ReasoningPiece:
    """A piece of a reasoning model's thinking (the text of its thinking block), which comes before its answer."""

    choice: int
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A tool call begins: its id and the function's name (its arguments follow). Once a choice's calls begin,
    only calls follow until its end."""

    choice: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    """More of the arguments (JSON text) of the choice's last call begun; every piece is final."""

    choice: int
    text: str


@dataclass(frozen=True)
class ChoiceEnd:
    choice: int
    reason: EndReason
    completion_tokens: int
    stop_sequence: str | None = None  # the stop string that ended it, when one did
    logprobs: tuple[TokenLogprob, ...] = ()  # of the last tokens, when they carried no text
    reasoning_tokens: int = 0  # of completion_tokens, those of the thinking block


def call_events(choice: int, call: ToolCall) -> tuple[ToolCallStart, ToolCallArguments]:
    """A call read whole, as the events that give it out."""
    return ToolCallStart(choice, call.id, call.name), ToolCallArguments(choice, call.arguments)


ReplyEvent = TextPiece | ReasoningPiece | ToolCallStart | ToolCallArguments | ChoiceEnd


@dataclass(frozen=True)
class FinishedChoice:
    """A whole choice, for a response that is not streamed."""

    text: str  # with tool calls: the text the model wrote before them, if any
    calls: tuple[ToolCall, ...]
    end: ChoiceEnd
    logprobs: tuple[TokenLogprob, ...]
    reasoning: str = ""  # a reasoning model's thinking


async def finished(events: AsyncIterator[ReplyEvent], choices: int) -> list[FinishedChoice]:
    """Every choice of a generation, collected."""
    texts: list[list[str]] = [[] for _ in range(choices)]
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(choices)]
    calls: list[list[tuple[str, str, list[str]]]] = [[] for _ in range(choices)]  # id, name, arguments
    thoughts: list[list[str]] = [[] for _ in range(choices)]
    ends: list[ChoiceEnd | None] = [None] * choices
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, TextPiece):
                texts[event.choice].append(event.text)
                logprobs[event.choice].extend(event.logprobs)
            elif isinstance(event, ReasoningPiece):
                thoughts[event.choice].append(event.text)
            elif isinstance(event, ToolCallStart):
                calls[event.choice].append((event.id, event.name, []))
            elif isinstance(event, ToolCallArguments):
                calls[event.choice][-1][2].append(event.text)
            else:
                ends[event.choice] = event
                logprobs[event.choice].extend(event.logprobs)
    out = []
    for text, tokens, choice_calls, end, thought in zip(texts, logprobs, calls, ends, thoughts, strict=True):
        if end is None:
            raise RuntimeError("a generation ended without finishing one of its choices")
        whole = tuple(ToolCall(id, name, "".join(arguments)) for id, name, arguments in choice_calls)
        out.append(FinishedChoice("".join(text), whole, end, tuple(tokens), "".join(thought)))
    return out
