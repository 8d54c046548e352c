"""How the registry loads a model in production: each in its own worker process."""

from __future__ import annotations

import functools
from collections.abc import Callable

from server.config import ModelSpec, Settings
from server.engine import Engine
from server.engine.liveness import WorkerDeadlines
from server.engine.prompt_store import PromptCacheConfig

Loader = Callable[[ModelSpec], Engine]


def worker_process_loader(
    spec: ModelSpec, deadlines: WorkerDeadlines | None = None, prompt_cache: PromptCacheConfig | None = None
) -> Engine:
    """The production loader: each model in its own worker process, so native crashes stay there."""
    from server.engine.process import ProcessEngine

    return ProcessEngine.load(spec, deadlines, prompt_cache)


def worker_loader(settings: Settings) -> Loader:
    """The production loader, with the settings' deadlines for talking to workers and their prompt cache."""
    deadlines = WorkerDeadlines(
        call_timeout_s=settings.worker_call_timeout_s,
        ping_interval_s=settings.worker_ping_interval_s,
        hang_timeout_s=settings.worker_hang_timeout_s,
    )
    return functools.partial(worker_process_loader, deadlines=deadlines, prompt_cache=prompt_cache_of(settings))


def prompt_cache_of(settings: Settings) -> PromptCacheConfig | None:
    """Where workers save and restore prompt prefixes (server/engine/prompt_cache.py); None when the cap is 0."""
    if settings.prompt_cache_bytes == 0:
        return None
    directory = settings.prompt_cache_dir or settings.data_dir / "prompt-cache"
    return PromptCacheConfig(
        directory=directory, max_bytes=settings.prompt_cache_bytes, max_age_s=settings.prompt_cache_max_age_s
    )
