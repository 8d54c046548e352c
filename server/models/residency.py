"""What the registry needs to decide which models stay loaded: the memory budget, model footprints, the crash
history that spaces out restarts, and a loader wrapper whose failures name the model."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from server.config import ConfigError, ModelSpec
from server.engine import Engine
from server.engine.memory import DEFAULT_PROCESS_BYTES, MemoryEstimate, estimate_memory
from server.errors import APIError, ModelUnavailableError
from server.models.sources import model_file

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_FRACTION = 0.75
MAX_RESTART_DELAY_S = 30.0
CRASH_MEMORY_S = 300.0  # a crash older than this no longer lengthens the back-off


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class Budget:
    """How many bytes and models may be loaded at once, and how long a load waits for busy models."""

    memory_bytes: int = 0  # 0: DEFAULT_BUDGET_FRACTION of the machine's memory
    max_models: int = 4
    wait_s: float = 30.0

    @property
    def limit(self) -> int:
        return self.memory_bytes or int(machine_memory() * DEFAULT_BUDGET_FRACTION)

    def fits(self, size: int, loaded_sizes: list[int]) -> bool:
        return len(loaded_sizes) < self.max_models and sum(loaded_sizes) + size <= self.limit

    def check_fits_alone(self, name: str, need: MemoryEstimate) -> None:
        if need.total > self.limit:
            raise ModelUnavailableError(
                f"The model `{name}` needs about {need.describe()} of memory, more than the server's memory "
                f"budget ({_gib(self.limit)}; SLM_MEMORY_BUDGET). Its entry's n_ctx, parallel or cache_type_k/v "
                "make its KV cache smaller."
            )

    def describe(self, loaded_sizes: list[int], size: int) -> str:
        return (
            f"{len(loaded_sizes)} of {self.max_models} models loaded, {_gib(sum(loaded_sizes))} used, "
            f"{_gib(size)} needed, budget {_gib(self.limit)}"
        )


DRAFT_SHAPE = ("n_ctx", "parallel", "n_batch", "flash_attn")  # a draft model's context is shaped as its model's


def memory_estimate(
    spec: ModelSpec,
    process_bytes: int = DEFAULT_PROCESS_BYTES,
    *,
    convert: bool = False,
    draft: ModelSpec | None = None,
) -> MemoryEstimate | None:
    """What a model's worker is expected to take once loaded (server/engine/memory.py); None when its file is not
    here (or, unless `convert`, a safetensors model is not converted yet: listing models converts nothing). A file
    whose header gives no estimate (damaged or hostile: llama.cpp will refuse it) counts its size alone."""
    try:
        path = model_file(spec, convert=convert)
        size = path.stat().st_size
    except (ConfigError, OSError):
        return None
    try:
        estimate = estimate_memory(spec, path, process_bytes)
    except Exception:  # whatever a file's header holds, listing models and loading them go on
        logger.info("model %s: its file's header gives no memory estimate; counting its size", spec.name)
        estimate = MemoryEstimate(weights=size, kv_cache=0, compute=0, process=0)
    if draft is not None:  # loaded in the same worker, with the model's sequences and context
        shaped = draft.model_copy(update={field: getattr(spec, field) for field in DRAFT_SHAPE})
        extra = memory_estimate(shaped.model_copy(update={"cache_type_k": "f16", "cache_type_v": "f16"}), 0)
        if extra is not None:
            estimate = MemoryEstimate(
                weights=estimate.weights + extra.weights,
                kv_cache=estimate.kv_cache + extra.kv_cache,
                compute=estimate.compute + extra.compute,
                process=estimate.process,
            )
    return estimate


def resident_size(engine: Engine) -> int | None:
    """The resident memory of an engine's worker process, where the engine has one (Linux)."""
    pid = engine.pid
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def load_with_errors_named(loader: Callable[[ModelSpec], Engine], spec: ModelSpec) -> Engine:
    try:
        return loader(spec)
    except APIError:
        raise
    except Exception as exc:
        logger.exception("model %s failed to load", spec.name)
        raise ModelUnavailableError(f"The model `{spec.name}` failed to load; see the server log.") from exc


class CrashHistory:
    """Recent crashes (or failed loads) per model, and the back-off they impose on the next load."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._records: dict[str, tuple[int, float]] = {}

    def record(self, name: str) -> None:
        now = self._clock()
        count, last = self._records.get(name, (0, 0.0))
        count = 1 if now - last > CRASH_MEMORY_S else count + 1
        self._records[name] = (count, now)
        logger.warning("model %s: worker died or failed to load (%d recent time(s))", name, count)

    def check(self, name: str) -> None:
        if name not in self._records:
            return
        count, last = self._records[name]
        wait = last + restart_delay(count) - self._clock()
        if wait > 0:
            raise ModelUnavailableError(
                f"The model `{name}` keeps crashing or failing to load; it restarts in {math.ceil(wait)} s.",
                retry_after=math.ceil(wait),
            )


def restart_delay(crashes: int) -> float:
    """No wait after a first crash, then 1, 2, 4 ... up to 30 s while a model keeps dying."""
    return 0.0 if crashes <= 1 else min(2.0 ** (crashes - 2), MAX_RESTART_DELAY_S)


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
