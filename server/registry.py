"""The model registry: names and aliases to specs, and specs to lazily loaded engines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from server.config import ModelSpec
from server.engine import Engine
from server.errors import APIError, ModelNotFoundError, ModelUnavailableError

logger = logging.getLogger(__name__)

Loader = Callable[[ModelSpec], Engine]


def llama_cpp_loader(spec: ModelSpec) -> Engine:
    """The production loader. Imported lazily so that config, fakes and fast tests never load llama.cpp."""
    from server.engine.llama import LlamaCppEngine

    return LlamaCppEngine.load(spec)


class ModelRegistry:
    def __init__(self, specs: Iterable[ModelSpec], loader: Loader = llama_cpp_loader) -> None:
        self._loader = loader
        self._specs: dict[str, ModelSpec] = {}
        self._names: dict[str, str] = {}
        for spec in specs:
            self._specs[spec.name] = spec
            for name in (spec.name, *spec.aliases):
                self._names[name] = spec.name
        self._engines: dict[str, Engine] = {}
        self._locks = {name: asyncio.Lock() for name in self._specs}

    def resolve(self, name: str) -> ModelSpec:
        """The spec for a model name or alias; unknown names are a 404, never another model."""
        try:
            return self._specs[self._names[name]]
        except KeyError:
            raise ModelNotFoundError(name) from None

    def specs(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def is_loaded(self, name: str) -> bool:
        return self.resolve(name).name in self._engines

    async def engine(self, name: str) -> Engine:
        """The loaded engine for a model, loading it first if needed; concurrent first calls load once."""
        spec = self.resolve(name)
        engine = self._engines.get(spec.name)
        if engine is not None:
            return engine
        async with self._locks[spec.name]:
            engine = self._engines.get(spec.name)
            if engine is None:
                engine = await asyncio.to_thread(self._load, spec)
                self._engines[spec.name] = engine
        return engine

    def _load(self, spec: ModelSpec) -> Engine:
        try:
            return self._loader(spec)
        except APIError:
            raise
        except Exception as exc:
            logger.exception("model %s failed to load", spec.name)
            raise ModelUnavailableError(f"The model `{spec.name}` failed to load; see the server log.") from exc

    async def close(self) -> None:
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await asyncio.to_thread(engine.close)
