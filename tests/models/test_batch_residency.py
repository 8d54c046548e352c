"""Batch work and model memory: a batch line loads its model only into memory interactive work leaves. It evicts
no model used in the last BATCH_EVICTS_AFTER_IDLE_S, and lets go of its model while an interactive load waits for
room."""

import asyncio

import pytest

from server.errors import ModelUnavailableError, NoRoomForBatch
from server.models.registry import BATCH_EVICTS_AFTER_IDLE_S, ModelRegistry
from server.models.residency import Budget
from tests.conftest import FakeLoader
from tests.models.test_lifecycle import MB, WAIT_S, Clock, sized_spec


def registry_of(tmp_path, clock: Clock, memory_mb: int, wait_s: float = 30) -> tuple[ModelRegistry, FakeLoader]:
    specs = [sized_spec(tmp_path, name, 4) for name in ("a", "b")]
    loader = FakeLoader()
    budget = Budget(memory_bytes=memory_mb * MB, max_models=8, wait_s=wait_s)
    return ModelRegistry(specs, loader, clock=clock, budget=budget), loader


async def batch_use(registry: ModelRegistry, name: str) -> None:
    async with registry.use(name, "batch"):
        pass


def test_a_batch_line_evicts_no_recently_used_model_but_one_idle_long_enough(tmp_path):
    clock = Clock()
    registry, loader = registry_of(tmp_path, clock, memory_mb=6)  # one 4 MB model at a time

    async def scenario() -> None:
        await registry.engine("a")  # an interactive request used it just now
        with pytest.raises(NoRoomForBatch):
            await batch_use(registry, "b")
        assert list(registry.loaded()) == ["a"]
        await batch_use(registry, "a")  # its own model, loaded: no question
        clock.now += BATCH_EVICTS_AFTER_IDLE_S - 1
        with pytest.raises(NoRoomForBatch):
            await batch_use(registry, "b")
        clock.now += 1
        await batch_use(registry, "b")

    asyncio.run(scenario())
    assert list(registry.loaded()) == ["b"] and loader.engines["a"].closed


def test_a_batch_line_loads_a_model_that_fits_beside_the_others(tmp_path):
    registry, _ = registry_of(tmp_path, Clock(), memory_mb=9)

    async def scenario() -> None:
        await registry.engine("a")
        await batch_use(registry, "b")

    asyncio.run(scenario())
    assert sorted(registry.loaded()) == ["a", "b"]


def test_batch_work_lets_go_of_its_model_while_an_interactive_load_waits_for_room(tmp_path):
    clock = Clock()
    registry, loader = registry_of(tmp_path, clock, memory_mb=6)

    async def scenario() -> None:
        holding, release = asyncio.Event(), asyncio.Event()

        async def batch_line() -> None:
            async with registry.use("a", "batch"):
                holding.set()
                await release.wait()

        line = asyncio.create_task(batch_line())
        await asyncio.wait_for(holding.wait(), WAIT_S)
        interactive = asyncio.create_task(registry.engine("b"))  # waits: a is busy with the batch line
        async with asyncio.timeout(WAIT_S):
            while not registry._room_wanted:
                await asyncio.sleep(0.001)
        with pytest.raises(NoRoomForBatch) as refused:
            await batch_use(registry, "a")  # the batch's next line: not while the interactive load waits
        waiter = asyncio.ensure_future(refused.value.wait())
        release.set()  # the line in flight ends; the interactive load evicts a
        await asyncio.wait_for(interactive, WAIT_S)
        await asyncio.wait_for(waiter, WAIT_S)  # woken by the end of the line or the unload
        await line

    asyncio.run(scenario())
    assert list(registry.loaded()) == ["b"] and loader.engines["a"].closed


def test_a_batch_line_for_a_model_larger_than_the_whole_budget_gets_the_503_not_a_wait(tmp_path):
    registry = ModelRegistry([sized_spec(tmp_path, "big", 8)], FakeLoader(), budget=Budget(memory_bytes=4 * MB))

    async def scenario() -> None:
        with pytest.raises(ModelUnavailableError) as refused:
            await batch_use(registry, "big")
        assert refused.value.status_code == 503

    asyncio.run(scenario())
