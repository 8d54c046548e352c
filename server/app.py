"""`create_app()`: builds settings, registry, metrics and service, and wires them into a FastAPI app. No globals."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server import __version__
from server.config import Settings, load_models_file
from server.deps import APIKeyCheck
from server.error_handlers import install_error_handlers
from server.metrics import Metrics
from server.middleware import RequestMiddleware
from server.ops import ops
from server.params import RequestLimits
from server.registry import ModelRegistry
from server.routes import v1
from server.service import InferenceService


def create_app(settings: Settings | None = None, *, registry: ModelRegistry | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    if registry is None:
        registry = ModelRegistry(load_models_file(settings.models_file).models)
    for name in settings.preload:
        registry.resolve(name)  # an unknown preload name is a configuration error, raised now
    metrics = Metrics(restarts=lambda: registry.restarts)
    registry.on_load = lambda name, seconds: metrics.model_load.labels(name).observe(seconds)
    service = InferenceService(
        registry,
        metrics=metrics,
        limits=RequestLimits(max_messages=settings.max_messages, max_embedding_inputs=settings.max_embedding_inputs),
        request_timeout_s=settings.request_timeout_s,
        preload=settings.preload,
        created=int(time.time()),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        preloading = asyncio.create_task(service.preload())
        try:
            yield
        finally:
            preloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await preloading
            await registry.close()

    app = FastAPI(title="slm-server", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.service = service
    app.state.metrics = metrics
    app.state.api_key_check = APIKeyCheck(settings.all_api_keys())
    app.state.draining = False
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(ops)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        draining=lambda: app.state.draining,
    )
    return app
