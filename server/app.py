"""`create_app()`: builds settings, registry, metrics, pipeline and the protocol routers into a FastAPI app. No
globals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server import __version__
from server.api.admin.access import AdminAccess
from server.api.admin.routes import admin
from server.api.admin.stats import StatsWindow
from server.api.anthropic import errors as anthropic_errors
from server.api.anthropic import routes as anthropic_routes
from server.api.console.routes import console_routes
from server.api.llamacpp.rerank import rerank_routes
from server.api.llamacpp.routes import extensions
from server.api.openai.batch_lines import BatchLines
from server.api.openai.batches import batches
from server.api.openai.files import files
from server.api.openai.routes import v1
from server.batch.runner import BatchRunner
from server.batch.store import BatchStore
from server.config import ConfigError, ModelSpec, Settings, load_models_file
from server.errors import APIError
from server.generation.embedding import Embedder
from server.generation.images import ImageLimits, ImageMemory
from server.generation.limits import RequestLimits
from server.generation.pipeline import GenerationPipeline
from server.generation.rerank import Reranker
from server.http.access_guard import AccessGuard, is_loopback_name
from server.http.deps import APIKeyCheck, require_api_key
from server.http.error_handlers import install_error_handlers
from server.http.error_shapes import ErrorShapes
from server.http.middleware import RequestMiddleware
from server.http.ops import ops
from server.http.sse import ShutdownNotice
from server.metrics import Metrics
from server.models.events import ModelEventHub
from server.models.loaders import worker_loader
from server.models.operations import ModelOperations
from server.models.registry import ModelRegistry
from server.models.residency import Budget

logger = logging.getLogger(__name__)


def budget_of(settings: Settings) -> Budget:
    return Budget(
        memory_bytes=settings.memory_budget, max_models=settings.max_loaded_models, wait_s=settings.load_wait_s
    )


def batch_width(registry: ModelRegistry, endpoint: str, model: str | None) -> int:
    """How many lines of a batch run at once: as many as the model has sequences (each line is admitted only
    into a free one); embeddings one at a time."""
    if endpoint == "/v1/embeddings" or model is None:
        return 1
    try:
        spec: ModelSpec = registry.resolve(model)
    except APIError:
        return 1  # an unknown model: each line answers 404 at once
    return spec.parallel


def create_app(settings: Settings | None = None, *, registry: ModelRegistry | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    if registry is None:
        models = load_models_file(settings.models_file).models
        registry = ModelRegistry(models, worker_loader(settings), budget=budget_of(settings))
    for name in settings.preload:
        registry.resolve(name)  # an unknown preload name is a configuration error, raised now
    metrics = Metrics(restarts=lambda: registry.restarts)
    registry.on_load = lambda name, seconds: metrics.model_load.labels(name).observe(seconds)
    model_events = ModelEventHub()
    registry.on_event = model_events.publish
    limits = RequestLimits(
        max_messages=settings.max_messages,
        max_embedding_inputs=settings.max_embedding_inputs,
        max_embedding_tokens=settings.max_embedding_tokens,
        grammar_step_limit_s=settings.grammar_step_limit_s,
    )
    image_limits = ImageLimits(
        max_images=settings.max_images_per_request,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        remote_hosts=settings.remote_image_hosts,
        remote_timeout_s=settings.remote_image_timeout_s,
    )
    pipeline = GenerationPipeline(
        registry,
        metrics=metrics,
        limits=limits,
        request_timeout_s=settings.request_timeout_s,
        image_limits=image_limits,
        image_memory=ImageMemory(settings.image_memory_bytes),
    )
    embedder = Embedder(registry, limits=limits, request_timeout_s=settings.request_timeout_s)
    reranker = Reranker(registry, limits=limits, request_timeout_s=settings.request_timeout_s)
    operations = ModelOperations(registry, settings.preload)
    batch_store = BatchStore(settings.data_dir, clock=time.time)
    batch_runner = BatchRunner(
        batch_store,
        BatchLines(pipeline, embedder),
        capacity=lambda endpoint, model: batch_width(registry, endpoint, model),
        metrics=metrics,
        output_ttl_s=settings.batch_output_ttl_s,
        max_line_bytes=settings.max_body_bytes,  # a line is one request body: the live endpoint's bound
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batch_runner.prepare()
        tasks = [
            asyncio.create_task(operations.preload()),
            asyncio.create_task(registry.run_sweeper()),
            asyncio.create_task(batch_runner.run()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await registry.close()
            batch_store.close()

    def reload_models() -> bool:
        """Re-read the models file into the registry (SIGHUP); a broken file is logged and changes nothing."""
        try:
            models = load_models_file(settings.models_file)
        except ConfigError as exc:
            logger.error("models file not reloaded: %s", exc)
            return False
        registry.reload(models.models)
        return True

    app = FastAPI(title="slm-server", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.pipeline = pipeline
    app.state.embedder = embedder
    app.state.reranker = reranker
    app.state.operations = operations
    app.state.batch_store = batch_store
    app.state.batch_runner = batch_runner
    app.state.created = int(time.time())
    app.state.metrics = metrics
    client_keys, admin_keys = settings.all_api_keys(), settings.all_admin_keys()
    # An admin key opens the client routes too, wherever those need a key (a console also chats).
    app.state.api_key_check = APIKeyCheck(client_keys + admin_keys if client_keys else ())
    app.state.admin_access = AdminAccess(
        admin_keys,
        app.state.api_key_check,
        open_without_key=not client_keys and not admin_keys and is_loopback_name(settings.host),
    )
    app.state.model_events = model_events
    app.state.admin_stats = StatsWindow()
    app.state.draining = False
    app.state.shutdown_notice = ShutdownNotice()  # given by the server shortly before its grace period ends
    app.state.reload_models = reload_models
    app.state.error_shapes = error_shapes = ErrorShapes()
    error_shapes.register("/v1/messages", anthropic_errors.error_body)  # Anthropic clients get Anthropic's shape
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(files)
    app.include_router(batches)
    app.include_router(anthropic_routes.router, dependencies=[Depends(require_api_key)])
    app.include_router(extensions)
    app.include_router(rerank_routes)
    app.include_router(ops)
    app.include_router(admin)
    app.include_router(console_routes())  # the web console's pages and files: / and /ui/...
    # Inside CORS, so that preflights are CORS's to answer and an allowed page can read a refusal.
    app.add_middleware(
        AccessGuard,
        loopback_only=settings.loopback_guard
        and not app.state.api_key_check.enabled
        and is_loopback_name(settings.host),
        allowed_origins=settings.cors_origins,
        api_key_check=app.state.api_key_check,
        keyed_paths=[
            url for url in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if url
        ],
        error_shapes=error_shapes,
    )
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
        # An upload's multipart framing and form fields come on top of the file itself.
        body_limits={"/v1/files": settings.max_file_bytes + 64 * 1024},
        draining=lambda: app.state.draining,
        error_shapes=error_shapes,
    )
    return app
