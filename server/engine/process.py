"""`ProcessEngine`: the Engine interface, served by a model worker in its own process.

The HTTP process never runs llama.cpp. If the worker dies, the requests it was serving fail with a 503 and the
engine reports itself dead, so the registry starts a fresh worker for the next request. A worker that stops
answering is killed by the watchdog (server/engine/liveness.py), and every call to it has a deadline: nothing
the HTTP process does waits on a worker without a bound. Messages go out through a writer thread, so a worker
that stops reading its pipe never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from queue import SimpleQueue
from typing import Any

from server.config import ModelSpec
from server.engine.admission import INTERACTIVE_GRACE_S, Admission
from server.engine.base import EngineCounters, EngineInfo, GenerationDelta, GenerationRequest, RGBImage
from server.engine.delta_buffer import MAX_BUFFERED_DELTAS, DeltaBuffer
from server.engine.delta_stream import DeltaStream
from server.engine.liveness import Watchdog, WorkerDeadlines
from server.engine.prompt_store import PromptCacheConfig
from server.engine.room import RoomSignal
from server.engine.spawn import start_worker
from server.engine.worker import WireError
from server.errors import APIError, ModelCrashedError, ModelUnavailableError, NoRoomForBatch, PreemptedError

logger = logging.getLogger(__name__)


class RemoteError(APIError):
    """An APIError raised in the worker, rebuilt with the same status and body."""

    def __init__(self, wire: WireError) -> None:
        super().__init__(wire.message, param=wire.param, code=wire.code)
        self.status_code = wire.status_code
        self.error_type = wire.error_type


def _rebuilt(wire: WireError) -> APIError:
    """The error a worker sent, as the HTTP process raises it: a preemption keeps its own class (the batch runner
    catches it to retry); every other one keeps its status and body."""
    if wire.code == PreemptedError.code:
        return PreemptedError()
    return RemoteError(wire)


class ProcessEngine:
    def __init__(
        self,
        spec: ModelSpec,
        process: Any,
        conn: Any,
        info: EngineInfo,
        deadlines: WorkerDeadlines | None = None,
    ) -> None:
        self._spec = spec
        self._process = process
        self._conn = conn
        self._info = info
        self._deadlines = deadlines = deadlines or WorkerDeadlines()
        self._alive = True
        self._closing = False
        self._hung = False
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[Any] | asyncio.Queue[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._admitted = 0  # every admitted generation request, batch ones included
        self._batch_admitted = 0
        self._interactive_at = -INTERACTIVE_GRACE_S  # monotonic time the last interactive request ended
        self._room = RoomSignal()  # batch requests waiting for a free sequence
        self._outbox: SimpleQueue[tuple[Any, ...] | None] = SimpleQueue()
        self._writer = threading.Thread(target=self._write, name=f"worker-{spec.name}-out", daemon=True)
        self._reader = threading.Thread(target=self._read, name=f"worker-{spec.name}", daemon=True)
        self._watchdog = Watchdog(spec.name, deadlines, lambda: self._outbox.put(("ping",)), self._on_hung)
        self._writer.start()
        self._reader.start()
        self._watchdog.start()

    @classmethod
    def load(
        cls, spec: ModelSpec, deadlines: WorkerDeadlines | None = None, prompt_cache: PromptCacheConfig | None = None
    ) -> ProcessEngine:
        """Start a worker and wait until its model is loaded (blocking: call it off the event loop)."""
        process, conn, info = start_worker(spec, prompt_cache)
        return cls(spec, process, conn, info, deadlines)

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def in_flight(self) -> int:
        """Generation requests admitted and not yet finished (the registry never unloads a busy engine)."""
        return self._admitted

    @property
    def pid(self) -> int:
        return self._process.pid

    def stalled_s(self) -> float:
        return 0.0  # measured in the worker, which its pings report

    async def counters(self) -> EngineCounters:
        return await self._call("counters")

    async def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_vars: Mapping[str, Any] | None = None,
    ) -> str:
        return await self._call("render", list(messages), _listed(tools), dict(template_vars or {}))

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return await self._call("tokenize", text, add_special, parse_special)

    async def detokenize(self, tokens: Sequence[int]) -> list[bytes]:
        return await self._call("detokenize", list(tokens))

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        return await self._call("embed", [list(tokens) for tokens in inputs])

    async def rerank_tokens(self, query: str, documents: Sequence[str], max_tokens: int) -> list[list[int]]:
        return await self._call("rerank_tokens", query, list(documents), max_tokens)

    async def rerank(self, inputs: Sequence[Sequence[int]]) -> list[float]:
        return await self._call("rerank", [list(tokens) for tokens in inputs])

    async def compile_grammar(self, grammar: str) -> None:
        await self._call("compile", grammar)

    async def tokenize_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_vars: Mapping[str, Any] | None = None,
        images: Sequence[RGBImage] = (),
        image_marker: str = "",
    ) -> list[int]:
        return await self._call(
            "tokenize_chat", list(messages), _listed(tools), dict(template_vars or {}), tuple(images), image_marker
        )

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        # Admission is decided here, before any byte is streamed: `parallel` running plus `max_queue` waiting.
        # Batch requests take only a free sequence and yield it when interactive ones wait, so they never count
        # against an interactive request's admission.
        if not self._alive:
            raise self._failure()
        if request.priority == "batch":
            self._batch_admitted += 1  # its room was checked for all its choices just before (check_batch_room)
        else:
            Admission.of(self._spec).check(self._admitted - self._batch_admitted)
        self._admitted += 1
        return _RemoteStream(self, request)

    def check_batch_room(self, sequences: int = 1) -> None:
        """Raise NoRoomForBatch unless a batch request of `sequences` choices may start now: its sequences are
        free, and while interactive requests are in flight, batch requests keep to
        BATCH_SEQUENCES_BESIDE_INTERACTIVE sequences beside them. A request with more choices than batch work
        may ever hold at once starts when all of that share is free (its other choices wait in the scheduler,
        behind interactive requests), so it never waits for room that cannot come."""
        if not self._alive:
            raise self._failure()
        admission = Admission.of(self._spec)
        interactive = (
            self._admitted > self._batch_admitted or time.monotonic() - self._interactive_at < INTERACTIVE_GRACE_S
        )
        room = admission.batch_room(self._admitted, self._batch_admitted, interactive)
        if room < min(sequences, admission.batch_share(interactive)):
            raise NoRoomForBatch(self.room_freed)

    async def room_freed(self) -> None:
        """Return when the next admitted request is released (or the worker is gone: `generate` then says so)."""
        if self._alive:
            await self._room.wait()

    def close(self) -> None:
        self._closing = True
        self._watchdog.stop()
        if self._process.is_alive():
            self._outbox.put(("shutdown",))
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._room.notify()
        self._outbox.put(None)
        self._writer.join(5)  # a writer blocked on a dead worker's pipe has failed by now
        self._conn.close()

    async def _call(self, kind: str, *args: Any) -> Any:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._register(request_id, future)
        try:
            self._send((kind, request_id, *args))
            async with asyncio.timeout(self._deadlines.call_timeout_s):
                return await future
        except TimeoutError:
            self._cancel_call(request_id)
            seconds = self._deadlines.call_timeout_s
            logger.error("worker for %s did not answer a %s call within %g s", self._spec.name, kind, seconds)
            raise ModelUnavailableError(
                f"The model `{self._spec.name}` did not answer within {seconds:g} s; retry shortly.", retry_after=1
            ) from None
        except asyncio.CancelledError:  # the client went away: the worker stops working on it too
            self._cancel_call(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)

    def _cancel_call(self, request_id: int) -> None:
        if self._alive and request_id in self._pending:
            self._outbox.put(("cancel", request_id))

    def _register(self, request_id: int, waiter: asyncio.Future[Any] | asyncio.Queue[Any]) -> None:
        if not self._alive:
            raise self._failure()
        self._loop = asyncio.get_running_loop()
        self._pending[request_id] = waiter

    def _send(self, message: tuple[Any, ...]) -> None:
        if not self._alive:
            raise self._failure()
        self._outbox.put(message)

    def _write(self) -> None:
        """Writer thread: a worker that stops reading blocks this thread only, until the watchdog kills it."""
        while (message := self._outbox.get()) is not None:
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the worker is gone (or the pipe closed): the reader sees it too
                return
            except Exception:
                logger.exception("could not send a message to the worker for %s", self._spec.name)

    def _read(self) -> None:
        """Reader thread: hand each message to the event loop; a closed pipe means the worker is gone."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "pong":
                self._watchdog.answered(*message[1:])
            elif message[0] == "deltas" and self._loop is not None:
                self._loop.call_soon_threadsafe(self._dispatch_deltas, message[1])
            elif self._loop is not None:
                self._loop.call_soon_threadsafe(self._dispatch, message)
        self._watchdog.stop()
        self._outbox.put(None)
        self._exited()

    def _exited(self) -> None:
        """The worker is gone (or killed): fail its requests on the event loop, or just mark the engine dead."""
        loop = self._loop
        if self._closing or loop is None or loop.is_closed():
            self._alive = False
            self._room.notify()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._on_exit)
            return
        self._alive = False

    def _on_hung(self, reason: str) -> None:
        """Watchdog thread: kill a worker that stopped answering; its requests get 503 model_unavailable."""
        if self._closing or not self._alive:
            return
        self._hung = True
        logger.error("worker for %s (pid %s) is hung (%s): killing it", self._spec.name, self.pid, reason)
        self._process.kill()
        self._process.join(5)
        self._exited()  # at once, even if something else still holds the worker's end of the pipe

    def _dispatch_deltas(self, deltas: list[tuple[int, Any]]) -> None:
        for request_id, delta in deltas:
            self._dispatch(("delta", request_id, delta))

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind, request_id = message[0], message[1]
        waiter = self._pending.get(request_id)
        if waiter is None:
            return
        value = _rebuilt(message[2]) if kind == "error" else message[2]
        if isinstance(waiter, asyncio.Queue):
            waiter.put_nowait(value)
        elif not waiter.done():
            if isinstance(value, BaseException):
                waiter.set_exception(value)
            else:
                waiter.set_result(value)

    def _on_exit(self) -> None:
        if not self._alive:
            return
        self._alive = False
        self._room.notify()
        if self._closing:
            return
        self._process.join(1)
        if not self._hung:
            logger.error("worker for %s died (exit code %s)", self._spec.name, self._process.exitcode)
        for waiter in list(self._pending.values()):
            if isinstance(waiter, asyncio.Queue):
                waiter.put_nowait(self._failure())
            elif not waiter.done():
                waiter.set_exception(self._failure())

    def _failure(self) -> APIError:
        """What a request gets once the worker is gone: killed as hung (503 model_unavailable) or crashed."""
        if self._hung:
            return ModelUnavailableError(
                f"The model `{self._spec.name}` stopped answering and is being restarted; retry shortly.",
                retry_after=1,
            )
        return ModelCrashedError(self._spec.name)

    def submit(self, request: GenerationRequest, queue: asyncio.Queue[Any]) -> int:
        """Send an admitted request to the worker; its deltas will arrive on `queue`. Returns its id."""
        request_id = next(self._ids)
        try:
            self._register(request_id, queue)
            self._send(("generate", request_id, request))
        except APIError:
            self.release(request_id, cancel=False, batch=request.priority == "batch")
            raise
        return request_id

    def release(self, request_id: int | None, *, cancel: bool, batch: bool = False) -> None:
        """A request admitted by `generate` is over: give back its admission (a batch one's in its own count too),
        wake batch requests waiting for room, and cancel it in the worker."""
        self._admitted -= 1
        if batch:
            self._batch_admitted -= 1
        else:
            self._interactive_at = time.monotonic()
        self._room.notify()
        if request_id is not None:
            self._pending.pop(request_id, None)
            if cancel and self._alive:
                self._send(("cancel", request_id))


class _RemoteStream(DeltaStream):
    """Deltas of one request. It is sent to the worker on first use, so a stream that is dropped unstarted (the
    client left before the response began) costs nothing; closing it early cancels the request in the worker."""

    buffer_limit = MAX_BUFFERED_DELTAS

    def __init__(self, engine: ProcessEngine, request: GenerationRequest) -> None:
        # A weak reference: a stream dropped unstarted must be collectable at once (its __del__ gives back its
        # admission), not held in a cycle until the garbage collector runs.
        fell_behind = weakref.WeakMethod(self._fell_behind)
        super().__init__(DeltaBuffer(lambda: (method := fell_behind()) and method(), self.buffer_limit))
        self._engine = engine
        self._request = request
        self._id: int | None = None

    def _begin(self) -> None:
        if self._id is None:
            try:
                self._id = self._engine.submit(self._request, self._queue)
            except APIError:
                self._ended = self._released = True  # submit gave the admission back
                raise

    def _release(self, *, cancel: bool) -> None:
        self._engine.release(self._id, cancel=cancel, batch=self._batch)

    @property
    def _batch(self) -> bool:
        return self._request.priority == "batch"

    def _fell_behind(self) -> None:
        """The consumer is `buffer_limit` deltas behind (a client not reading): free the model now, not when (if
        ever) the consumer reads on; it will read the SlowClientError left in the buffer."""
        logger.warning("a stream fell %d deltas behind its client: request cancelled", self.buffer_limit)
        with contextlib.suppress(APIError):  # the worker is gone: nothing left to cancel
            self._give_back(cancel=True)

    def __del__(self) -> None:
        if not self._released and self._id is None:  # dropped unstarted: only its admission is given back
            self._released = True
            self._engine.release(None, cancel=False, batch=self._batch)


def _listed(tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    return None if tools is None else list(tools)
