"""What operations need from the loaded models: preloading, readiness, and fresh engine counters."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from server.engine import EngineCounters
from server.errors import APIError
from server.models.registry import ModelRegistry

logger = logging.getLogger(__name__)
SCRAPE_TIMEOUT_S = 2.0


class ModelOperations:
    def __init__(self, registry: ModelRegistry, preload: tuple[str, ...] = ()) -> None:
        self._registry = registry
        self._preload = preload

    async def preload(self) -> None:
        """Load the `preload` models one after the other; a failure is logged and leaves /ready red."""
        for name in self._preload:
            try:
                await self._registry.engine(name)
            except APIError as exc:
                logger.error("preloading %s failed: %s", name, exc.message)

    def missing_preloads(self) -> list[str]:
        loaded = self._registry.loaded()
        return [name for name in self._preload if not (name in loaded and loaded[name].alive)]

    async def counters(self) -> dict[str, EngineCounters]:
        """Fresh engine counters from every live worker (one that does not answer in time is left out)."""
        snapshots = {}
        for name, engine in self._registry.loaded().items():
            if not engine.alive:
                continue
            with contextlib.suppress(APIError, TimeoutError):
                snapshots[name] = await asyncio.wait_for(engine.counters(), SCRAPE_TIMEOUT_S)
        return snapshots
