"""Server-sent events of Anthropic's stream: `event: <name>` and `data: <json>` lines per event. A failure once the
stream has begun becomes an `error` event, and the stream ends there."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from server.api.anthropic.assembly import Event, MessageStream
from server.api.anthropic.errors import error_event
from server.errors import InternalError, from_exception
from server.generation.reply import ReplyEvent

logger = logging.getLogger(__name__)


def frame(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def message_events(replies: AsyncIterator[ReplyEvent], stream: MessageStream) -> AsyncIterator[Event]:
    """The stream's events for the pipeline's reply events; closing this closes (cancels) the reply."""
    async with contextlib.aclosing(replies):  # type: ignore[type-var]
        for event in stream.start():
            yield event
        async for reply in replies:
            for event in stream.feed(reply):
                yield event
    if not stream.done:
        raise RuntimeError("a generation ended without finishing its choice")


async def encode(events: AsyncIterator[Event], request_id: str | None = None) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        try:
            async for name, data in events:
                yield frame(name, data)
        except Exception as exc:
            error = from_exception(exc)
            if isinstance(error, InternalError):
                logger.exception("stream failed")
            yield frame(*error_event(error, request_id))
