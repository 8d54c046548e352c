"""Server-sent events: response objects to `data:` lines, a failure mid-stream to an error event, then [DONE]."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from server.errors import InternalError, from_exception

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
# Top-level keys that OpenAI leaves out of a chunk rather than sending as null.
_OMIT_WHEN_NULL = ("usage", "system_fingerprint")


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def chunk_payload(chunk: BaseModel) -> dict[str, Any]:
    payload = chunk.model_dump(mode="json")
    for key in _OMIT_WHEN_NULL:
        if payload.get(key, 0) is None:
            del payload[key]
    return payload


async def encode(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        try:
            async for chunk in chunks:
                yield event(chunk_payload(chunk))
        except Exception as exc:
            error = from_exception(exc)
            if isinstance(error, InternalError):
                logger.exception("stream failed")
            yield event(error.body().model_dump(mode="json"))
    yield DONE


async def encode_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Named events of the Responses API (`event:` line, `sequence_number` in the data); a failure becomes an
    `error` event. This API ends without a [DONE] line."""
    sequence = 0
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        try:
            async for payload in events:
                yield _named({**payload, "sequence_number": sequence})
                sequence += 1
        except Exception as exc:
            error = from_exception(exc)
            if isinstance(error, InternalError):
                logger.exception("stream failed")
            detail = error.body().error
            yield _named(
                {
                    "type": "error",
                    "code": detail.code,
                    "message": detail.message,
                    "param": detail.param,
                    "sequence_number": sequence,
                }
            )


def _named(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()
