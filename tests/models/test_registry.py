import asyncio

import pytest

from server.errors import ModelNotFoundError, ModelUnavailableError
from server.models.registry import ModelRegistry
from tests.conftest import FakeLoader
from tests.fakes import fake_spec


def test_names_and_aliases_resolve_and_unknown_names_raise():
    registry = ModelRegistry([fake_spec("a", "alias-a"), fake_spec("b")], FakeLoader())
    assert registry.resolve("alias-a").name == "a"
    with pytest.raises(ModelNotFoundError):
        registry.resolve("c")


def test_concurrent_first_requests_load_once():
    loader = FakeLoader()
    registry = ModelRegistry([fake_spec("a")], loader)

    async def many():
        return await asyncio.gather(*(registry.engine("a") for _ in range(8)))

    engines = asyncio.run(many())
    assert loader.loads == ["a"]
    assert all(engine is engines[0] for engine in engines)


def test_failed_load_is_a_503_naming_the_model_and_others_still_load():
    class Flaky(FakeLoader):
        def __call__(self, spec):
            if spec.name == "broken":
                raise ValueError("llama.cpp said no")
            return super().__call__(spec)

    registry = ModelRegistry([fake_spec("broken"), fake_spec("fine")], Flaky())
    with pytest.raises(ModelUnavailableError, match="`broken`"):
        asyncio.run(registry.engine("broken"))
    assert asyncio.run(registry.engine("fine")) is not None


def test_close_closes_loaded_engines():
    loader = FakeLoader()
    registry = ModelRegistry([fake_spec("a")], loader)
    asyncio.run(registry.engine("a"))
    asyncio.run(registry.close())
    assert loader.engines["a"].closed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_dead_engine_is_replaced_and_restarts_are_counted():
    loader = FakeLoader()
    registry = ModelRegistry([fake_spec("a")], loader, clock=Clock())
    first = asyncio.run(registry.engine("a"))
    first.crashed = True
    second = asyncio.run(registry.engine("a"))
    assert second is not first and second.alive
    assert first.closed and registry.restarts == {"a": 1}
    assert loader.loads == ["a", "a"]


def test_a_model_that_keeps_dying_is_restarted_with_growing_back_off():
    clock = Clock()

    class AlwaysFails(FakeLoader):
        def __call__(self, spec):
            super().__call__(spec)
            raise ModelUnavailableError("The model `a` failed to load.")

    loader = AlwaysFails()
    registry = ModelRegistry([fake_spec("a")], loader, clock=clock)
    for _ in range(2):  # the first failure allows an immediate retry
        with pytest.raises(ModelUnavailableError, match="failed to load"):
            asyncio.run(registry.engine("a"))
    with pytest.raises(ModelUnavailableError, match="restarts in 1 s") as info:
        asyncio.run(registry.engine("a"))
    assert info.value.headers() == {"Retry-After": "1"}
    assert len(loader.loads) == 2  # no load was attempted during the back-off
    clock.now += 1
    with pytest.raises(ModelUnavailableError, match="failed to load"):
        asyncio.run(registry.engine("a"))
    with pytest.raises(ModelUnavailableError, match="restarts in 2 s"):
        asyncio.run(registry.engine("a"))
    clock.now += 400  # long after: the crash history is forgotten
    with pytest.raises(ModelUnavailableError, match="failed to load"):
        asyncio.run(registry.engine("a"))
    with pytest.raises(ModelUnavailableError, match="failed to load"):
        asyncio.run(registry.engine("a"))
