"""Grammar builds on a thread of their own: one build per text however many wait on it, the worker's shared thread
pool free meanwhile, builds past their budget refused at once (and their texts remembered), and a running build's
age reported. llama.cpp's parser is replaced by a fake that builds when the test says so."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

from server.engine.grammar_cache import GrammarCache
from server.errors import GrammarTooComplexError, InvalidRequestError, ModelUnavailableError

WAIT_S = 10.0  # generous: only ever waited on until an event the test sets


class FakeParser:
    """llama.cpp's grammar parser, as slow as the test wants: each text's build waits for its release."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.started = threading.Semaphore(0)
        self.release: dict[bytes, threading.Event] = {}
        self.threads: set[str] = set()
        self.freed: list[object] = []

    def init(self, text: bytes) -> object:
        self.calls.append(text)
        self.threads.add(threading.current_thread().name)
        self.started.release()
        self.release.setdefault(text, threading.Event()).wait(WAIT_S)
        return None if text.startswith(b"refused") else ("sampler", text)

    def let(self, text: str) -> None:
        self.release.setdefault(text.encode(), threading.Event()).set()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parser() -> Iterator[FakeParser]:
    parser = FakeParser()
    yield parser
    for event in parser.release.values():
        event.set()


def cache_of(parser: FakeParser, clock: Clock | None = None, budget_s: float = 10.0) -> GrammarCache:
    return GrammarCache(
        None,
        budget_s=budget_s,
        init=parser.init,
        clone=lambda prototype: ("clone", prototype),
        free=parser.freed.append,
        clock=clock or Clock(),
    )


def test_requests_for_the_same_text_share_one_build_and_then_the_cache(parser):
    cache = cache_of(parser)

    async def scenario() -> None:
        waiting = [asyncio.create_task(cache.compile("root ::= x")) for _ in range(5)]
        assert await asyncio.to_thread(parser.started.acquire, timeout=WAIT_S)
        parser.let("root ::= x")
        await asyncio.gather(*waiting)
        await cache.compile("root ::= x")

    asyncio.run(scenario())
    assert parser.calls == [b"root ::= x"]
    assert cache.instance("root ::= x") == ("clone", ("sampler", b"root ::= x"))
    assert parser.threads == {"grammar-build_0"}
    cache.close()


def test_a_slow_build_leaves_the_shared_thread_pool_free(parser):
    cache = cache_of(parser)

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        builds = [asyncio.create_task(cache.compile(f"root ::= x{i}")) for i in range(3)]
        assert await asyncio.wait_for(asyncio.to_thread(parser.started.acquire), WAIT_S)
        answer = await asyncio.wait_for(asyncio.to_thread(lambda: 42), WAIT_S)  # not queued behind the builds
        for i in range(3):
            parser.let(f"root ::= x{i}")
        await asyncio.gather(*builds)
        return answer

    assert asyncio.run(scenario()) == 42
    cache.close()


def test_a_build_past_its_budget_holds_back_the_others_and_is_refused_from_then_on(parser):
    clock = Clock()
    cache = cache_of(parser, clock, budget_s=10.0)
    slow = cache.build("root ::= slow")
    assert parser.started.acquire(timeout=WAIT_S)
    clock.now = 9.0
    assert cache.building_s() == 9.0
    queued = cache.build("root ::= other")  # within the budget: queued behind it
    clock.now = 10.5
    with pytest.raises(ModelUnavailableError) as busy:
        cache.build("root ::= third")
    assert busy.value.status_code == 503 and busy.value.retry_after
    with pytest.raises(GrammarTooComplexError):
        cache.build("root ::= slow")  # its own text, still building
    parser.let("root ::= slow")
    with pytest.raises(GrammarTooComplexError):
        slow.result(WAIT_S)
    assert parser.freed == [("sampler", b"root ::= slow")]  # built too late: not kept
    parser.let("root ::= other")
    assert queued.result(WAIT_S) is None and cache.building_s() == 0.0
    with pytest.raises(GrammarTooComplexError) as again:
        cache.build("root ::= slow")  # remembered: refused at once, without a build
    assert again.value.status_code == 400 and "longer than 10 s" in again.value.message
    assert parser.calls.count(b"root ::= slow") == 1
    cache.close()


def test_a_grammar_llama_cpp_refuses_is_a_400_and_leaves_nothing_behind(parser):
    cache = cache_of(parser)
    parser.let("refused ::= x")
    with pytest.raises(InvalidRequestError):
        cache.build("refused ::= x").result(WAIT_S)
    assert cache.building_s() == 0.0 and parser.freed == []
    cache.close()


def test_a_waiter_that_leaves_does_not_cancel_the_build_for_the_others(parser):
    cache = cache_of(parser)

    async def scenario() -> None:
        first = asyncio.create_task(cache.compile("root ::= x"))
        second = asyncio.create_task(cache.compile("root ::= x"))
        assert await asyncio.to_thread(parser.started.acquire, timeout=WAIT_S)
        first.cancel()
        parser.let("root ::= x")
        await second
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(scenario())
    assert cache.instance("root ::= x")[0] == "clone"
    cache.close()
    assert parser.freed == [("sampler", b"root ::= x")]
