"""Model lifecycle in the registry: memory budget and LRU eviction, busy models, keep_alive, reload, not pulled."""

import asyncio

import pytest

from server.config import HubSource, ModelSpec, PathSource
from server.errors import ModelNotFoundError, ModelNotPulledError, ModelUnavailableError
from server.registry import ModelRegistry
from server.residency import Budget
from tests.conftest import FakeLoader

MB = 1024 * 1024


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
