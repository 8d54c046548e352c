"""Operations endpoints, outside /v1 and without auth (metrics optionally behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.deps import ServiceDep

ops = APIRouter()


@ops.get("/health")
async def health() -> dict[str, str]:
    """Alive: the HTTP process answers."""
    return {"status": "ok"}


@ops.get("/ready")
async def ready(service: ServiceDep) -> JSONResponse:
    """Ready: every model listed in `preload` is loaded."""
    missing = service.missing_preloads()
    if missing:
        return JSONResponse({"status": "loading", "waiting_for": missing}, status_code=503)
    return JSONResponse({"status": "ready"})


@ops.get("/metrics")
async def metrics(request: Request, service: ServiceDep) -> Response:
    if request.app.state.settings.metrics_require_key:
        request.app.state.api_key_check(request.headers.get("authorization"))
    return Response(await service.scrape_metrics(), media_type=CONTENT_TYPE_LATEST)
