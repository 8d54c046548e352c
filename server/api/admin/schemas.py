"""The admin API's wire types: llama.cpp router mode's shapes (`data` of models with an OpenAI card's `id`,
`object`, `created`, `owned_by`, and a `status` object; `{"success": true}` answers), with slm-server's fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from server.config import HubSource, ModelSpec, PackageSource, PathSource, SafetensorsSource
from server.models.events import ModelState, ModelStatusValue

MAX_MODEL_NAME_CHARS = 512  # a name is echoed in a 404's message


class ModelRequest(BaseModel):
    """`POST /models/load` and `/models/unload`: `{"model": "name or alias"}`, as llama.cpp's router takes."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME_CHARS)]


class _WithoutNulls(BaseModel):
    """Fields that do not apply are left out, not sent as null."""

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ModelSource(_WithoutNulls):
    """Where the model's file comes from: its kind and location (models.yaml holds no secrets; none are shown)."""

    kind: Literal["path", "package", "huggingface", "safetensors"]
    path: str | None = None
    package: str | None = None
    file: str | None = None
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    dir: str | None = None


class ModelStatus(_WithoutNulls):
    """llama.cpp's `status` object: `value` loading / loaded / unloaded, `failed` after a failed load or a crash
    (until the model next loads), with slm-server's `message` saying what failed."""

    value: ModelStatusValue
    failed: bool | None = None
    message: str | None = None


class AdminModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    aliases: list[str]
    description: str
    kind: Literal["chat", "embedding", "reranker"]
    source: ModelSource
    files_present: bool
    status: ModelStatus
    resident_bytes: int | None  # while loaded: the worker's resident memory
    in_flight: int  # requests using it now
    idle_s: float | None  # while loaded and idle: seconds since its last use
    keep_alive: float | None  # seconds an idle model stays loaded; null: until evicted
    restarts: int  # workers of it that died


class AdminModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdminModel]


class ModelActionResult(BaseModel):
    """llama.cpp's `{"success": true}`, with the model's entry as `GET /models` now shows it."""

    success: bool = True
    data: AdminModel


def admin_model(spec: ModelSpec, state: ModelState, *, files_present: bool, created: int) -> AdminModel:
    failed = state.failure is not None
    return AdminModel(
        id=spec.name,
        created=created,
        owned_by=spec.owned_by,
        aliases=list(spec.aliases),
        description=spec.description,
        kind="embedding" if spec.embedding else "reranker" if spec.reranker else "chat",
        source=model_source(spec),
        files_present=files_present,
        status=ModelStatus(value=state.status, failed=True if failed else None, message=state.failure),
        resident_bytes=state.resident_bytes,
        in_flight=state.in_flight,
        idle_s=None if state.idle_s is None else round(state.idle_s, 3),
        keep_alive=spec.keep_alive,
        restarts=state.restarts,
    )


def model_source(spec: ModelSpec) -> ModelSource:
    source = spec.source
    if isinstance(source, PackageSource):
        return ModelSource(kind="package", package=source.package, file=source.file)
    if isinstance(source, HubSource):
        return ModelSource(
            kind="huggingface", repo_id=source.repo_id, filename=source.filename, revision=source.revision
        )
    if isinstance(source, SafetensorsSource):
        model = source.safetensors
        return ModelSource(kind="safetensors", package=model.package, dir=str(model.dir))
    assert isinstance(source, PathSource)
    return ModelSource(kind="path", path=str(source.path))
