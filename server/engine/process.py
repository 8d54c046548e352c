"""`ProcessEngine`: the Engine interface, served by a model worker in its own process.

The HTTP process never runs llama.cpp. If the worker dies, the requests it was serving fail with a 503 and the
engine reports itself dead, so the registry starts a fresh worker for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from server.config import ModelSpec
from server.engine.base import EngineCounters, EngineInfo, GenerationDelta, GenerationRequest
from server.engine.worker import WireError, serve
from server.errors import APIError, ModelCrashedError, ModelUnavailableError, OverloadedError

logger = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 600


class RemoteError(APIError):
    """An APIError raised in the worker, rebuilt with the same status and body."""

    def __init__(self, wire: WireError) -> None:
        super().__init__(wire.message, param=wire.param, code=wire.code)
        self.status_code = wire.status_code
        self.error_type = wire.error_type


class ProcessEngine:
    def __init__(self, spec: ModelSpec, process: Any, conn: Any, info: EngineInfo) -> None:
        self._spec = spec
        self._process = process
        self._conn = conn
        self._info = info
        self._alive = True
        self._closing = False
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[Any] | asyncio.Queue[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._admitted = 0
        self._reader = threading.Thread(target=self._read, name=f"worker-{spec.name}", daemon=True)
        self._reader.start()

    @classmethod
    def load(cls, spec: ModelSpec) -> ProcessEngine:
        """Start a worker and wait until its model is loaded (blocking: call it off the event loop)."""
        context = multiprocessing.get_context("spawn")
        conn, child_conn = context.Pipe()
        process = context.Process(
            target=serve,
            args=(child_conn, spec.model_dump_json(), logging.getLogger().getEffectiveLevel()),
            name=f"slm-worker-{spec.name}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        unavailable = f"The model `{spec.name}` failed to load; see the server log."
        try:
            if not conn.poll(LOAD_TIMEOUT_S):
                raise ModelUnavailableError(unavailable)
            message = conn.recv()
        except (EOFError, OSError):
            process.join(5)
            logger.error("worker for %s exited while loading (exit code %s)", spec.name, process.exitcode)
            raise ModelUnavailableError(unavailable) from None
        except ModelUnavailableError:
            process.kill()
            raise
        if message[0] != "ready":
            process.join(5)
            raise ModelUnavailableError(message[1])
        logger.info("worker for %s started (pid %d)", spec.name, process.pid)
        return cls(spec, process, conn, message[1])

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

    async def counters(self) -> EngineCounters:
        return await self._call("counters")

    async def render_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> str:
        return await self._call("render", list(messages), None if tools is None else list(tools))

    async def tokenize(self, text: str) -> list[int]:
        return await self._call("tokenize", text)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        return await self._call("embed", [list(tokens) for tokens in inputs])

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        # Admission is decided here, before any byte is streamed: `parallel` running plus `max_queue` waiting.
        if not self._alive:
            raise self._crashed()
        if self._admitted >= self._spec.parallel + self._spec.max_queue:
            raise OverloadedError("The model is overloaded; retry shortly.", retry_after=1)
        self._admitted += 1
        return _RemoteStream(self, request)

    def close(self) -> None:
        self._closing = True
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("shutdown",))
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()

    async def _call(self, kind: str, *args: Any) -> Any:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._register(request_id, future)
        try:
            self._send((kind, request_id, *args))
            return await future
        finally:
            self._pending.pop(request_id, None)

    def _register(self, request_id: int, waiter: asyncio.Future[Any] | asyncio.Queue[Any]) -> None:
        if not self._alive:
            raise self._crashed()
        self._loop = asyncio.get_running_loop()
        self._pending[request_id] = waiter

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._conn.send(message)
        except OSError:
            self._on_exit()
            raise self._crashed() from None

    def _read(self) -> None:
        """Reader thread: hand each message to the event loop; a closed pipe means the worker is gone."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._dispatch, message)
        if self._closing or self._loop is None or self._loop.is_closed():
            self._alive = False
        else:
            self._loop.call_soon_threadsafe(self._on_exit)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind, request_id = message[0], message[1]
        waiter = self._pending.get(request_id)
        if waiter is None:
            return
        value = RemoteError(message[2]) if kind == "error" else message[2]
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
        if self._closing:
            return
        self._process.join(1)
        logger.error("worker for %s died (exit code %s)", self._spec.name, self._process.exitcode)
        for waiter in list(self._pending.values()):
            if isinstance(waiter, asyncio.Queue):
                waiter.put_nowait(self._crashed())
            elif not waiter.done():
                waiter.set_exception(self._crashed())

    def _crashed(self) -> ModelCrashedError:
        return ModelCrashedError(self._spec.name)

    def submit(self, request: GenerationRequest, queue: asyncio.Queue[Any]) -> int:
        """Send an admitted request to the worker; its deltas will arrive on `queue`. Returns its id."""
        request_id = next(self._ids)
        try:
            self._register(request_id, queue)
            self._send(("generate", request_id, request))
        except APIError:
            self.release(request_id, cancel=False)
            raise
        return request_id

    def release(self, request_id: int | None, *, cancel: bool) -> None:
        """A request admitted by `generate` is over: give back its admission, and cancel it in the worker."""
        self._admitted -= 1
        if request_id is not None:
            self._pending.pop(request_id, None)
            if cancel and self._alive:
                self._send(("cancel", request_id))


class _RemoteStream:
    """Deltas of one request. It is sent to the worker on first use, so a stream that is dropped unstarted (the
    client left before the response began) costs nothing; closing it early cancels the request in the worker."""

    def __init__(self, engine: ProcessEngine, request: GenerationRequest) -> None:
        self._engine = engine
        self._request = request
        self._id: int | None = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._done = False

    def __aiter__(self) -> _RemoteStream:
        return self

    async def __anext__(self) -> GenerationDelta:
        if self._done:
            raise StopAsyncIteration
        if self._id is None:
            try:
                self._id = self._engine.submit(self._request, self._queue)
            except APIError:
                self._done = True  # submit gave the admission back
                raise
        try:
            item = await self._queue.get()
        except BaseException:
            await self.aclose()
            raise
        if isinstance(item, BaseException):
            self._finish(cancel=False)
            raise item
        if item.finish_reason is not None:
            self._finish(cancel=False)
        return item

    async def aclose(self) -> None:
        self._finish(cancel=True)

    def _finish(self, *, cancel: bool) -> None:
        if not self._done:
            self._done = True
            self._engine.release(self._id, cancel=cancel)

    def __del__(self) -> None:
        if not self._done and self._id is None:  # dropped unstarted: only its admission is given back
            self._done = True
            self._engine.release(None, cancel=False)
