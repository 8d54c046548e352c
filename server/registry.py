"""The model registry: names and aliases to specs, and specs to lazily loaded engines."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from server.config import ModelSpec
from server.engine import Engine
from server.errors import APIError, ModelNotFoundError, ModelUnavailableError

logger = logging.getLogger(__name__)

Loader = Callable[[ModelSpec], Engine]
MAX_RESTART_DELAY_S = 30.0
CRASH_MEMORY_S = 300.0  # a crash older than this no longer lengthens the back-off


def worker_process_loader(spec: ModelSpec) -> Engine:
    """The production loader: each model in its own worker process, so native crashes stay there."""
    from server.engine.process import ProcessEngine

    return ProcessEngine.load(spec)


@dataclass
class _CrashRecord:
    count: int = 0
    last: float = 0.0


def restart_delay(crashes: int) -> float:
    """No wait after a first crash, then 1, 2, 4 ... up to 30 s while a model keeps dying."""
    return 0.0 if crashes <= 1 else min(2.0 ** (crashes - 2), MAX_RESTART_DELAY_S)


class ModelRegistry:
    def __init__(
        self,
        specs: Iterable[ModelSpec],
        loader: Loader = worker_process_loader,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._clock = clock
        self._crashes: dict[str, _CrashRecord] = {}
        self.restarts: dict[str, int] = {}
        self.on_load: Callable[[str, float], None] = lambda _name, _seconds: None
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

    def loaded(self) -> dict[str, Engine]:
        return dict(self._engines)

    async def engine(self, name: str) -> Engine:
        """The loaded engine for a model, loading it first if needed; concurrent first calls load once.

        An engine whose worker died is replaced by a fresh one, after a back-off if the model keeps dying."""
        spec = self.resolve(name)
        engine = self._engines.get(spec.name)
        if engine is not None and engine.alive:
            return engine
        async with self._locks[spec.name]:
            engine = self._engines.get(spec.name)
            if engine is not None and not engine.alive:
                await self._forget_crashed(spec.name, engine)
                engine = None
            if engine is None:
                self._check_backoff(spec.name)
                try:
                    engine = await asyncio.to_thread(self._load, spec)
                except ModelUnavailableError:
                    self._record_crash(spec.name)  # a file that kills its loader must not be retried in a loop
                    raise
                self._engines[spec.name] = engine
        return engine

    async def _forget_crashed(self, name: str, engine: Engine) -> None:
        del self._engines[name]
        await asyncio.to_thread(engine.close)
        self._record_crash(name)
        self.restarts[name] = self.restarts.get(name, 0) + 1

    def _record_crash(self, name: str) -> None:
        now = self._clock()
        record = self._crashes.setdefault(name, _CrashRecord())
        record.count = 1 if now - record.last > CRASH_MEMORY_S else record.count + 1
        record.last = now
        logger.warning("model %s: worker died or failed to load (%d recent time(s))", name, record.count)

    def _check_backoff(self, name: str) -> None:
        record = self._crashes.get(name)
        if record is None:
            return
        wait = record.last + restart_delay(record.count) - self._clock()
        if wait > 0:
            raise ModelUnavailableError(
                f"The model `{name}` keeps crashing; it restarts in {math.ceil(wait)} s.", retry_after=math.ceil(wait)
            )

    def _load(self, spec: ModelSpec) -> Engine:
        started = time.monotonic()
        try:
            engine = self._loader(spec)
        except APIError:
            raise
        except Exception as exc:
            logger.exception("model %s failed to load", spec.name)
            raise ModelUnavailableError(f"The model `{spec.name}` failed to load; see the server log.") from exc
        self.on_load(spec.name, time.monotonic() - started)
        return engine

    async def close(self) -> None:
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            await asyncio.to_thread(engine.close)
