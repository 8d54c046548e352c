"""`/v1/models`: every configured model as an OpenAI model card, with slm-server's `available`, `loaded` and
`memory` (the estimate made before loading, and the worker's resident memory while loaded)."""

from __future__ import annotations

import asyncio

from server.api.openai.schemas import ModelCard, ModelList, ModelMemory
from server.config import ModelSpec
from server.engine import Engine
from server.models.registry import ModelRegistry
from server.models.residency import resident_size


async def model_list(registry: ModelRegistry, created: int) -> ModelList:
    return ModelList(data=await _cards(registry, [(spec.name, spec) for spec in registry.specs()], created))


async def model_card(registry: ModelRegistry, model_id: str, created: int) -> ModelCard:
    [card] = await _cards(registry, [(model_id, registry.resolve(model_id))], created)
    return card


async def _cards(registry: ModelRegistry, models: list[tuple[str, ModelSpec]], created: int) -> list[ModelCard]:
    loaded = registry.loaded()
    engines = [loaded.get(spec.name) for _, spec in models]
    engines = [engine if engine is not None and engine.alive else None for engine in engines]
    # A model file's header is read the first time (then the registry keeps the estimate), and /proc: in a thread.
    memory = await asyncio.to_thread(
        lambda: [_memory(registry, spec, engine) for (_, spec), engine in zip(models, engines, strict=True)]
    )
    return [
        ModelCard(
            id=model_id,
            created=created,
            owned_by=spec.owned_by,
            available=registry.available(spec),
            loaded=engine is not None,
            memory=used,
            capabilities=["vision"] if spec.mmproj is not None else [],
        )
        for (model_id, spec), engine, used in zip(models, engines, memory, strict=True)
    ]


def _memory(registry: ModelRegistry, spec: ModelSpec, engine: Engine | None) -> ModelMemory | None:
    estimate = registry.memory_estimate(spec)
    if estimate is None:
        return None
    parts = estimate.as_dict()
    resident = None if engine is None else resident_size(engine)
    return ModelMemory(estimated=parts.pop("total"), **parts, resident=resident)
