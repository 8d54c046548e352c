"""The model registry: names and aliases to specs, and specs to engines loaded on demand.

Lifecycle: a model loads on first use (concurrent first requests load it once); loaded models share a memory
budget and a count limit, and one that would not fit evicts the least recently used idle model; an idle model
unloads after its `keep_alive`; `reload()` swaps the registry file's entries without touching running requests.
A model is busy (never evicted) while a request holds it through `use()` or its engine has streams admitted.

A load is the registry's own task, which requests await shielded: a client that leaves while its model loads
does not cancel it, so the worker is registered (and counted) or closed, never leaked. The memory budget counts
loads in progress and retired engines (of entries a reload changed) that still serve requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from server.config import HubSource, ModelSpec, NotPulledError
from server.engine import Engine
from server.engine.base import Priority
from server.engine.memory import DEFAULT_PROCESS_BYTES, MemoryEstimate
from server.errors import (
    APIError,
    ModelBusyError,
    ModelNotFoundError,
    ModelNotPulledError,
    ModelUnavailableError,
    NoRoomForBatch,
    ShuttingDownError,
)
from server.models import sources
from server.models.events import ModelEvent, ModelState, ModelStatusValue, UnloadReason
from server.models.loaders import Loader, worker_process_loader
from server.models.residency import (
    Budget,
    CrashHistory,
    load_with_errors_named,
    memory_estimate,
    resident_size,
)

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
# Batch work loads its model only into memory interactive work leaves: it may evict a model no request has used
# for this long, never one used more recently.
BATCH_EVICTS_AFTER_IDLE_S = 300.0
CLOSE_LOAD_WAIT_S = 30.0  # how long close() waits for loads in progress, to close their workers too


@dataclass(eq=False)
class _Resident:
    """A loaded model: its engine, the spec it was loaded from, and how it is being used."""

    spec: ModelSpec
    engine: Engine
    size: int
    last_used: float
    leases: int = 0

    def busy(self) -> bool:
        return self.leases > 0 or self.engine.in_flight > 0


@dataclass
class _Entry:
    spec: ModelSpec


class ModelRegistry:
    def __init__(
        self,
        specs: Iterable[ModelSpec],
        loader: Loader = worker_process_loader,
        clock: Callable[[], float] = time.monotonic,
        budget: Budget | None = None,
    ) -> None:
        self._loader = loader
        self._clock = clock
        self._budget = budget or Budget()
        self._crashes = CrashHistory(clock)
        self.restarts: dict[str, int] = {}
        self.on_load: Callable[[str, float], None] = lambda _name, _seconds: None
        self.on_event: Callable[[ModelEvent], None] = lambda _event: None  # wired to the event hub by create_app
        self._failures: dict[str, str] = {}
        self._entries: dict[str, _Entry] = {}
        self._names: dict[str, str] = {}
        self._resident: dict[str, _Resident] = {}
        self._retired: list[_Resident] = []  # engines of removed or changed entries, unloaded once idle
        self._loading: dict[str, asyncio.Task[_Resident | None]] = {}
        self._reserved: dict[str, int] = {}  # bytes of loads in progress, by model
        self._closing: list[_Resident] = []  # engines being closed (a worker saving its prompt cache, then exiting)
        self._closed = False
        self._room = asyncio.Condition()
        self._room_wanted = 0  # loads waiting for memory
        self._process_bytes = DEFAULT_PROCESS_BYTES  # a worker before its model loads: the last one measured
        self._estimates: dict[str, tuple[tuple[ModelSpec, int], MemoryEstimate]] = {}  # by model
        self._set_specs(specs)

    # -- names ---------------------------------------------------------------------------------------------
    def resolve(self, name: str) -> ModelSpec:
        """The spec for a model name or alias; unknown names are a 404, never another model."""
        try:
            return self._entries[self._names[name]].spec
        except KeyError:
            raise ModelNotFoundError(name) from None

    def specs(self) -> list[ModelSpec]:
        return [entry.spec for entry in self._entries.values()]

    def loaded(self) -> dict[str, Engine]:
        return {name: resident.engine for name, resident in self._resident.items()}

    def memory_estimate(self, spec: ModelSpec, *, convert: bool = False) -> MemoryEstimate | None:
        """What the model's worker is expected to take once loaded (None: its file is not here; unless `convert`,
        also a safetensors model not converted yet). Reads the file's header once per entry and worker size: call
        it off the event loop."""
        cached = self._estimates.get(spec.name)
        if cached is not None and cached[0] == (spec, self._process_bytes):
            return cached[1]
        estimate = memory_estimate(spec, self._process_bytes, convert=convert, draft=self._draft_entry(spec))
        if estimate is not None:
            self._estimates[spec.name] = ((spec, self._process_bytes), estimate)
        return estimate

    async def _need(self, spec: ModelSpec) -> MemoryEstimate:
        """The memory a load of the model is counted for (nothing for a file that is not here); converts a
        safetensors model first, as its load would."""
        return await asyncio.to_thread(self.memory_estimate, spec, convert=True) or MemoryEstimate(0, 0, 0, 0)

    def available(self, spec: ModelSpec) -> bool:
        """Whether the model's file is on this machine (only Hugging Face sources can be missing by design)."""
        if not isinstance(spec.source, HubSource):
            return True
        try:
            spec.model_path()
        except NotPulledError:
            return False
        return True

    def reload(self, specs: Iterable[ModelSpec]) -> None:
        """New entries appear at once; removed or changed ones stop resolving and their engines unload when idle."""
        specs = list(specs)
        new = {spec.name: spec for spec in specs}
        for name, resident in list(self._resident.items()):
            if new.get(name) != resident.spec:
                self._retired.append(self._resident.pop(name))
                self._emit(ModelEvent(name, status="unloaded", reason="reload"))
        self._set_specs(specs)
        logger.info("models file reloaded: %d model(s)", len(specs))
        self._emit(ModelEvent("*", event="models_reload"))

    def _set_specs(self, specs: Iterable[ModelSpec]) -> None:
        entries: dict[str, _Entry] = {}
        names: dict[str, str] = {}
        for spec in specs:
            old = self._entries.get(spec.name)
            entries[spec.name] = old if old is not None and old.spec == spec else _Entry(spec)
            for name in (spec.name, *spec.aliases):
                names[name] = spec.name
        self._entries, self._names = entries, names

    # -- use -----------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def use(self, name: str, priority: Priority = "interactive") -> AsyncIterator[Engine]:
        """The model's engine, held busy (not evictable) until the block ends. Streams the engine admits in the
        block keep it busy on their own until they finish. At batch priority, NoRoomForBatch unless
        `check_batch_room` allows it."""
        if priority == "batch":
            await self.check_batch_room(name)
        resident = await self._acquire(name)
        try:
            yield resident.engine
        finally:
            resident.leases -= 1
            resident.last_used = self._clock()
            async with self._room:
                self._room.notify_all()

    async def engine(self, name: str) -> Engine:
        """Load the model if needed (for preload and readiness); the caller does not hold it."""
        async with self.use(name) as engine:
            return engine

    async def check_batch_room(self, name: str) -> None:
        """Batch work takes only the memory interactive work leaves: none while a load waits for room (the batch
        lets go of its model between lines, so that load can evict it), and its model loads only where it fits
        beside the models used in the last BATCH_EVICTS_AFTER_IDLE_S. Otherwise NoRoomForBatch, woken when a
        request ends or a model unloads."""
        spec = self.resolve(name)
        if not self._room_wanted:
            if self._live(spec.name) is not None or spec.name in self._loading:
                return
            need = await self._need(spec)
            self._budget.check_fits_alone(spec.name, need)  # never fits: the 503 the live endpoint answers
            size = need.total
            now = self._clock()
            kept = [
                r.size for r in self._resident.values() if r.busy() or now - r.last_used < BATCH_EVICTS_AFTER_IDLE_S
            ]
            if self._budget.fits(size, kept + self._unevictable()):
                return
        raise NoRoomForBatch(self._room_changed)

    async def _room_changed(self) -> None:
        async with self._room:
            await self._room.wait()

    def _unevictable(self, closing: bool = True) -> list[int]:
        """Retired engines still serving, engines being closed and loads in progress take memory too, and cannot
        be evicted."""
        retired = [r.size for r in self._retired if r.engine.alive]
        return retired + [r.size for r in self._closing if closing] + list(self._reserved.values())

    async def _acquire(self, name: str) -> _Resident:
        while True:
            spec = self.resolve(name)
            resident = self._live(spec.name)
            if resident is None:
                task = self._loading.get(spec.name)
                if task is None:
                    task = asyncio.create_task(self._owned_load(spec), name=f"load-{spec.name}")
                    task.add_done_callback(_retrieve)
                    self._loading[spec.name] = task
                # A request that goes away stops waiting; the load goes on and registers its engine.
                await asyncio.shield(task)
                # Loaded for an entry a reload changed, or evicted before this request woke up: look again.
                resident = self._live(spec.name)
            if resident is not None:
                resident.leases += 1
                resident.last_used = self._clock()
                return resident

    async def _owned_load(self, spec: ModelSpec) -> _Resident | None:
        self._emit(ModelEvent(spec.name, status="loading"))
        try:
            return await self._load(spec)
        except ShuttingDownError:
            raise  # loaded after close(): reported as unloaded at shutdown
        except Exception as exc:
            message = exc.message if isinstance(exc, APIError) else f"The model `{spec.name}` failed to load."
            self._emit(ModelEvent(spec.name, status="unloaded", reason="load_failed", failed=True, message=message))
            raise
        finally:
            self._loading.pop(spec.name, None)
            self._reserved.pop(spec.name, None)

    def _live(self, name: str) -> _Resident | None:
        resident = self._resident.get(name)
        if resident is not None and not resident.engine.alive:
            self._resident.pop(name)
            self._retired.append(resident)
            self._crashes.record(name)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            message = f"The worker of model `{name}` stopped unexpectedly; the next request starts a new one."
            self._emit(ModelEvent(name, status="unloaded", reason="crashed", failed=True, message=message))
            return None
        return resident

    async def _load(self, spec: ModelSpec) -> _Resident | None:
        if not self.available(spec):
            raise ModelNotPulledError(spec.name)
        self._crashes.check(spec.name)
        need = await self._need(spec)
        self._budget.check_fits_alone(spec.name, need)  # refused with the numbers before anything loads
        size = need.total
        await self._make_room(spec.name, size)
        self._reserved[spec.name] = size  # counted by other loads' _make_room until it is resident
        started = time.monotonic()
        try:
            # The loader gets the spec with its file resolved (converted, if it must be): engines only open paths.
            draft = self._draft_of(spec)
            engine = await asyncio.to_thread(
                load_with_errors_named, lambda s: self._loader(sources.resolved(s, draft=draft)), spec
            )
        except ModelUnavailableError:
            self._crashes.record(spec.name)  # a file that fails or kills its loader must not be retried in a loop
            raise
        load_s = time.monotonic() - started
        self.on_load(spec.name, load_s)
        self._process_bytes = engine.info.process_bytes or self._process_bytes
        resident = _Resident(spec, engine, size, self._clock())
        entry = self._entries.get(spec.name)
        if self._closed or entry is None or entry.spec != spec:
            why = "closed" if self._closed else "reload changed or removed its entry"
            logger.info("model %s loaded after the registry %s: closing it", spec.name, why)
            self._reserved.pop(spec.name, None)  # counted as closing from here, not twice
            await self._unload(resident, "shutdown" if self._closed else "reload")
            if self._closed:
                raise ShuttingDownError()
            return None
        self._resident[spec.name] = resident
        self._failures.pop(spec.name, None)
        self._emit(ModelEvent(spec.name, status="loaded", load_s=load_s))
        return resident

    def _draft_entry(self, spec: ModelSpec) -> ModelSpec | None:
        """The entry a model's speculative decoding drafts with (`speculative.draft`); None when it names none,
        or one models.yaml no longer has."""
        entry = None if spec.speculative is None else self._entries.get(spec.speculative.draft or "")
        return None if entry is None else entry.spec

    def _draft_of(self, spec: ModelSpec) -> ModelSpec | None:
        """The draft entry a load needs: ModelUnavailableError when the model names one that is not there."""
        draft = self._draft_entry(spec)
        if draft is None and spec.speculative is not None and spec.speculative.draft is not None:
            name = spec.speculative.draft
            raise ModelUnavailableError(f"The draft model `{name}` of model `{spec.name}` is not in models.yaml.")
        return draft

    # -- memory --------------------------------------------------------------------------------------------
    async def _make_room(self, name: str, size: int) -> None:
        """Evict least recently used idle models until `size` more bytes and one more model fit; wait a bounded
        time for busy models to finish, then give up with a 503."""
        deadline = self._clock() + self._budget.wait_s
        while True:
            await self._unload_retired()
            residents = list(self._resident.values())
            staying = [r.size for r in residents] + self._unevictable(closing=False)
            loaded_sizes = staying + [r.size for r in self._closing]
            if self._budget.fits(size, loaded_sizes):
                return
            # Where the models still closing will make room, wait for them instead of evicting another.
            closed_soon = self._budget.fits(size, staying)
            idle = [] if closed_soon else sorted((r for r in residents if not r.busy()), key=lambda r: r.last_used)
            if idle:
                victim = idle[0]
                logger.info("unloading %s (least recently used) to make room for %s", victim.spec.name, name)
                self._resident.pop(victim.spec.name)
                await self._unload(victim, "evicted")
                continue
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ModelUnavailableError(
                    f"The model `{name}` cannot be loaded now: the loaded models are all busy or still closing and it "
                    f"does not fit beside them ({self._budget.describe(loaded_sizes, size)}). Retry shortly.",
                    retry_after=5,
                )
            self._room_wanted += 1  # batch work lets go of its models meanwhile
            try:
                async with self._room:
                    with contextlib.suppress(TimeoutError):
                        # Woken when a request ends; streams end inside the engine, so look again every second too.
                        await asyncio.wait_for(self._room.wait(), min(remaining, SWEEP_INTERVAL_S))
            finally:
                self._room_wanted -= 1

    async def sweep(self) -> None:
        """Unload models idle for longer than their keep_alive, and retired engines once idle."""
        now = self._clock()
        for name in list(self._resident):
            self._live(name)  # a worker that died is noticed (and reported) now, not at the model's next use
        await self._unload_retired()
        for name, resident in list(self._resident.items()):
            measured = resident_size(resident.engine)
            if measured is not None:
                resident.size = max(resident.size, measured)
            if resident.busy():
                resident.last_used = now  # a stream ended inside the engine: idle time counts from now
                continue
            keep_alive = resident.spec.keep_alive
            if keep_alive is not None and now - resident.last_used >= keep_alive:
                idle = now - resident.last_used
                logger.info("unloading %s: idle for %.0f s (keep_alive %s s)", name, idle, keep_alive)
                self._resident.pop(name)
                await self._unload(resident, "idle")

    async def run_sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:  # the sweeper must survive anything one engine does
                logger.exception("model sweeper failed")

    async def _unload_retired(self) -> None:
        for resident in [r for r in self._retired if not r.busy()]:
            self._retired.remove(resident)
            await self._unload(resident)

    async def _unload(self, resident: _Resident, reason: UnloadReason | None = None) -> None:
        """Close the engine; `reason`: report the model unloaded (retired engines were reported when retired).
        Its memory stays counted until the worker has exited: closing saves the prompt cache first (seconds)."""
        self._closing.append(resident)
        closing = asyncio.ensure_future(asyncio.to_thread(resident.engine.close))
        closing.add_done_callback(lambda done: self._forget_closing(resident, done))
        await asyncio.shield(closing)  # a cancelled caller (the sweeper at shutdown) leaves it counted until closed
        logger.info("model %s unloaded", resident.spec.name)
        if reason is not None:
            self._emit(ModelEvent(resident.spec.name, status="unloaded", reason=reason))
        async with self._room:
            self._room.notify_all()

    def _forget_closing(self, resident: _Resident, closing: asyncio.Future[None]) -> None:
        self._closing.remove(resident)
        if not closing.cancelled():
            closing.exception()  # retrieved: raised to the caller, unless it was cancelled meanwhile

    # -- admin ---------------------------------------------------------------------------------------------
    def state(self, spec: ModelSpec) -> ModelState:
        resident = self._live(spec.name)  # first: a crash it notices is a failure to show
        failure, restarts = self._failures.get(spec.name), self.restarts.get(spec.name, 0)
        if resident is None:
            status: ModelStatusValue = "loading" if spec.name in self._loading else "unloaded"
            return ModelState(status, failure=failure, restarts=restarts)
        engine = resident.engine
        return ModelState(
            "loaded",
            resident_bytes=resident_size(engine) or resident.size,
            in_flight=resident.leases + engine.in_flight,
            idle_s=None if resident.busy() else max(0.0, self._clock() - resident.last_used),
            restarts=restarts,
        )

    async def unload(self, name: str) -> bool:
        """Unload an idle model now (False: it was not loaded); a busy or loading one is a 409, never cut off."""
        spec = self.resolve(name)
        if spec.name in self._loading:
            raise ModelBusyError(spec.name, "is loading")
        resident = self._live(spec.name)
        if resident is None:
            return False
        if resident.busy():
            raise ModelBusyError(spec.name, f"is serving {resident.leases + resident.engine.in_flight} request(s)")
        self._resident.pop(spec.name)
        await self._unload(resident, "requested")
        return True

    def _emit(self, event: ModelEvent) -> None:
        if event.failed and event.message is not None:
            self._failures[event.model] = event.message
        try:
            self.on_event(event)
        except Exception:  # a subscriber's trouble is never the registry's
            logger.exception("model event not delivered")

    async def close(self) -> None:
        """Close every engine, and those of loads in progress once they finish (waited for a bounded time)."""
        self._closed = True
        if self._loading:
            await asyncio.wait(list(self._loading.values()), timeout=CLOSE_LOAD_WAIT_S)
        loaded = list(self._resident.values())
        retired = self._retired
        self._resident, self._retired = {}, []
        for resident in loaded:
            await self._unload(resident, "shutdown")
        for resident in retired:
            await asyncio.to_thread(resident.engine.close)


def _retrieve(task: asyncio.Task[_Resident | None]) -> None:
    """A load whose requests all went away: its failure was logged where it happened; nobody is left to raise to."""
    if not task.cancelled():
        task.exception()
