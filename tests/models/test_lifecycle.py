"""Model lifecycle in the registry: memory budget and LRU eviction, busy models, keep_alive, reload, not pulled."""

import asyncio
import threading

import pytest

from server.config import HubSource, ModelSpec, PathSource
from server.errors import ModelNotFoundError, ModelNotPulledError, ModelUnavailableError, ShuttingDownError
from server.models.registry import ModelRegistry
from server.models.residency import Budget
from tests.conftest import FakeLoader

MB = 1024 * 1024
WAIT_S = 30  # an upper bound for conditions that hold within milliseconds; reached only when a test fails


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sized_spec(tmp_path, name: str, size_mb: int, **fields) -> ModelSpec:
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(b"\0" * (size_mb * MB))
    return ModelSpec(name=name, source=PathSource(path=path), **fields)


def test_a_model_that_does_not_fit_evicts_the_least_recently_used_idle_one(tmp_path):
    specs = [sized_spec(tmp_path, name, 4) for name in ("a", "b", "c")]
    clock = Clock()
    loader = FakeLoader()
    registry = ModelRegistry(specs, loader, clock=clock, budget=Budget(memory_bytes=9 * MB, max_models=8))

    async def scenario():
        await registry.engine("a")
        clock.now += 1
        await registry.engine("b")
        clock.now += 1
        await registry.engine("a")  # a is now more recently used than b
        clock.now += 1
        await registry.engine("c")  # 12 MB would exceed 9 MB: b goes

    asyncio.run(scenario())
    assert sorted(registry.loaded()) == ["a", "c"]
    assert loader.engines["b"].closed and not loader.engines["a"].closed


def test_the_model_count_limit_evicts_too(tmp_path):
    specs = [sized_spec(tmp_path, name, 1) for name in ("a", "b")]
    registry = ModelRegistry(specs, FakeLoader(), budget=Budget(memory_bytes=100 * MB, max_models=1))

    async def scenario():
        await registry.engine("a")
        await registry.engine("b")

    asyncio.run(scenario())
    assert list(registry.loaded()) == ["b"]


def test_a_busy_model_is_never_evicted_and_the_load_gives_up_with_a_503(tmp_path):
    specs = [sized_spec(tmp_path, name, 4) for name in ("a", "b")]
    loader = FakeLoader()
    registry = ModelRegistry(specs, loader, budget=Budget(memory_bytes=6 * MB, max_models=8, wait_s=0.05))

    async def scenario():
        async with registry.use("a"):
            with pytest.raises(ModelUnavailableError, match="`b` cannot be loaded now") as info:
                await registry.engine("b")
            assert info.value.status_code == 503
        assert "a" in registry.loaded() and not loader.engines["a"].closed
        await registry.engine("b")  # once a is idle, b evicts it

    asyncio.run(scenario())
    assert list(registry.loaded()) == ["b"]


def test_a_model_with_a_stream_in_flight_is_busy_after_its_request_returned(tmp_path):
    specs = [sized_spec(tmp_path, name, 4) for name in ("a", "b")]
    loader = FakeLoader()
    registry = ModelRegistry(specs, loader, budget=Budget(memory_bytes=6 * MB, max_models=8, wait_s=0.05))

    async def scenario():
        async with registry.use("a") as engine:
            engine.in_flight += 1  # what an admitted generation stream does
        with pytest.raises(ModelUnavailableError):
            await registry.engine("b")
        engine.in_flight -= 1
        await registry.engine("b")

    asyncio.run(scenario())
    assert list(registry.loaded()) == ["b"]


def test_a_load_waits_for_a_busy_model_to_finish(tmp_path):
    specs = [sized_spec(tmp_path, name, 4) for name in ("a", "b")]
    registry = ModelRegistry(specs, FakeLoader(), budget=Budget(memory_bytes=6 * MB, max_models=8, wait_s=30))

    async def scenario():
        holding = asyncio.Event()
        release = asyncio.Event()

        async def hold_a():
            async with registry.use("a"):
                holding.set()
                await release.wait()

        holder = asyncio.create_task(hold_a())
        await holding.wait()
        loading = asyncio.create_task(registry.engine("b"))
        await asyncio.sleep(0)  # let the load start waiting
        assert not loading.done()
        release.set()
        await asyncio.wait_for(loading, 10)
        await holder

    asyncio.run(scenario())
    assert list(registry.loaded()) == ["b"]


def test_a_model_larger_than_the_whole_budget_is_refused_at_once(tmp_path):
    registry = ModelRegistry([sized_spec(tmp_path, "big", 8)], FakeLoader(), budget=Budget(memory_bytes=4 * MB))
    with pytest.raises(ModelUnavailableError, match="more than the server's memory budget"):
        asyncio.run(registry.engine("big"))


def test_an_idle_model_unloads_after_its_keep_alive_and_loads_again_on_use(tmp_path):
    clock = Clock()
    loader = FakeLoader()
    specs = [sized_spec(tmp_path, "a", 1, keep_alive=60), sized_spec(tmp_path, "forever", 1, keep_alive=None)]
    registry = ModelRegistry(specs, loader, clock=clock)

    async def scenario():
        await registry.engine("a")
        await registry.engine("forever")
        clock.now += 59
        await registry.sweep()
        assert sorted(registry.loaded()) == ["a", "forever"]
        clock.now += 1
        await registry.sweep()
        assert list(registry.loaded()) == ["forever"]
        await registry.engine("a")

    asyncio.run(scenario())
    assert loader.loads == ["a", "forever", "a"]


def test_keep_alive_counts_from_the_end_of_the_last_stream(tmp_path):
    clock = Clock()
    registry = ModelRegistry([sized_spec(tmp_path, "a", 1, keep_alive=10)], FakeLoader(), clock=clock)

    async def scenario():
        engine = await registry.engine("a")
        engine.in_flight = 1
        clock.now += 100
        await registry.sweep()  # still streaming: stays, and idle time restarts
        engine.in_flight = 0
        clock.now += 9
        await registry.sweep()
        assert "a" in registry.loaded()
        clock.now += 1
        await registry.sweep()
        assert "a" not in registry.loaded()

    asyncio.run(scenario())


def test_reload_adds_new_entries_and_retires_removed_ones_once_idle(tmp_path):
    loader = FakeLoader()
    a, b = sized_spec(tmp_path, "a", 1), sized_spec(tmp_path, "b", 1)
    registry = ModelRegistry([a], loader)

    async def scenario():
        async with registry.use("a") as engine:
            registry.reload([b])
            assert registry.resolve("b").name == "b"
            with pytest.raises(ModelNotFoundError):
                registry.resolve("a")
            await registry.sweep()
            assert not engine.closed  # the running request keeps its engine
        await registry.sweep()
        assert engine.closed

    asyncio.run(scenario())


def test_reload_with_a_changed_entry_serves_new_requests_from_the_new_settings(tmp_path):
    loader = FakeLoader()
    old = sized_spec(tmp_path, "a", 1, n_ctx=256)
    registry = ModelRegistry([old], loader)

    async def scenario():
        first = await registry.engine("a")
        registry.reload([old.model_copy(update={"n_ctx": 512})])
        second = await registry.engine("a")
        assert second is not first and first.closed
        assert registry.resolve("a").n_ctx == 512

    asyncio.run(scenario())


def test_a_hugging_face_model_that_is_not_pulled_is_a_404_saying_how_to_pull_it():
    spec = ModelSpec(name="phi", source=HubSource(repo_id="org/repo", filename="m.gguf", revision="a" * 40))
    loader = FakeLoader()
    registry = ModelRegistry([spec], loader)
    assert not registry.available(spec)
    with pytest.raises(ModelNotPulledError, match="slm-server pull phi") as info:
        asyncio.run(registry.engine("phi"))
    assert info.value.status_code == 404 and info.value.code == "model_not_pulled"
    assert loader.loads == []


class BlockingLoader(FakeLoader):
    """Every load waits for `release`; `entered` is set once one has started. Keeps every engine it built."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.built: list = []

    def __call__(self, spec):
        self.entered.set()
        assert self.release.wait(WAIT_S)
        engine = super().__call__(spec)
        self.built.append(engine)
        return engine


async def started_loading(loader: BlockingLoader, registry: ModelRegistry, name: str) -> asyncio.Task:
    request = asyncio.ensure_future(registry.engine(name))
    await asyncio.to_thread(loader.entered.wait, WAIT_S)
    return request


def test_a_request_that_goes_away_while_its_model_loads_does_not_leak_the_worker(tmp_path):
    loader = BlockingLoader()
    registry = ModelRegistry([sized_spec(tmp_path, "a", 1)], loader)

    async def scenario():
        request = await started_loading(loader, registry, "a")
        request.cancel()  # the client disconnected
        with pytest.raises(asyncio.CancelledError):
            await request
        loader.release.set()
        return await registry.engine("a")  # the load went on: this request gets its engine

    engine = asyncio.run(scenario())
    assert loader.loads == ["a"] and loader.built == [engine]
    assert registry.loaded() == {"a": engine} and not engine.closed  # registered, so counted and closed later
    asyncio.run(registry.close())
    assert engine.closed


def test_a_load_in_progress_counts_in_the_memory_budget(tmp_path):
    loader = BlockingLoader()
    specs = [sized_spec(tmp_path, name, 4) for name in ("a", "b")]
    registry = ModelRegistry(specs, loader, budget=Budget(memory_bytes=6 * MB, max_models=8, wait_s=0.05))

    async def scenario():
        loading = await started_loading(loader, registry, "a")
        with pytest.raises(ModelUnavailableError, match="`b` cannot be loaded now"):
            await registry.engine("b")
        loader.release.set()
        await loading
        await registry.engine("b")  # a is loaded and idle now: b evicts it

    asyncio.run(scenario())
    assert loader.loads == ["a", "b"] and list(registry.loaded()) == ["b"]


def test_a_retired_engine_still_serving_counts_in_the_memory_budget(tmp_path):
    loader = FakeLoader()
    a, b = sized_spec(tmp_path, "a", 4), sized_spec(tmp_path, "b", 4)
    registry = ModelRegistry([a], loader, budget=Budget(memory_bytes=6 * MB, max_models=8, wait_s=0.05))

    async def scenario():
        async with registry.use("a") as engine:
            registry.reload([a.model_copy(update={"n_ctx": 512}), b])  # a's old engine retires, still busy
            with pytest.raises(ModelUnavailableError, match="`b` cannot be loaded now"):
                await registry.engine("b")
        await registry.engine("b")  # the request ended: the retired engine unloads, b fits
        return engine

    old = asyncio.run(scenario())
    assert old.closed and list(registry.loaded()) == ["b"]


class SlowClosingLoader(FakeLoader):
    """Engines whose close() waits for `release` (a worker saving its prompt cache); `closing` is set once one has
    started closing."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = threading.Event()
        self.release = threading.Event()
        self.closes: list[str] = []  # the models whose close has started, in order

    def __call__(self, spec):
        engine = super().__call__(spec)
        close = engine.close

        def slow_close() -> None:
            self.closes.append(spec.name)
            self.closing.set()
            assert self.release.wait(WAIT_S)
            close()

        engine.close = slow_close
        return engine


async def waiting_for_room_or_loaded(registry: ModelRegistry, loader: FakeLoader, name: str) -> None:
    """Until `name`'s load has either started (in the loader) or is waiting for memory."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while name not in loader.loads and registry._room_wanted == 0:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.001)


def test_a_load_waits_for_a_model_still_closing_instead_of_evicting_another(tmp_path):
    loader = SlowClosingLoader()
    specs = [sized_spec(tmp_path, "a", 4)] + [sized_spec(tmp_path, name, 2) for name in ("b", "c", "d")]
    clock = Clock()
    registry = ModelRegistry(
        specs, loader, clock=clock, budget=Budget(memory_bytes=6 * MB, max_models=8, wait_s=WAIT_S)
    )

    async def scenario():
        await registry.engine("a")
        clock.now += 1
        await registry.engine("b")
        loading_c = asyncio.ensure_future(registry.engine("c"))  # evicts a, the least recently used
        await asyncio.to_thread(loader.closing.wait, WAIT_S)
        loading_d = asyncio.ensure_future(registry.engine("d"))  # fits once a has closed: must not evict b
        await waiting_for_room_or_loaded(registry, loader, "d")
        assert loader.closes == ["a"]
        loader.release.set()
        await loading_c
        await loading_d

    asyncio.run(scenario())
    assert loader.closes == ["a"] and sorted(registry.loaded()) == ["b", "c", "d"]


@pytest.mark.parametrize("closer_cancelled", [False, True])
def test_an_engine_being_closed_counts_in_the_memory_budget_until_it_has_closed(tmp_path, closer_cancelled):
    loader = SlowClosingLoader()
    specs = [sized_spec(tmp_path, name, 4) for name in ("a", "b")]
    registry = ModelRegistry(specs, loader, budget=Budget(memory_bytes=6 * MB, max_models=8, wait_s=WAIT_S))

    async def scenario():
        await registry.engine("a")
        unloading = asyncio.ensure_future(registry.unload("a"))
        await asyncio.to_thread(loader.closing.wait, WAIT_S)
        if closer_cancelled:
            unloading.cancel()  # the sweeper at shutdown, a client gone: a's worker goes on closing
        loading_b = asyncio.ensure_future(registry.engine("b"))
        await waiting_for_room_or_loaded(registry, loader, "b")
        assert loader.loads == ["a"], "b loaded beside a worker still closing"
        loader.release.set()
        if not closer_cancelled:
            await unloading
        await loading_b

    asyncio.run(scenario())
    assert loader.loads == ["a", "b"] and loader.engines["a"].closed and list(registry.loaded()) == ["b"]


def test_a_load_that_finishes_after_a_reload_changed_its_entry_is_closed_and_the_new_one_served(tmp_path):
    loader = BlockingLoader()
    old = sized_spec(tmp_path, "a", 1, n_ctx=256)
    registry = ModelRegistry([old], loader)

    async def scenario():
        request = await started_loading(loader, registry, "a")
        registry.reload([old.model_copy(update={"n_ctx": 512})])
        loader.release.set()
        return await request

    engine = asyncio.run(scenario())
    stale, fresh = loader.built
    assert stale.closed and engine is fresh and not fresh.closed
    assert registry.loaded() == {"a": fresh} and registry.resolve("a").n_ctx == 512


def test_a_load_that_finishes_after_the_registry_closed_is_closed(tmp_path):
    loader = BlockingLoader()
    registry = ModelRegistry([sized_spec(tmp_path, "a", 1)], loader)

    async def scenario():
        request = await started_loading(loader, registry, "a")
        closing = asyncio.ensure_future(registry.close())  # runs before the load can finish: it is still blocked
        loader.release.set()
        await closing
        with pytest.raises(ShuttingDownError):
            await request

    asyncio.run(scenario())
    [engine] = loader.built
    assert engine.closed and registry.loaded() == {}
