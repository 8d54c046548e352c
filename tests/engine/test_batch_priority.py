"""The batch priority class in the HTTP process: batch requests take only free sequences and wait for a release
without polling, never make an interactive request 429, and a preemption in the worker comes back as a
PreemptedError. The worker's own loop (server/engine/worker.py) serves a FakeEngine on a thread, over a real pipe;
the scheduler's side (placement, preemption) is in tests/real/test_batch_priority_real.py."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import threading
from typing import Any

import pytest

from server.engine import GenerationRequest
from server.engine.base import EngineInfo
from server.engine.liveness import WorkerDeadlines
from server.engine.process import ProcessEngine
from server.engine.room import RoomSignal
from server.engine.worker import _Worker
from server.errors import ModelCrashedError, NoRoomForBatch, OverloadedError, PreemptedError
from tests.fakes import FakeEngine, FakeScript, fake_spec

WAIT_S = 30  # an upper bound for conditions that hold within milliseconds; reached only when a test fails
NOT_YET_S = 0.05  # how long a waiter is given to (wrongly) wake before it should
PATIENT = WorkerDeadlines(call_timeout_s=WAIT_S, ping_interval_s=3600, hang_timeout_s=3600)


class ThreadWorker:
    """The worker's loop serving `engine` on a thread, with the multiprocessing.Process interface ProcessEngine
    uses; `kill` drops its end of the pipe, as SIGKILL would."""

    pid = 999_999

    def __init__(self, engine: Any) -> None:
        self.ours, self._theirs = multiprocessing.Pipe()
        self.exitcode: int | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(_Worker(self._theirs, engine).run()), daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self.exitcode is None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def kill(self) -> None:
        self.exitcode = -9
        with socket.socket(fileno=os.dup(self._theirs.fileno())) as end:
            end.shutdown(socket.SHUT_RDWR)


def start(parallel: int, max_queue: int, script: FakeScript | None = None) -> tuple[ProcessEngine, FakeEngine]:
    fake = FakeEngine(script)
    worker = ThreadWorker(fake)
    spec = fake_spec("m").model_copy(update={"parallel": parallel, "max_queue": max_queue})
    return ProcessEngine(spec, worker, worker.ours, EngineInfo(n_ctx=256, n_vocab=1000), PATIENT), fake


def batch(max_tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(prompt_tokens=[1, 2], max_tokens=max_tokens, priority="batch")


def admit(engine: Any, request: GenerationRequest | None = None) -> Any:
    """As the pipeline starts a batch request: room asked, then generate, with nothing between."""
    engine.check_batch_room()
    return engine.generate(request or batch())


def admit_choices(engine: Any, n: int) -> list[Any]:
    """A batch request of n choices: room asked for all of them, then n generations."""
    engine.check_batch_room(n)
    return [engine.generate(batch()) for _ in range(n)]


def interactive() -> GenerationRequest:
    return GenerationRequest(prompt_tokens=[1, 2], max_tokens=4)


async def still_waiting(waiter: asyncio.Future[Any]) -> bool:
    done, _ = await asyncio.wait({waiter}, timeout=NOT_YET_S)
    return not done


def test_the_request_field_defaults_to_interactive():
    assert GenerationRequest(prompt_tokens=[1], max_tokens=1).priority == "interactive"


def test_batch_requests_take_only_free_sequences_and_wait_for_a_release_without_polling():
    engine, _ = start(parallel=2, max_queue=5)

    async def scenario() -> None:
        first, second = admit(engine), admit(engine)
        assert engine.in_flight == 2
        with pytest.raises(NoRoomForBatch) as refused:
            admit(engine)
        waiter = asyncio.ensure_future(refused.value.wait())
        assert await still_waiting(waiter)
        await first.aclose()
        await asyncio.wait_for(waiter, WAIT_S)
        third = admit(engine)  # the freed sequence
        assert engine.in_flight == 2
        await second.aclose()
        await third.aclose()
        assert engine.in_flight == 0

    asyncio.run(scenario())
    engine.close()


def test_a_batch_request_asks_room_for_all_its_choices_and_never_more_than_can_come():
    engine, _ = start(parallel=4, max_queue=0)

    async def scenario() -> None:
        streams = [admit(engine), admit(engine)]
        with pytest.raises(NoRoomForBatch):
            engine.check_batch_room(3)  # 2 of 4 sequences free
        engine.check_batch_room(2)
        for stream in streams:
            await stream.aclose()
        # More choices than batch work may ever hold: it starts once its whole share is free, not never.
        streams = admit_choices(engine, 8)
        with pytest.raises(NoRoomForBatch):
            engine.check_batch_room(1)
        for stream in streams:
            await stream.aclose()
        running = engine.generate(interactive())
        # Beside interactive work the share is BATCH_SEQUENCES_BESIDE_INTERACTIVE (1): a request of 3 choices
        # starts when that one is free.
        streams = admit_choices(engine, 3)
        with pytest.raises(NoRoomForBatch):
            engine.check_batch_room(1)
        for stream in [*streams, running]:
            await stream.aclose()

    asyncio.run(scenario())
    engine.close()


def test_batch_requests_never_make_an_interactive_request_429():
    engine, _ = start(parallel=2, max_queue=0)

    async def scenario() -> None:
        streams = [admit(engine), admit(engine)]
        streams += [engine.generate(interactive()), engine.generate(interactive())]  # they preempt in the worker
        assert engine.in_flight == 4
        with pytest.raises(OverloadedError) as refused:
            engine.generate(interactive())  # interactive ones alone fill parallel + max_queue
        assert refused.value.status_code == 429
        with pytest.raises(NoRoomForBatch):
            admit(engine)
        for stream in streams:
            await stream.aclose()

    asyncio.run(scenario())
    engine.close()


def test_interactive_requests_in_every_sequence_leave_no_room_for_batch():
    engine, _ = start(parallel=2, max_queue=4)

    async def scenario() -> None:
        first, second = engine.generate(interactive()), engine.generate(interactive())
        with pytest.raises(NoRoomForBatch):
            admit(engine)
        await first.aclose()
        admitted = admit(engine)
        for stream in (second, admitted):
            await stream.aclose()

    asyncio.run(scenario())
    engine.close()


@pytest.mark.parametrize("how", ["dropped unstarted", "read to its end"])
def test_a_batch_request_gives_back_its_own_admission(how):
    # Were it given back as an interactive one, the batch count would stay up and let a second interactive request
    # past a limit of one.
    engine, _ = start(parallel=1, max_queue=0)

    async def scenario() -> None:
        stream = admit(engine)
        if how == "read to its end":
            assert "".join([delta.text async for delta in stream]) == "Hello, world!"
        del stream
        assert engine.in_flight == 0
        running = engine.generate(interactive())
        with pytest.raises(OverloadedError):
            engine.generate(interactive())
        await running.aclose()

    asyncio.run(scenario())
    engine.close()


def test_the_priority_reaches_the_worker_and_a_preemption_comes_back_as_preempted_error():
    script = FakeScript(fail_after=1, failure=PreemptedError())
    engine, fake = start(parallel=2, max_queue=0, script=script)

    async def scenario() -> PreemptedError:
        stream = admit(engine, batch(max_tokens=50))
        first = await anext(stream)
        assert first.text == "Hello"
        with pytest.raises(PreemptedError) as preempted:
            await anext(stream)
        return preempted.value

    error = asyncio.run(scenario())
    assert fake.requests[-1].priority == "batch"
    assert (error.status_code, error.code, error.error_type) == (503, "preempted", "server_error")
    assert "retried" in error.message
    assert engine.in_flight == 0
    engine.close()


@pytest.mark.parametrize("called_before", [False, True])
def test_a_dead_worker_wakes_batch_requests_waiting_for_room(called_before):
    # Before any call the engine knows no event loop and the reader thread wakes the waiters; after one, the loop.
    engine, _ = start(parallel=1, max_queue=0)

    async def scenario() -> None:
        if called_before:
            assert await engine.tokenize("ab") == [97, 98]
        running = engine.generate(interactive())
        with pytest.raises(NoRoomForBatch) as refused:
            admit(engine)
        waiter = asyncio.ensure_future(refused.value.wait())
        assert await still_waiting(waiter)
        engine._process.kill()
        await asyncio.wait_for(waiter, WAIT_S)
        with pytest.raises(ModelCrashedError):
            admit(engine)
        await asyncio.wait_for(engine.room_freed(), WAIT_S)  # a dead engine has nothing to wait for
        await running.aclose()

    asyncio.run(scenario())
    engine.close()


def test_the_room_signal_wakes_every_waiter_of_a_round_from_any_thread():
    signal = RoomSignal()
    signal.notify()  # nobody waits: nothing happens

    async def scenario() -> None:
        waiters = [asyncio.ensure_future(signal.wait()) for _ in range(3)]
        assert await still_waiting(asyncio.gather(*waiters))
        notifier = threading.Thread(target=signal.notify)
        notifier.start()
        notifier.join()
        await asyncio.wait_for(asyncio.gather(*waiters), WAIT_S)
        later = asyncio.ensure_future(signal.wait())  # a new round: the last notify does not count for it
        assert await still_waiting(later)
        signal.notify()
        await asyncio.wait_for(later, WAIT_S)

    asyncio.run(scenario())


def test_the_fake_engine_refuses_batch_requests_while_its_sequences_are_busy():
    fake = FakeEngine(FakeScript(pieces=("a", "b", "c"), parallel=1))

    async def scenario() -> None:
        running = admit(fake, batch(max_tokens=10))
        assert (await anext(running)).text == "a"
        with pytest.raises(NoRoomForBatch) as refused:
            admit(fake)
        fake.generate(interactive())  # interactive requests are never refused for room
        waiter = asyncio.ensure_future(refused.value.wait())
        assert await still_waiting(waiter)
        await running.aclose()
        await asyncio.wait_for(waiter, WAIT_S)
        assert [delta.text async for delta in admit(fake)] == ["a", "b", "c", ""]

    asyncio.run(scenario())


def test_the_fake_engine_without_parallel_admits_every_batch_request():
    fake = FakeEngine(FakeScript(pieces=("a",)))

    async def scenario() -> None:
        running = admit(fake)
        await anext(running)
        assert [delta.text async for delta in admit(fake)] == ["a", ""]
        await running.aclose()

    asyncio.run(scenario())


def test_preemptions_are_exported_as_a_counter_per_model(client, loader):
    assert client.post("/v1/completions", json={"model": "fake-model", "prompt": "hi"}).status_code == 200
    loader.engines["fake-model"]._counters.batch_preemptions = 3
    assert 'slm_batch_preemptions_total{model="fake-model"} 3.0' in client.get("/metrics").text
