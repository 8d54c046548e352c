"""Operations endpoints, outside /v1 and without auth (metrics optionally behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.metrics import EngineSnapshot

ops = APIRouter()


@ops.get("/health")
async def health() -> dict[str, str]:
    """Alive: the HTTP process answers."""
    return {"status": "ok"}


@ops.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Ready: every model listed in `preload` is loaded."""
    missing = request.app.state.operations.missing_preloads()
    if missing:
        return JSONResponse({"status": "loading", "waiting_for": missing}, status_code=503)
    return JSONResponse({"status": "ready"})


@ops.get("/metrics")
async def metrics(request: Request) -> Response:
    state = request.app.state
    if state.settings.metrics_require_key:
        state.api_key_check(request.headers.get("authorization"))
    counters = await state.operations.counters()  # fresh from every live worker
    state.metrics.engines.snapshots = {
        name: EngineSnapshot(
            queue_depth=c.queue_depth,
            active_sequences=c.active_sequences,
            decode_steps=c.decode_steps,
            batch_tokens_total=c.batch_tokens_total,
            prefix_cache_hit_tokens=c.prefix_cache_hit_tokens,
            batch_preemptions=c.batch_preemptions,
            draft_tokens=c.draft_tokens,
            draft_accepted_tokens=c.draft_accepted_tokens,
            image_chunks_encoded=c.image_chunks_encoded,
            image_rows_evaluated=c.image_rows_evaluated,
        )
        for name, c in counters.items()
    }
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
