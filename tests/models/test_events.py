"""Model events: the hub (bounded per subscriber, a slow one dropped), what the registry reports and when, its
admin operations (state, unload), and whether a model's files are present."""

import asyncio

import pytest

from server.config import ModelSpec, PathSource, SafetensorsModel, SafetensorsSource
from server.errors import ModelBusyError, ModelNotFoundError, ModelUnavailableError, SlowClientError
from server.models.events import RECENT_EVENTS, ModelEvent, ModelEventHub
from server.models.registry import ModelRegistry
from server.models.residency import Budget
from server.models.sources import files_present
from tests.conftest import FakeLoader
from tests.fakes import fake_spec
from tests.models.test_lifecycle import WAIT_S, BlockingLoader, Clock, sized_spec

MB = 1024 * 1024


def recorded(registry: ModelRegistry) -> list[tuple[str, str | None, str | None]]:
    events: list[tuple[str, str | None, str | None]] = []
    registry.on_event = lambda e: events.append((e.model, e.status or e.event, e.reason))
    return events


# -- the hub -------------------------------------------------------------------------------------------------
def test_every_subscriber_gets_every_event_in_order():
    async def scenario():
        hub = ModelEventHub()
        first, second = hub.subscribe(), hub.subscribe()
        for status in ("loading", "loaded", "unloaded"):
            hub.publish(ModelEvent("a", status=status))
        got = [[(await anext(sub)).status for _ in range(3)] for sub in (first, second)]
        await first.aclose()
        return got, hub.subscribers

    got, left = asyncio.run(scenario())
    assert got == [["loading", "loaded", "unloaded"]] * 2
    assert left == 1  # aclose() unsubscribed the first


def test_a_subscriber_that_falls_behind_is_dropped_and_the_others_keep_theirs():
    async def scenario():
        hub = ModelEventHub(queue_events=2)
        slow, keeping_up = hub.subscribe(), hub.subscribe()
        received = []
        for i in range(3):
            hub.publish(ModelEvent(f"m{i}", status="loaded"))  # never waits, whoever reads or not
            received.append((await anext(keeping_up)).model)
        assert hub.subscribers == 1 and slow.dropped
        with pytest.raises(SlowClientError):
            await anext(slow)  # ended, even though two events are still queued for it
        hub.publish(ModelEvent("later", status="loaded"))
        received.append((await anext(keeping_up)).model)
        return received

    assert asyncio.run(scenario()) == ["m0", "m1", "m2", "later"]


def test_the_hub_keeps_only_the_latest_events():
    hub = ModelEventHub()
    for i in range(RECENT_EVENTS + 5):
        hub.publish(ModelEvent(f"m{i}", status="loaded"))
    assert len(hub.recent) == RECENT_EVENTS and hub.recent[-1].model == f"m{RECENT_EVENTS + 4}"


def test_events_on_the_wire_have_llama_cpp_routers_shape():
    event = ModelEvent("a", status="unloaded", reason="crashed", failed=True, message="died", time=1.23456)
    assert event.wire() == {
        "model": "a",
        "event": "model_status",
        "data": {"status": "unloaded", "time": 1.235, "reason": "crashed", "failed": True, "message": "died"},
    }
    assert ModelEvent("*", event="models_reload", time=2).wire() == {
        "model": "*",
        "event": "models_reload",
        "data": {"time": 2},
    }


# -- what the registry reports -------------------------------------------------------------------------------
def test_a_load_and_an_unload_are_reported():
    registry = ModelRegistry([fake_spec("a", "alias")], FakeLoader())
    events = recorded(registry)

    async def scenario():
        await registry.engine("alias")
        assert registry.state(registry.resolve("a")).status == "loaded"
        assert await registry.unload("alias") is True
        assert await registry.unload("a") is False  # not loaded: nothing to do
        return registry.state(registry.resolve("a")).status

    assert asyncio.run(scenario()) == "unloaded"
    assert events == [("a", "loading", None), ("a", "loaded", None), ("a", "unloaded", "requested")]


def test_a_failed_load_is_reported_and_shown_until_the_model_loads():
    class FailsOnce(FakeLoader):
        def __call__(self, spec):
            if not self.loads:
                self.loads.append(spec.name)
                raise ModelUnavailableError("The model `a` failed to load; see the server log.")
            return super().__call__(spec)

    registry = ModelRegistry([fake_spec("a")], FailsOnce(), clock=Clock())
    events = recorded(registry)
    with pytest.raises(ModelUnavailableError):
        asyncio.run(registry.engine("a"))
    state = registry.state(registry.resolve("a"))
    assert state.status == "unloaded" and state.failure == "The model `a` failed to load; see the server log."
    assert events == [("a", "loading", None), ("a", "unloaded", "load_failed")]
    asyncio.run(registry.engine("a"))
    assert registry.state(registry.resolve("a")).failure is None


def test_a_crash_is_reported_by_the_sweeper_without_waiting_for_a_request():
    registry = ModelRegistry([fake_spec("a")], FakeLoader(), clock=Clock())
    engine = asyncio.run(registry.engine("a"))
    events = recorded(registry)
    engine.crashed = True
    asyncio.run(registry.sweep())
    assert events == [("a", "unloaded", "crashed")]
    state = registry.state(registry.resolve("a"))
    assert state.status == "unloaded" and state.restarts == 1 and "stopped unexpectedly" in (state.failure or "")
    assert engine.closed  # and the dead worker's engine was cleaned up


def test_idle_evicted_reload_and_shutdown_unloads_are_reported_with_their_reason(tmp_path):
    clock = Clock()
    specs = [sized_spec(tmp_path, "a", 1, keep_alive=60), sized_spec(tmp_path, "b", 1), sized_spec(tmp_path, "c", 1)]
    budget = Budget(memory_bytes=100 * 1024 * MB, max_models=2)  # the count decides
    registry = ModelRegistry(specs, FakeLoader(), clock=clock, budget=budget)
    events = recorded(registry)

    async def scenario():
        await registry.engine("a")
        clock.now += 61
        await registry.sweep()  # a: idle past its keep_alive
        await registry.engine("b")
        clock.now += 1
        await registry.engine("c")
        clock.now += 1
        await registry.engine("a")  # a third model: b, the least recently used, is evicted
        registry.reload([specs[0], specs[2].model_copy(update={"n_ctx": 4096})])  # c changed, b removed
        await registry.close()  # a is still loaded

    asyncio.run(scenario())
    unloads = [(model, reason) for model, status, reason in events if status == "unloaded"]
    assert unloads == [("a", "idle"), ("b", "evicted"), ("c", "reload"), ("a", "shutdown")]
    assert ("*", "models_reload", None) in events


def test_a_busy_or_loading_model_is_not_unloaded():
    loader = BlockingLoader()
    registry = ModelRegistry([fake_spec("a"), fake_spec("b")], loader)

    async def scenario():
        async with registry.use("a"):
            with pytest.raises(ModelBusyError, match="is serving 1 request") as busy:
                await registry.unload("a")
        loader.release.clear()
        loader.entered.clear()
        loading = asyncio.ensure_future(registry.engine("b"))
        await asyncio.to_thread(loader.entered.wait, WAIT_S)
        assert registry.state(registry.resolve("b")).status == "loading"
        with pytest.raises(ModelBusyError, match="is loading"):
            await registry.unload("b")
        loader.release.set()
        await loading
        return busy.value

    loader.release.set()
    error = asyncio.run(scenario())
    assert error.status_code == 409 and error.code == "model_busy" and error.param == "model"
    assert error.headers() == {"Retry-After": "1"}
    assert sorted(registry.loaded()) == ["a", "b"]
    with pytest.raises(ModelNotFoundError):
        asyncio.run(registry.unload("nope"))


def test_a_loaded_models_state_has_its_memory_and_idle_time(tmp_path):
    clock = Clock()
    registry = ModelRegistry([sized_spec(tmp_path, "a", 2)], FakeLoader(), clock=clock)
    asyncio.run(registry.engine("a"))
    clock.now += 5
    state = registry.state(registry.resolve("a"))
    assert (state.status, state.in_flight, state.idle_s) == ("loaded", 0, 5.0)
    assert state.resident_bytes >= 2 * MB  # no worker process to measure: the expected size, file included


# -- files present -------------------------------------------------------------------------------------------
def test_files_present_looks_at_the_disk_without_converting(tmp_path):
    on_disk = sized_spec(tmp_path, "here", 1)
    missing = ModelSpec(name="gone", source=PathSource(path=tmp_path / "gone.gguf"))
    folder = tmp_path / "bert"
    folder.mkdir()
    bert = ModelSpec(name="bert", embedding=True, source=SafetensorsSource(safetensors=SafetensorsModel(dir=folder)))
    assert files_present(on_disk) and not files_present(missing)
    assert not files_present(bert)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"not really")  # a conversion would fail on this: none is tried
    assert files_present(bert)
