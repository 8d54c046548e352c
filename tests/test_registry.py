import asyncio

import pytest

from server.errors import ModelNotFoundError, ModelUnavailableError
from server.registry import ModelRegistry
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
