"""The Ray Serve application: `build(args)` is its import path (deploy/ray/serve.yaml).

Three deployments. `ModelReplica` runs the whole server (create_app: registry, batching engine, worker processes,
metrics) and answers requests forwarded to it; its `@serve.multiplexed` loader makes a model resident through the
registry, so Ray routes each request to a replica that already has the model it names. `Ingress` takes the HTTP
requests, reads the model from the body and forwards each request with that model as its multiplexed model id,
streaming the answer back. `MetricsBoard` collects each replica's /metrics, which the ingress serves as one
exposition labelled by replica. The only module that imports Ray."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from server.app import create_app
from server.cluster.bridge import AppBridge, RequestHead, ResponseHead
from server.cluster.ingress import IngressCore, ModelRouter
from server.cluster.metrics_merge import merge_expositions
from server.config import Settings, load_models_file
from server.errors import APIError
from server.http.deps import APIKeyCheck

logger = logging.getLogger(__name__)

METRICS_PUSH_S = 2.0  # how often a replica hands its metrics to the board
METRICS_STALE_S = 3 * METRICS_PUSH_S  # a replica silent this long is gone (stopped, or its process died)
REPLICA_HEADER = b"x-slm-replica"


def replica_settings(fields: Mapping[str, Any]) -> Settings:
    """The server's settings in a replica: its `SLM_*` environment (the config's runtime_env), then the
    application's args. The loopback guard is on, as `slm-server serve` has it."""
    settings = Settings.from_env(**dict(fields))
    return settings.model_copy(update={"loopback_guard": True})


@serve.deployment(
    name="MetricsBoard",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},  # a report every METRICS_PUSH_S from each replica
)
class MetricsBoard:
    def __init__(self) -> None:
        self._reports: dict[str, tuple[float, float, str]] = {}  # replica -> (received, taken, exposition)

    def report(self, replica: str, taken: float, text: str) -> None:
        self._reports[replica] = (time.monotonic(), taken, text)

    def render(self) -> bytes:
        now = time.monotonic()
        self._reports = {r: report for r, report in self._reports.items() if now - report[0] < METRICS_STALE_S}
        return merge_expositions(
            {replica: text for replica, (_, _, text) in self._reports.items()},
            {replica: taken for replica, (_, taken, _) in self._reports.items()},
        )


@serve.deployment(name="ModelReplica", max_ongoing_requests=8, ray_actor_options={"num_cpus": 1})
class ModelReplica:
    async def __init__(self, fields: Mapping[str, Any], board: DeploymentHandle) -> None:
        # Serving never reaches the network, as with `slm-server serve`.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        self._settings = settings = replica_settings(fields)
        self._bridge = AppBridge(create_app(settings))
        await self._bridge.start()
        self._tag = serve.get_replica_context().replica_tag
        self._board = board
        registry = self._bridge.app.state.registry

        async def make_resident(model: str) -> str:
            await registry.engine(model)  # loads it unless loaded; its load is counted in slm_model_load_seconds
            return model

        # Ray keeps as many models per replica as the server's own budget does (SLM_MAX_LOADED_MODELS), so that
        # the models Ray routes here are the ones the registry keeps loaded.
        self._resident = serve.multiplexed(max_num_models_per_replica=settings.max_loaded_models)(make_resident)
        self._pusher = asyncio.create_task(self._push_metrics(), name="metrics-push")

    async def handle(self, head: RequestHead, body: bytes) -> AsyncIterator[ResponseHead | bytes]:
        model = serve.get_multiplexed_model_id()
        if model:
            try:
                await self._resident(model)
            except Exception:
                # The app answers the failed load in the protocol's own shape (a 503 saying why).
                logger.warning("model %s did not load on replica %s", model, self._tag, exc_info=True)
        async for item in self._bridge.call(head, body):
            if isinstance(item, ResponseHead):
                item = ResponseHead(item.status, [*item.headers, (REPLICA_HEADER, self._tag.encode())])
            yield item

    async def _push_metrics(self) -> None:
        keys = self._settings.all_api_keys()
        headers = [(b"authorization", f"Bearer {keys[0]}".encode())] if keys else []
        head = RequestHead("GET", "/metrics", headers=[(b"host", b"127.0.0.1"), *headers], client=("127.0.0.1", 0))
        while True:
            try:
                taken = time.time()
                text = b"".join([part async for part in self._bridge.call(head, b"") if isinstance(part, bytes)])
                await self._board.report.remote(self._tag, taken, text.decode())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("metrics of replica %s not reported", self._tag, exc_info=True)
            await asyncio.sleep(METRICS_PUSH_S)

    async def __del__(self) -> None:
        self._pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pusher
        await self._bridge.stop()


@serve.deployment(name="Ingress", max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class Ingress:
    def __init__(self, fields: Mapping[str, Any], replicas: DeploymentHandle, board: DeploymentHandle) -> None:
        settings = replica_settings(fields)
        self._replicas = replicas
        self._board = board
        self._core = IngressCore(
            ModelRouter(load_models_file(settings.models_file).models),
            self._forward,
            max_body_bytes=settings.max_body_bytes,
            proxy_headers=[b"x-request-id"],  # Ray's proxy sends the request's own (it passes it to the replica)
        )
        self._metrics_check = APIKeyCheck(
            settings.all_api_keys() + settings.all_admin_keys() if settings.metrics_require_key else ()
        )

    async def __call__(self, request: Request) -> Response:
        if request.url.path == "/metrics" and request.method == "GET":
            try:
                self._metrics_check(request.headers.get("authorization"))
            except APIError as exc:
                return self._core.error_response("/metrics", exc)
            text = await self._board.render.remote()
            return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")
        return await self._core(request)

    async def _forward(self, head: RequestHead, body: bytes, model: str | None) -> AsyncIterator[ResponseHead | bytes]:
        handle = self._replicas.options(stream=True, multiplexed_model_id=model or "")
        answer = handle.handle.remote(head, body)
        finished = False
        try:
            async for item in answer:
                yield item
            finished = True
        finally:
            if not finished:
                answer.cancel()  # the client left: the replica's request is cancelled, freeing its sequence


def build(args: dict[str, Any]) -> Any:
    """The application, from the config's `args`: any server setting by its field name (`models_file`,
    `max_loaded_models`, `api_key_file`, ...), over the replicas' `SLM_*` environment. Checked here, on the
    machine that deploys, so that a bad setting or models file fails the deploy rather than every replica."""
    fields = dict(args or {})
    if "models_file" in fields:
        fields["models_file"] = str(Path(fields["models_file"]).resolve())
    settings = replica_settings(fields)
    load_models_file(settings.models_file)
    board = MetricsBoard.bind()
    return Ingress.bind(fields, ModelReplica.bind(fields, board), board)
