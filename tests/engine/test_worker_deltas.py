"""The worker sends its streams' deltas as one pipe message per event-loop turn: every sequence's delta of a
decode step travels together, and a request's error or result never overtakes its deltas."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from typing import Any

from server.engine.base import GenerationDelta, GenerationRequest
from server.engine.delta_outlet import Forwarded
from server.engine.worker import _Worker
from server.errors import InvalidRequestError

WAIT_S = 30  # an upper bound for conditions that hold within milliseconds; reached only when a test fails
REQUEST = GenerationRequest(prompt_tokens=[1], max_tokens=4)


class SteppedEngine:
    """Each stream gets a delta when `step` is called from another thread, all in one loop turn, as the batching
    scheduler hands over a decode step's deltas."""

    def __init__(self) -> None:
        self.queues: list[asyncio.Queue[GenerationDelta]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Semaphore(0)

    def stalled_s(self) -> float:
        return 0.0

    async def generate(self, request: GenerationRequest):
        self.loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationDelta] = asyncio.Queue()
        self.queues.append(queue)
        self.started.release()
        while True:
            delta = await queue.get()
            yield delta
            if delta.finish_reason is not None:
                return

    def step(self, text: str, finish: bool = False) -> None:
        def hand_over() -> None:
            for queue in self.queues:
                queue.put_nowait(GenerationDelta(text, 1, "stop" if finish else None))

        assert self.loop is not None
        self.loop.call_soon_threadsafe(hand_over)


class FailingEngine(SteppedEngine):
    async def generate(self, request: GenerationRequest):
        yield GenerationDelta("partial", 1)
        raise InvalidRequestError("the grammar gave up", param="response_format")


def serve(engine: Any) -> tuple[Any, threading.Thread]:
    ours, theirs = multiprocessing.Pipe()
    worker = threading.Thread(target=lambda: asyncio.run(_Worker(theirs, engine).run()), daemon=True)
    worker.start()
    return ours, worker


def received(conn: Any) -> tuple[Any, ...]:
    assert conn.poll(WAIT_S), "the worker sent nothing"
    return conn.recv()


def test_a_step_s_deltas_of_several_streams_travel_in_one_message():
    engine = SteppedEngine()
    conn, worker = serve(engine)
    for request_id in (1, 2, 3):
        conn.send(("generate", request_id, REQUEST))
    for _ in range(3):
        assert engine.started.acquire(timeout=WAIT_S)
    engine.step("a")
    kind, deltas = received(conn)
    assert kind == "deltas"
    assert sorted(request_id for request_id, _ in deltas) == [1, 2, 3]
    assert {delta.text for _, delta in deltas} == {"a"}
    engine.step("b", finish=True)
    kind, deltas = received(conn)
    assert kind == "deltas" and len(deltas) == 3 and all(d.finish_reason == "stop" for _, d in deltas)
    conn.send(("shutdown",))
    worker.join(WAIT_S)
    assert not worker.is_alive()


def test_an_error_follows_the_deltas_sent_before_it():
    conn, worker = serve(FailingEngine())
    conn.send(("generate", 7, REQUEST))
    assert received(conn) == ("deltas", [(7, GenerationDelta("partial", 1))])
    kind, request_id, error = received(conn)
    assert (kind, request_id) == ("error", 7)
    assert "the grammar gave up" in str(error)
    conn.send(("shutdown",))
    worker.join(WAIT_S)


class ScheduledEngine:
    """Like llama.cpp's engine: a stream's deltas go to its sink on another thread (the scheduler's), which
    flushes the outlet after each step; the stream itself yields only the last delta."""

    def __init__(self) -> None:
        self.outlet: Any = None
        self.sinks: list[Any] = []
        self.ends: list[asyncio.Queue[GenerationDelta | BaseException]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Semaphore(0)
        self.loop_blocked = threading.Event()
        self.unblock = threading.Event()

    def stalled_s(self) -> float:
        return 0.0

    def send_deltas_through(self, outlet: Any) -> None:
        self.outlet = outlet

    async def counters(self) -> None:
        self.loop_blocked.set()
        assert self.unblock.wait(WAIT_S)  # holds the worker's event loop: nothing else runs on it meanwhile

    async def generate(self, request: GenerationRequest, sink: Any):
        self.loop = asyncio.get_running_loop()
        end: asyncio.Queue[GenerationDelta | BaseException] = asyncio.Queue()
        self.sinks.append(sink)
        self.ends.append(end)
        self.started.release()
        item = await end.get()
        if isinstance(item, BaseException):
            raise item
        yield item

    def fail(self, index: int, error: BaseException) -> None:
        """A failure the scheduler makes: to the sink, and the stream ends with Forwarded."""
        self.sinks[index](error)
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.ends[index].put_nowait, Forwarded())

    def step(self, text: str, finish: bool = False, flush: bool = True) -> None:
        for sink, end in zip(self.sinks, self.ends, strict=True):
            delta = GenerationDelta(text, 1, "stop" if finish else None)
            sink(delta)
            if finish:
                assert self.loop is not None
                self.loop.call_soon_threadsafe(end.put_nowait, delta)
        if flush:
            self.outlet.flush()


def two_scheduled_streams() -> tuple[ScheduledEngine, Any, threading.Thread]:
    """A worker serving a ScheduledEngine, with requests 1 and 2 started."""
    engine = ScheduledEngine()
    conn, worker = serve(engine)
    for request_id in (1, 2):
        conn.send(("generate", request_id, REQUEST))
    for _ in range(2):
        assert engine.started.acquire(timeout=WAIT_S)
    return engine, conn, worker


def test_a_scheduler_s_deltas_cross_the_pipe_while_the_worker_s_loop_is_busy():
    engine, conn, worker = two_scheduled_streams()
    conn.send(("counters", 9))
    assert engine.loop_blocked.wait(WAIT_S)
    engine.step("a")  # from this thread, as the scheduler's: the loop cannot have sent these
    kind, deltas = received(conn)
    assert kind == "deltas" and deltas == [(1, GenerationDelta("a", 1)), (2, GenerationDelta("a", 1))]
    engine.unblock.set()
    assert received(conn) == ("result", 9, None)
    engine.step("b", finish=True)
    kind, deltas = received(conn)
    assert kind == "deltas" and [d.finish_reason for _, d in deltas] == ["stop", "stop"]
    conn.send(("ping",))
    assert received(conn)[0] == "pong"  # the streams' last deltas were not sent a second time by the loop
    conn.send(("shutdown",))
    worker.join(WAIT_S)
    assert not worker.is_alive()


def test_an_error_of_a_scheduled_stream_follows_its_deltas_not_yet_flushed():
    engine = ScheduledEngine()
    conn, worker = serve(engine)
    conn.send(("generate", 4, REQUEST))
    assert engine.started.acquire(timeout=WAIT_S)
    engine.step("partial", flush=False)
    assert engine.loop is not None
    engine.loop.call_soon_threadsafe(engine.ends[0].put_nowait, InvalidRequestError("the grammar gave up"))
    assert received(conn) == ("deltas", [(4, GenerationDelta("partial", 1))])
    kind, request_id, error = received(conn)
    assert (kind, request_id) == ("error", 4) and "the grammar gave up" in str(error)
    conn.send(("shutdown",))
    worker.join(WAIT_S)


def test_a_scheduler_s_failure_leaves_in_order_between_other_streams_deltas_and_only_once():
    engine, conn, worker = two_scheduled_streams()
    engine.sinks[0](GenerationDelta("a", 1))
    engine.fail(1, InvalidRequestError("preempted, say"))
    engine.sinks[0](GenerationDelta("b", 2))
    engine.outlet.flush()
    assert received(conn) == ("deltas", [(1, GenerationDelta("a", 1))])
    kind, request_id, error = received(conn)
    assert (kind, request_id) == ("error", 2) and "preempted, say" in str(error)
    assert received(conn) == ("deltas", [(1, GenerationDelta("b", 2))])
    conn.send(("ping",))
    assert received(conn)[0] == "pong"  # the failed stream's end sent no second error
    conn.send(("shutdown",))
    worker.join(WAIT_S)
