"""The worker's outlet and a scheduler job with a sink: deltas and failures leave from the scheduler's thread in
the order they were made, and the job's own stream sees only its end."""

from __future__ import annotations

import asyncio

import pytest

from server.engine.base import GenerationDelta, GenerationRequest
from server.engine.batch_slots import Job
from server.engine.delta_outlet import DeltaOutlet, Forwarded
from server.engine.image_inputs import Wake
from server.errors import InternalError


def test_flush_sends_the_queued_deltas_in_one_message_and_nothing_when_none():
    sent: list[tuple] = []
    outlet = DeltaOutlet(sent.append)
    outlet.flush()
    assert sent == []
    outlet.put(1, GenerationDelta("a", 1))
    outlet.put(2, GenerationDelta("b", 1))
    outlet.flush()
    outlet.flush()
    assert sent == [("deltas", [(1, GenerationDelta("a", 1)), (2, GenerationDelta("b", 1))])]


def test_a_message_sent_after_deltas_never_overtakes_them():
    sent: list[tuple] = []
    outlet = DeltaOutlet(sent.append)
    outlet.put(3, GenerationDelta("x", 1))
    outlet.send(("error", 3, "boom"))
    assert sent == [("deltas", [(3, GenerationDelta("x", 1))]), ("error", 3, "boom")]


def test_a_queued_message_keeps_its_place_between_deltas():
    sent: list[tuple] = []
    outlet = DeltaOutlet(sent.append)
    outlet.put(1, GenerationDelta("a", 1))
    outlet.put_message(("error", 2, "preempted"))
    outlet.put(1, GenerationDelta("b", 2))
    outlet.flush()
    assert sent == [
        ("deltas", [(1, GenerationDelta("a", 1))]),
        ("error", 2, "preempted"),
        ("deltas", [(1, GenerationDelta("b", 2))]),
    ]


def job_with(sink: list) -> Job:
    return Job(GenerationRequest(prompt_tokens=[1], max_tokens=4), asyncio.get_running_loop(), Wake(), sink=sink.append)


def test_a_job_with_a_sink_hands_each_delta_to_it_and_its_stream_sees_only_the_end():
    async def scenario() -> list[str]:
        job = job_with(seen)
        await asyncio.to_thread(job.emit, GenerationDelta("a", 1))  # from another thread, as the scheduler's
        await asyncio.to_thread(job.emit, GenerationDelta("b", 2, "length"))
        return [delta.text async for delta in job]

    seen: list = []
    assert asyncio.run(scenario()) == ["b"]
    assert [delta.text for delta in seen] == ["a", "b"]


def test_a_job_with_a_sink_hands_it_its_failure_and_its_stream_ends_with_forwarded():
    failure = InternalError()

    async def scenario() -> None:
        job = job_with(seen)
        await asyncio.to_thread(job.emit, failure)
        with pytest.raises(Forwarded):
            await anext(job)

    seen: list = []
    asyncio.run(scenario())
    assert seen == [failure]


def test_nothing_goes_to_the_sink_of_a_cancelled_job():
    async def scenario() -> None:
        job = job_with(seen)
        await job.aclose()  # the request was cancelled where the sink leads
        await asyncio.to_thread(job.emit, GenerationDelta("late", 1))
        await asyncio.to_thread(job.emit, InternalError())

    seen: list = []
    asyncio.run(scenario())
    assert seen == []
