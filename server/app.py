"""`create_app()`: builds settings, registry and service, and wires them into a FastAPI app. No globals."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import __version__
from server.config import Settings, load_models_file
from server.error_handlers import install_error_handlers
from server.registry import ModelRegistry
from server.routes import health, v1
from server.service import InferenceService


def create_app(settings: Settings | None = None, *, registry: ModelRegistry | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    if registry is None:
        registry = ModelRegistry(load_models_file(settings.models_file).models)
    service = InferenceService(registry, created=int(time.time()))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await registry.close()

    app = FastAPI(title="slm-server", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.service = service
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(health)
    return app
