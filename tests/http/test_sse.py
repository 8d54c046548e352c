import asyncio
import json

from server.api.openai.schemas import ChatChunkChoice, ChatCompletionChunk, ChatDelta
from server.errors import GENERIC_500_MESSAGE, ModelUnavailableError
from server.http import sse


def chunk(text: str) -> ChatCompletionChunk:
    return ChatCompletionChunk(
        id="c", created=1, model="m", choices=[ChatChunkChoice(index=0, delta=ChatDelta(content=text))]
    )


async def frames_of(source) -> list[bytes]:
    return [frame async for frame in sse.encode(source)]


def test_frames_and_done():
    async def source():
        yield chunk("a")
        yield chunk("b")

    frames = asyncio.run(frames_of(source()))
    assert frames[-1] == b"data: [DONE]\n\n"
    first = json.loads(frames[0][len(b"data: ") :])
    assert first["choices"][0]["delta"] == {"content": "a"}
    assert "usage" not in first and "system_fingerprint" not in first


def test_known_error_mid_stream_keeps_its_message():
    async def source():
        yield chunk("a")
        raise ModelUnavailableError("The model `m` is not available.")

    frames = asyncio.run(frames_of(source()))
    assert json.loads(frames[1][6:])["error"]["code"] == "model_unavailable"
    assert frames[2] == sse.DONE


def test_unknown_error_mid_stream_is_generic():
    async def source():
        yield chunk("a")
        raise KeyError("/secret/path")

    frames = asyncio.run(frames_of(source()))
    error = json.loads(frames[1][6:])["error"]
    assert error["message"] == GENERIC_500_MESSAGE and "secret" not in frames[1].decode()


def test_source_is_closed_when_the_consumer_stops():
    closed = []

    async def source():
        try:
            while True:
                yield chunk("x")
        finally:
            closed.append(True)

    async def take_one():
        stream = sse.encode(source())
        await anext(stream)
        await stream.aclose()

    asyncio.run(take_one())
    assert closed == [True]
