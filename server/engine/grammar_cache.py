"""Compiled output grammars, built one at a time on a thread of their own.

A grammar is parsed by llama.cpp when a request asks for it, before the request is admitted (a grammar llama.cpp
rejects is a 400, never an error event), and kept as a prototype that each request clones.

llama.cpp's build cannot be stopped once started, and an ambiguous grammar can keep it busy for hours (it opens a
parse stack per way the root can begin). So builds run on this cache's own thread, never in the worker's shared
thread pool (whose other work, embeddings and grammar clones, would starve behind them); requests for a text that
is being built share its build; while a build runs past its budget, other builds are refused at once (503) and
its own text with a 400; a text whose build ran past the budget is remembered and refused at once after. How long
the running build has taken is in the worker's pings, so the watchdog recycles a worker whose build never ends.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import llama_cpp

from server.engine.base import GRAMMAR_BUILD_BUDGET_S
from server.errors import GrammarTooComplexError, InvalidRequestError, ModelUnavailableError

logger = logging.getLogger(__name__)

CACHE_SIZE = 32
TOO_SLOW_SIZE = 256  # texts (their hashes) whose build ran past the budget, refused at once
BUSY_RETRY_AFTER_S = 5


class GrammarCache:
    """Compiled grammars by the hash of their text, least recently used dropped first. Thread-safe."""

    def __init__(
        self,
        vocab: llama_cpp.llama_vocab_p | None,
        size: int = CACHE_SIZE,
        *,
        budget_s: float = GRAMMAR_BUILD_BUDGET_S,
        init: Callable[[bytes], Any] | None = None,
        clone: Callable[[Any], Any] = llama_cpp.llama_sampler_clone,
        free: Callable[[Any], None] = llama_cpp.llama_sampler_free,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._init = init or (lambda text: llama_cpp.llama_sampler_init_grammar(vocab, text, b"root"))
        self._clone = clone
        self._free = free
        self._size = size
        self._budget = budget_s
        self._clock = clock
        self._lock = threading.Lock()
        self._compiled: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
        self._building: dict[bytes, concurrent.futures.Future[None]] = {}
        self._running: tuple[bytes, float] | None = None  # the build on the thread now, and when it began
        self._too_slow: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._closed = False
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-build")

    def building_s(self) -> float:
        """How long the running build has taken so far (0 when none runs)."""
        running = self._running
        return 0.0 if running is None else self._clock() - running[1]

    def build(self, grammar: str) -> concurrent.futures.Future[None]:
        """The build of `grammar`: done at once when it is cached, the build under way of the same text, or a new
        one queued on the build thread. Raises at once for a text known to be too slow to build, and while a build
        runs past its budget."""
        key = _key(grammar)
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                done: concurrent.futures.Future[None] = concurrent.futures.Future()
                done.set_result(None)
                return done
            if key in self._too_slow:
                raise self._too_slow_error()
            running = self._running
            if running is not None and self._clock() - running[1] > self._budget:
                if running[0] == key:
                    raise self._too_slow_error()
                raise ModelUnavailableError(
                    "This model's grammar builder is held by another output grammar that has run past its "
                    f"{self._budget:g} s budget; retry shortly.",
                    retry_after=BUSY_RETRY_AFTER_S,
                )
            if key not in self._building:
                self._building[key] = self._thread.submit(self._build, key, grammar)
            return self._building[key]

    async def compile(self, grammar: str) -> None:
        """Build the grammar into the cache and wait for it; the caller's own deadline bounds the wait (a caller
        that stops waiting leaves the build to finish, for the others that wait on it and for the cache)."""
        waited = asyncio.wrap_future(self.build(grammar))
        try:
            await asyncio.shield(waited)
        except asyncio.CancelledError:
            waited.add_done_callback(_retrieve)
            raise

    def instance(self, grammar: str) -> Any:
        """A fresh grammar sampler for one request (the caller frees it), building the grammar again if it left
        the cache meanwhile (blocking: call it off the event loop and the scheduler thread)."""
        key = _key(grammar)
        while True:
            with self._lock:
                prototype = self._compiled.get(key)
                if prototype is not None:
                    self._compiled.move_to_end(key)
                    return self._clone(prototype)
            try:
                self.build(grammar).result(timeout=self._budget)
            except TimeoutError:
                raise self._too_slow_error() from None

    def close(self) -> None:
        """Free every compiled grammar; a build still running is freed when it ends."""
        self._thread.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._closed = True
            for sampler in self._compiled.values():
                self._free(sampler)
            self._compiled.clear()

    def _build(self, key: bytes, grammar: str) -> None:
        """On the build thread: parse the grammar, then cache it, or remember that it took too long."""
        started = self._clock()
        self._running = (key, started)
        sampler = None
        try:
            sampler = self._init(grammar.encode())
        finally:
            taken = self._clock() - started
            with self._lock:
                self._running = None
                self._building.pop(key, None)
                keep = bool(sampler) and taken <= self._budget and not self._closed
                if keep:
                    self._compiled[key] = sampler
                    while len(self._compiled) > self._size:
                        self._free(self._compiled.popitem(last=False)[1])
                elif taken > self._budget:
                    self._too_slow[key] = None
                    while len(self._too_slow) > TOO_SLOW_SIZE:
                        self._too_slow.popitem(last=False)
        if not sampler:
            logger.warning("llama.cpp refused an output grammar of %d characters", len(grammar))
            raise InvalidRequestError(
                "The output schema could not be turned into a grammar llama.cpp accepts; simplify it.",
                param="response_format",
            )
        if not keep:
            self._free(sampler)
            if taken > self._budget:
                logger.warning(
                    "an output grammar of %d characters took %.1f s to build (budget %g s): refused from now on",
                    len(grammar),
                    taken,
                    self._budget,
                )
                raise self._too_slow_error()

    def _too_slow_error(self) -> GrammarTooComplexError:
        return GrammarTooComplexError(
            f"The output grammar takes llama.cpp longer than {self._budget:g} s to build (it can begin in too many "
            "ways); simplify it."
        )


def _key(grammar: str) -> bytes:
    return hashlib.sha256(grammar.encode()).digest()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a shielded build's outcome as seen: nobody waits for it any more."""
    if not future.cancelled():
        future.exception()
