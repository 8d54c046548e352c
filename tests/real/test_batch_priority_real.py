"""The batch priority class with a real (tiny, generated) model: batch requests fill only free sequences, and an
interactive request that finds them all busy takes one at the next token boundary, ending the batch request that
has done the least with PreemptedError; interactive requests are placed first, and only they can be refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.config import ModelSpec, PathSource
from server.engine import GenerationRequest, SamplingParams
from server.engine.base import Priority
from server.engine.llama import LlamaCppEngine
from server.engine.process import ProcessEngine
from server.errors import NoRoomForBatch, OverloadedError, PreemptedError

pytestmark = pytest.mark.real

WAIT_S = 60  # an upper bound for what takes well under a second; reached only when a test fails
NOT_YET_S = 0.05
N_CTX = 8192  # a batch request runs to this many tokens (~20 s for the tiny model): it never ends on its own here
ENDLESS = SamplingParams(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    from tests.gguf_factory import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("batch") / "tiny.gguf", quant="Q4_1", context_length=N_CTX)


def spec(path: Path, **settings: Any) -> ModelSpec:
    return ModelSpec(name="tiny", source=PathSource(path=path), n_threads=1, n_ctx=N_CTX, **settings)


def request(priority: Priority, max_tokens: int = N_CTX) -> GenerationRequest:
    return GenerationRequest(prompt_tokens=(1, 2, 3, 4), max_tokens=max_tokens, sampling=ENDLESS, priority=priority)


class Reader:
    """Reads a stream to its end in a task, noting in `log` (shared by the readers of a test) when its first
    delta came and how it ended; `outcome` is how many tokens it generated, or the exception it ended with."""

    def __init__(self, name: str, stream: AsyncIterator[Any], log: list[tuple[str, str]]) -> None:
        self.name = name
        self.first = asyncio.Event()
        self._log = log
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: AsyncIterator[Any]) -> int | BaseException:
        tokens = 0
        try:
            async for delta in stream:
                if not self.first.is_set():
                    self._log.append((self.name, "first"))
                    self.first.set()
                tokens = delta.completion_tokens
        except PreemptedError as preempted:
            self._log.append((self.name, "preempted"))
            return preempted
        self._log.append((self.name, "end"))
        return tokens

    async def started(self) -> None:
        await asyncio.wait_for(self.first.wait(), WAIT_S)

    async def outcome(self) -> int | BaseException:
        return await asyncio.wait_for(asyncio.shield(self.task), WAIT_S)

    async def close(self) -> None:
        self.task.cancel()  # the stream is closed as its read is cancelled: the request is cancelled too
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def admitted(engine: ProcessEngine) -> Any:
    """A batch request as the pipeline starts one: room asked, then generate, with nothing between."""
    engine.check_batch_room()
    return engine.generate(request("batch"))


async def still_waiting(waiter: asyncio.Future[Any]) -> bool:
    done, _ = await asyncio.wait({waiter}, timeout=NOT_YET_S)
    return not done


@pytest.fixture
def process_engine(tiny_path) -> Iterator[ProcessEngine]:
    engine = ProcessEngine.load(spec(tiny_path, parallel=2, max_queue=0))
    yield engine
    engine.close()


def test_batch_fills_free_sequences_and_an_interactive_request_preempts_the_least_advanced(process_engine):
    engine = process_engine

    async def scenario() -> None:
        log: list[tuple[str, str]] = []
        first = Reader("b1", admitted(engine), log)
        second = Reader("b2", admitted(engine), log)
        await first.started()
        await second.started()
        with pytest.raises(NoRoomForBatch) as refused:
            admitted(engine)
        waiter = asyncio.ensure_future(refused.value.wait())
        assert await still_waiting(waiter)
        await second.close()
        await asyncio.wait_for(waiter, WAIT_S)
        third = Reader("b3", admitted(engine), log)  # in the sequence the second one left
        await third.started()
        assert engine.in_flight == 2

        # Both sequences run batch requests and max_queue is 0: an interactive request is still admitted.
        interactive = Reader("i", engine.generate(request("interactive", max_tokens=8)), log)
        assert await interactive.outcome() == 8
        preempted = await third.outcome()  # it had generated less than the first: it gave way
        assert isinstance(preempted, PreemptedError) and preempted.code == "preempted"
        assert log.index(("b3", "preempted")) < log.index(("i", "first"))
        assert not first.task.done()  # the other batch request runs on
        counters = await engine.counters()
        assert counters.batch_preemptions == 1
        assert counters.active_sequences == 1 and counters.queue_depth == 0
        await first.close()
        assert engine.in_flight == 0
        # The worker answers in order: once this answer is here, no delta of the cancelled request is still to
        # come, so none arrives after this event loop has closed.
        await engine.counters()

    asyncio.run(scenario())


def test_waiting_interactive_requests_go_first_and_only_they_are_refused(tiny_path):
    # In the worker's own engine (no HTTP-side admission): one sequence, one interactive request may wait.
    engine = LlamaCppEngine.load(spec(tiny_path, parallel=1, max_queue=1))
    try:

        async def scenario() -> None:
            log: list[tuple[str, str]] = []
            running = Reader("i1", engine.generate(request("interactive")), log)
            await running.started()
            queued_batch = Reader("b", engine.generate(request("batch")), log)  # queued: batch is never refused
            queued = Reader("i2", engine.generate(request("interactive", max_tokens=4)), log)
            with pytest.raises(OverloadedError):  # one running and one waiting interactive fill it
                engine.generate(request("interactive"))
            await running.close()
            assert await queued.outcome() == 4
            await queued_batch.started()
            assert log.index(("i2", "end")) < log.index(("b", "first"))  # it arrived later, and went first

            late = Reader("i3", engine.generate(request("interactive", max_tokens=4)), log)
            assert await late.outcome() == 4
            assert isinstance(await queued_batch.outcome(), PreemptedError)
            counters = await engine.counters()
            assert counters.batch_preemptions == 1
            assert counters.active_sequences == 0 and counters.queue_depth == 0

        asyncio.run(scenario())
    finally:
        engine.close()


def test_an_interactive_request_that_finds_a_free_sequence_preempts_nothing(tiny_path):
    engine = LlamaCppEngine.load(spec(tiny_path, parallel=2, max_queue=0))
    try:

        async def scenario() -> None:
            log: list[tuple[str, str]] = []
            running = Reader("b", engine.generate(request("batch")), log)
            await running.started()
            interactive = Reader("i", engine.generate(request("interactive", max_tokens=4)), log)
            assert await interactive.outcome() == 4
            assert not running.task.done()
            assert (await engine.counters()).batch_preemptions == 0
            await running.close()

        asyncio.run(scenario())
    finally:
        engine.close()
