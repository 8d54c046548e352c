"""The worker process: one loaded model, served to the HTTP process over a pipe.

Runs in a child process started by `ProcessEngine`. Everything that touches llama.cpp happens here, so a crash in
native code (segfault, abort, OOM kill) ends this process only. Messages are tuples:

    parent -> worker: ("render", id, messages, tools, template_vars) ("tokenize", id, text, add_special, parse_special)
                      ("detokenize", id, tokens) ("counters", id) ("embed", id, inputs)
                      ("compile", id, grammar)
                      ("tokenize_chat", id, messages, tools, template_vars, images, image_marker)
                      ("rerank_tokens", id, query, documents, max_tokens) ("rerank", id, inputs)
                      ("generate", id, request) ("cancel", id) ("ping",) ("shutdown",)
    worker -> parent: ("ready", info) ("failed", message) ("result", id, value) ("deltas", [(id, delta), ...])
                      ("error", id, WireError) ("pong", seconds the engine has been stuck in one step, 0 if idle,
                      seconds its running grammar build has taken, 0 if none)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from server.engine.bounded_stderr import bound_stderr
from server.engine.delta_outlet import DeltaOutlet, DeltaSink, Forwarded
from server.engine.prompt_store import PromptCacheConfig
from server.errors import APIError, InternalError

logger = logging.getLogger(__name__)
UNBOUNDED_QUEUE = 1_000_000


@dataclass(frozen=True)
class WireError:
    """An APIError as it crosses the pipe."""

    status_code: int
    error_type: str
    code: str | None
    param: str | None
    message: str

    @classmethod
    def of(cls, error: APIError) -> WireError:
        return cls(error.status_code, error.error_type, error.code, error.param, error.message)


def serve(conn: Connection, spec_json: str, log_level: int, prompt_cache: PromptCacheConfig | None = None) -> None:
    """Process entry point: load the model, report, then answer requests until shutdown or a closed pipe.

    `prompt_cache`: where a generative model restores its saved prompt prefixes from, and saves them to at
    shutdown (server/engine/prompt_cache.py); None: not at all."""
    bound_stderr()  # before llama.cpp can write anything: no line of its output floods the log
    # The HTTP process owns this one's life: a Ctrl-C in the terminal reaches the whole process group, and must
    # not end it before the server tells it to shut down (it saves its prompt cache then); a closed pipe ends it
    # too. SIGTERM keeps its default: multiprocessing's exit handler stops leftover workers with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    from server.config import ModelSpec
    from server.engine.embedding import EmbeddingEngine  # llama.cpp is imported in worker processes only
    from server.engine.llama import LlamaCppEngine
    from server.engine.rerank import RerankEngine

    spec = ModelSpec.model_validate_json(spec_json)
    # Admission (429) is decided in the HTTP process before a request is sent here; the worker queues all it gets,
    # so a request is never refused after its response has started.
    spec = spec.model_copy(update={"max_queue": UNBOUNDED_QUEUE})
    before = own_resident_bytes()  # the process itself, for the memory estimate of the next load
    try:
        if spec.reranker or spec.embedding:
            engine = (RerankEngine if spec.reranker else EmbeddingEngine).load(spec)
        else:
            engine = LlamaCppEngine.load(spec, prompt_cache)
    except APIError as exc:
        conn.send(("failed", exc.message))
        return
    except Exception:
        logger.exception("model %s failed to load", spec.name)
        conn.send(("failed", f"The model `{spec.name}` failed to load; see the server log."))
        return
    conn.send(("ready", dataclasses.replace(engine.info, process_bytes=before)))
    try:
        asyncio.run(_Worker(conn, engine).run())
    finally:
        engine.close()


def wire_error(exc: BaseException) -> WireError:
    """A request's failure as it crosses the pipe; anything but an APIError is logged here and sent as a 500."""
    if not isinstance(exc, APIError):
        logger.error("request failed in the worker", exc_info=exc)
        exc = InternalError()
    return WireError.of(exc)


def own_resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:")), None)
    except (OSError, ValueError):
        return None


class _Worker:
    def __init__(self, conn: Connection, engine: Any) -> None:
        self._conn = conn
        self._engine = engine
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._outlet = DeltaOutlet(self._write)
        # llama.cpp's engine writes a step's deltas to the pipe from its scheduler thread (server/engine/
        # delta_outlet.py); another engine's deltas are sent from this loop, one message per loop turn.
        direct = getattr(engine, "send_deltas_through", None)
        self._direct = direct is not None
        if direct is not None:
            direct(self._outlet)
        self._flush_due = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        threading.Thread(target=self._read, args=(loop, inbox), name="worker-inbox", daemon=True).start()
        while True:
            message = await inbox.get()
            kind = message[0]
            if kind == "shutdown":
                break
            if kind == "ping":  # answered on this loop, so an answer proves the loop runs
                self._send(("pong", self._stalled_s(), self._building_s()))
            elif kind == "cancel":
                task = self._tasks.get(message[1])
                if task is not None:
                    task.cancel()
            elif kind == "generate":
                self._tasks[message[1]] = asyncio.create_task(self._generate(message[1], message[2]))
            else:
                self._tasks[message[1]] = asyncio.create_task(self._answer(kind, message[1], message[2:]))
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _stalled_s(self) -> float:
        return self._engine.stalled_s()

    def _building_s(self) -> float:
        building = getattr(self._engine, "building_s", None)  # engines that build grammars (llama.cpp's)
        return 0.0 if building is None else building()

    def _read(self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[tuple[Any, ...]]) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):  # the HTTP process is gone: stop
                message = ("shutdown",)
            loop.call_soon_threadsafe(inbox.put_nowait, message)
            if message[0] == "shutdown":
                return

    async def _answer(self, kind: str, request_id: int, args: tuple[Any, ...]) -> None:
        try:
            if kind == "render":
                value: Any = await self._engine.render_chat(*args)
            elif kind == "tokenize":
                text, add_special, parse_special = args
                value = await self._engine.tokenize(text, add_special=add_special, parse_special=parse_special)
            elif kind == "detokenize":
                value = await self._engine.detokenize(*args)
            elif kind == "counters":
                value = await self._engine.counters()
            elif kind == "embed":
                value = await self._engine.embed(*args)
            elif kind == "compile":
                value = await self._engine.compile_grammar(*args)
            elif kind == "tokenize_chat":
                value = await self._engine.tokenize_chat(*args)
            elif kind == "rerank_tokens":
                value = await self._engine.rerank_tokens(*args)
            elif kind == "rerank":
                value = await self._engine.rerank(*args)
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as exc:
            self._send_error(request_id, exc)
            return
        finally:
            self._tasks.pop(request_id, None)
        self._send(("result", request_id, value))

    async def _generate(self, request_id: int, request: Any) -> None:
        try:
            if self._direct:  # sent from the scheduler's thread, in order; the stream shows only its end
                stream = self._engine.generate(request, sink=self._sink(request_id))
            else:
                stream = self._engine.generate(request)
            async with contextlib.aclosing(stream):
                async for delta in stream:
                    if not self._direct:
                        self._queue_delta(request_id, delta)
        except asyncio.CancelledError:
            pass  # the client went away; closing the stream freed its sequence
        except Forwarded:
            pass  # its error went out through the outlet, in order with its deltas
        except Exception as exc:
            self._send_error(request_id, exc)
        finally:
            self._tasks.pop(request_id, None)

    def _sink(self, request_id: int) -> DeltaSink:
        """Where the scheduler's thread puts one request's deltas and its failure."""

        def put(item: Any) -> None:
            if isinstance(item, BaseException):
                self._outlet.put_message(("error", request_id, wire_error(item)))
            else:
                self._outlet.put(request_id, item)

        return put

    def _send_error(self, request_id: int, exc: BaseException) -> None:
        self._send(("error", request_id, wire_error(exc)))

    def _queue_delta(self, request_id: int, delta: Any) -> None:
        self._outlet.put(request_id, delta)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_deltas)

    def _flush_deltas(self) -> None:
        self._flush_due = False
        self._outlet.flush()

    def _send(self, message: tuple[Any, ...]) -> None:
        self._outlet.send(message)  # a request's error or result never overtakes its deltas

    def _write(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # the HTTP process is gone; the inbox thread stops us
            self._conn.send(message)
