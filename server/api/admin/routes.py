"""Thin handlers of the admin API (see the package docstring); every route needs admin access (access.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from server.api.admin.access import require_admin
from server.api.admin.schemas import AdminModel, AdminModelList, ModelActionResult, ModelRequest, admin_model
from server.api.admin.stats import StatsWindow, admin_stats, read_totals
from server.config import ModelSpec
from server.errors import APIError, ShuttingDownError, SlowClientError
from server.http import sse
from server.http.deps import RecordDep, json_body, request_body_doc
from server.metrics import RequestRecord
from server.models.events import Subscription
from server.models.registry import ModelRegistry
from server.models.sources import files_present

HEARTBEAT_S = 15.0  # an idle event stream sends a comment this often: proxies keep it open, a gone client is seen
# How often an idle event stream looks whether the server is draining: it then ends at once, since the server
# waits for open responses before it stops (a console left open would hold every shutdown for the grace period).
DRAIN_CHECK_S = 0.5

admin = APIRouter(dependencies=[Depends(require_admin)], tags=["admin"])

ModelBody = Annotated[ModelRequest, Depends(json_body(ModelRequest))]


def _json(obj: BaseModel) -> JSONResponse:
    return JSONResponse(obj.model_dump(mode="json"))


async def _entries(request: Request, specs: list[ModelSpec]) -> list[AdminModel]:
    registry: ModelRegistry = request.app.state.registry
    present = await asyncio.to_thread(lambda: [files_present(spec) for spec in specs])  # looks at the disk
    created = request.app.state.created
    return [
        admin_model(spec, registry.state(spec), files_present=here, created=created)
        for spec, here in zip(specs, present, strict=True)
    ]


@admin.get("/models")
async def list_models(request: Request) -> JSONResponse:
    """Every models.yaml entry: source, files present, status, resident memory, keep_alive, aliases."""
    return _json(AdminModelList(data=await _entries(request, request.app.state.registry.specs())))


@admin.post("/models/load", openapi_extra=request_body_doc(ModelRequest))
async def load_model(request: Request, body: ModelBody, record: RecordDep) -> JSONResponse:
    """Load a model (answered once it is loaded; at once if it already is)."""
    registry: ModelRegistry = request.app.state.registry
    spec = _target(registry, body, record)
    await registry.engine(spec.name)
    return await _result(request, spec)


@admin.post("/models/unload", openapi_extra=request_body_doc(ModelRequest))
async def unload_model(request: Request, body: ModelBody, record: RecordDep) -> JSONResponse:
    """Unload an idle model (at once if it is not loaded); a model serving requests, or loading, is a 409."""
    registry: ModelRegistry = request.app.state.registry
    spec = _target(registry, body, record)
    await registry.unload(spec.name)
    return await _result(request, spec)


def _target(registry: ModelRegistry, body: ModelRequest, record: RequestRecord) -> ModelSpec:
    spec = registry.resolve(body.model)
    record.model = spec.name
    return spec


async def _result(request: Request, spec: ModelSpec) -> JSONResponse:
    """The entry as GET /models shows it, once the action is done."""
    return _json(ModelActionResult(data=(await _entries(request, [spec]))[0]))


# Not in the OpenAPI schema: an endless stream is no operation a schema-driven client (or fuzzer) can call and finish.
@admin.get("/models/sse", response_class=Response, include_in_schema=False)
async def model_events(request: Request, record: RecordDep) -> Response:
    """Model events as llama.cpp's router sends them: `data: {"model", "event": "model_status", "data": {"status",
    ...}}`. Subscribed before the response starts, so nothing after the headers is missed."""
    state = request.app.state
    subscription: Subscription = state.model_events.subscribe()
    frames = _frames(subscription, draining=lambda: state.draining)
    # `closing`: unsubscribed even when the client leaves before the body starts (then `frames` never runs).
    return sse.event_stream(
        request, record, lambda notice, slow_client: _event_bytes(frames, notice, slow_client), closing=subscription
    )


async def _event_bytes(
    frames: AsyncIterator[bytes], notice: sse.ShutdownNotice, on_slow_client: Callable[[], None]
) -> AsyncIterator[bytes]:
    try:
        async for chunk in sse.until_shutdown(frames, notice):
            yield chunk
    except APIError as exc:  # dropped for reading too slowly, or the server shutting down
        if isinstance(exc, SlowClientError):
            on_slow_client()
        yield sse.event(exc.body().model_dump(mode="json"))


async def _frames(subscription: Subscription, draining: Callable[[], bool]) -> AsyncIterator[bytes]:
    """Each event as a `data:` frame, a comment after HEARTBEAT_S without one; ShuttingDownError once draining."""
    async with contextlib.aclosing(subscription):
        idle_s = 0.0
        while True:
            next_event = asyncio.ensure_future(anext(subscription))
            try:
                while not next_event.done():
                    await asyncio.wait({next_event}, timeout=DRAIN_CHECK_S)
                    if next_event.done():
                        break
                    if draining():
                        raise ShuttingDownError()
                    idle_s += DRAIN_CHECK_S
                    if idle_s >= HEARTBEAT_S:
                        idle_s = 0.0
                        yield b": keep-alive\n\n"
            finally:
                next_event.cancel()  # a no-op once it is done
            idle_s = 0.0
            yield sse.event(next_event.result().wire())


@admin.get("/admin/stats")
async def stats(request: Request) -> JSONResponse:
    """Per model: requests and generated tokens (totals, and per second over the last ~10 s), mean time to first
    token, queue depth, loads and worker restarts; and the latest model events."""
    state = request.app.state
    registry: ModelRegistry = state.registry
    window: StatsWindow = state.admin_stats
    current = read_totals(state.metrics, window.now())
    base = window.base_for(current)
    counters = await state.operations.counters()  # fresh from every live worker, as /metrics reads them
    loaded = [name for name, engine in registry.loaded().items() if engine.alive]
    names = [spec.name for spec in registry.specs()]
    return _json(admin_stats(names, loaded, current, base, counters, registry.restarts, state.model_events.recent))
