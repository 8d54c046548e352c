"""Starting a model worker process and waiting, with a bound, until its model is loaded."""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

from server.config import ModelSpec
from server.engine.base import EngineInfo
from server.engine.prompt_store import PromptCacheConfig
from server.engine.worker import serve
from server.errors import ModelUnavailableError

logger = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 600


def start_worker(spec: ModelSpec, prompt_cache: PromptCacheConfig | None = None) -> tuple[Any, Any, EngineInfo]:
    """A worker process with the model loaded, the parent's end of its pipe, and the model's info (blocking:
    call it off the event loop). A worker that fails, dies or takes too long to load is a 503. `prompt_cache`:
    where the worker keeps its saved prompt prefixes (None: nowhere)."""
    context = multiprocessing.get_context("spawn")
    conn, child_conn = context.Pipe()
    process = context.Process(
        target=serve,
        args=(child_conn, spec.model_dump_json(), logging.getLogger().getEffectiveLevel(), prompt_cache),
        name=f"slm-worker-{spec.name}",
        daemon=True,
    )
    process.start()
    child_conn.close()
    unavailable = f"The model `{spec.name}` failed to load; see the server log."
    try:
        if not conn.poll(LOAD_TIMEOUT_S):
            raise ModelUnavailableError(unavailable)
        message = conn.recv()
    except (EOFError, OSError):
        process.join(5)
        logger.error("worker for %s exited while loading (exit code %s)", spec.name, process.exitcode)
        conn.close()
        raise ModelUnavailableError(unavailable) from None
    except ModelUnavailableError:
        logger.error("worker for %s did not load within %d s", spec.name, LOAD_TIMEOUT_S)
        process.kill()
        process.join(5)
        conn.close()
        raise
    if message[0] != "ready":
        process.join(5)
        conn.close()
        raise ModelUnavailableError(message[1])
    logger.info("worker for %s started (pid %d)", spec.name, process.pid)
    return process, conn, message[1]
