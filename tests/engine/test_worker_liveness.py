"""Deadlines and the watchdog between the HTTP process and a model worker, with a scripted stand-in for the worker
on the other end of a real pipe (no llama.cpp)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import socket
import threading
from typing import Any

import pytest

from server.engine import EngineInfo, GenerationRequest
from server.engine.liveness import Watchdog, WorkerDeadlines
from server.engine.process import ProcessEngine
from server.engine.worker import _Worker
from server.errors import ModelUnavailableError
from tests.fakes import fake_spec

WAIT_S = 30  # an upper bound for conditions that hold within milliseconds; reached only when a test fails
QUICK = WorkerDeadlines(call_timeout_s=WAIT_S, ping_interval_s=0.01, hang_timeout_s=0.2)


class FakeWorker:
    """The worker's end of the pipe, served by a thread, standing in for the worker process: it answers pings
    while `answering`, reporting `stalled_s`, answers calls listed in `answers`, and keeps every other message."""

    pid = 999_999

    def __init__(self, conn: Any, *, answering: bool = True, stalled_s: float = 0.0) -> None:
        self.conn = conn
        self.answering = answering
        self.stalled_s = stalled_s
        self.answers: dict[str, Any] = {}
        self.received: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.pongs = 0
        self.pinged = threading.Condition()
        self.killed = threading.Event()
        self.exitcode: int | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                return
            if message[0] == "shutdown":
                self.exitcode = 0
                return
            if message[0] == "ping":
                if self.answering:
                    self.conn.send(("pong", self.stalled_s))
                    with self.pinged:
                        self.pongs += 1
                        self.pinged.notify_all()
            elif message[0] in self.answers:
                self.conn.send(("result", message[1], self.answers[message[0]]))
            else:
                self.received.put(message)

    def next_message(self) -> tuple[Any, ...]:
        return self.received.get(timeout=WAIT_S)

    # the multiprocessing.Process interface ProcessEngine uses
    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def kill(self) -> None:
        """As SIGKILL would: the worker's end of the pipe goes away at once, even while its thread reads."""
        self.exitcode = -9
        self.killed.set()
        with socket.socket(fileno=os.dup(self.conn.fileno())) as end:
            end.shutdown(socket.SHUT_RDWR)


def start(deadlines: WorkerDeadlines = QUICK, **worker: Any) -> tuple[ProcessEngine, FakeWorker]:
    ours, theirs = multiprocessing.Pipe()
    fake = FakeWorker(theirs, **worker)
    engine = ProcessEngine(fake_spec("m"), fake, ours, EngineInfo(n_ctx=256, n_vocab=1000), deadlines)
    return engine, fake


def test_a_worker_that_stops_answering_is_killed_and_its_requests_get_503():
    engine, worker = start(answering=False)

    async def scenario():
        stream = engine.generate(GenerationRequest(prompt_tokens=[1, 2], max_tokens=4))
        streaming = asyncio.ensure_future(anext(stream))
        with pytest.raises(ModelUnavailableError) as call:
            await engine.tokenize("hello")
        with pytest.raises(ModelUnavailableError) as streamed:
            await streaming
        return call.value, streamed.value

    call, streamed = asyncio.run(scenario())
    assert worker.killed.is_set() and not engine.alive
    for error in (call, streamed):
        assert error.status_code == 503 and error.code == "model_unavailable" and error.retry_after == 1
    with pytest.raises(ModelUnavailableError):  # what the registry sees as dead is refused at once meanwhile
        engine.generate(GenerationRequest(prompt_tokens=[1], max_tokens=1))
    engine.close()


def test_a_worker_whose_scheduler_is_stuck_in_one_step_is_killed():
    engine, worker = start(stalled_s=1000.0)

    async def scenario():
        with pytest.raises(ModelUnavailableError):
            await engine.embed([[1, 2]])

    asyncio.run(scenario())
    assert worker.killed.is_set() and not engine.alive
    engine.close()


def test_a_worker_that_answers_its_pings_is_left_alone():
    engine, worker = start()
    worker.answers["tokenize"] = [7, 8]
    with worker.pinged:
        assert worker.pinged.wait_for(lambda: worker.pongs >= 20, WAIT_S)  # many times the hang timeout
    assert asyncio.run(engine.tokenize("x")) == [7, 8]
    assert not worker.killed.is_set() and engine.alive
    engine.close()
    assert worker.exitcode == 0  # shut down, not killed


def test_a_call_past_its_deadline_is_a_503_and_is_cancelled_in_the_worker():
    engine, worker = start(WorkerDeadlines(call_timeout_s=0.05, ping_interval_s=0.01, hang_timeout_s=WAIT_S))
    with pytest.raises(ModelUnavailableError, match=r"did not answer within 0\.05 s") as info:
        asyncio.run(engine.render_chat([{"role": "user", "content": "hi"}]))
    assert info.value.status_code == 503
    kind, call_id, *_ = worker.next_message()
    assert kind == "render"
    assert worker.next_message() == ("cancel", call_id)
    assert engine.alive and not worker.killed.is_set()  # a slow answer alone is not a hung worker
    engine.close()


def test_a_call_whose_request_went_away_is_cancelled_in_the_worker():
    engine, worker = start(QUICK)

    async def scenario():
        embedding = asyncio.ensure_future(engine.embed([[1, 2, 3]]))
        kind, call_id, inputs = await asyncio.to_thread(worker.next_message)
        assert (kind, inputs) == ("embed", [[1, 2, 3]])
        embedding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await embedding
        return call_id

    call_id = asyncio.run(scenario())
    assert worker.next_message() == ("cancel", call_id)
    engine.close()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_watchdog_pings_one_at_a_time_and_reports_silence_and_stuck_steps():
    clock, pings, reasons = Clock(), [], []
    dog = Watchdog("m", WorkerDeadlines(hang_timeout_s=10), lambda: pings.append(1), reasons.append, clock)
    assert not dog.tick() and len(pings) == 1
    clock.now += 9
    assert not dog.tick() and len(pings) == 1  # still waiting for the first answer: no second ping
    dog.answered(stalled_s=0.0)
    clock.now += 100
    assert not dog.tick() and len(pings) == 2  # answered: a long quiet spell is no hang
    clock.now += 10.5
    assert dog.tick() and "unanswered" in reasons[-1]
    dog.answered(stalled_s=9.0)
    assert not dog.tick()  # a long step under the limit is work, not a hang
    dog.answered(stalled_s=11.0)
    assert dog.tick() and "stuck in one step for 11 s" in reasons[-1]


def test_the_watchdog_reports_a_grammar_build_that_runs_past_the_hang_timeout():
    # llama.cpp cannot stop a build: a worker whose build runs on past the hang timeout is recycled.
    clock, reasons = Clock(), []
    dog = Watchdog("m", WorkerDeadlines(hang_timeout_s=10), lambda: None, reasons.append, clock)
    dog.answered(stalled_s=0.0, building_s=9.0)
    assert not dog.tick()
    dog.answered(stalled_s=0.0, building_s=10.5)
    assert dog.tick() and "grammar build running for 10 s" in reasons[-1]


class _StalledEngine:
    def __init__(self, stalled_s: float) -> None:
        self._stalled_s = stalled_s

    def stalled_s(self) -> float:
        return self._stalled_s


class _BuildingEngine(_StalledEngine):
    def building_s(self) -> float:
        return 42.0


@pytest.mark.parametrize(
    ("engine", "reported"),
    [(_StalledEngine(7.5), (7.5, 0.0)), (_StalledEngine(0.0), (0.0, 0.0)), (_BuildingEngine(1.0), (1.0, 42.0))],
)
def test_the_worker_answers_a_ping_from_its_loop_with_how_long_its_engine_is_stuck(engine, reported):
    ours, theirs = multiprocessing.Pipe()
    worker = threading.Thread(target=lambda: asyncio.run(_Worker(theirs, engine).run()), daemon=True)
    worker.start()
    ours.send(("ping",))
    assert ours.poll(WAIT_S)
    assert ours.recv() == ("pong", *reported)
    ours.send(("shutdown",))
    worker.join(WAIT_S)
    assert not worker.is_alive()
