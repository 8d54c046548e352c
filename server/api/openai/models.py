"""`/v1/models`: every configured model as an OpenAI model card, with slm-server's `available` and `loaded`."""

from __future__ import annotations

from server.api.openai.schemas import ModelCard, ModelList
from server.config import ModelSpec
from server.models.registry import ModelRegistry


def model_list(registry: ModelRegistry, created: int) -> ModelList:
    return ModelList(data=[_card(registry, spec.name, spec, created) for spec in registry.specs()])


def model_card(registry: ModelRegistry, model_id: str, created: int) -> ModelCard:
    return _card(registry, model_id, registry.resolve(model_id), created)


def _card(registry: ModelRegistry, model_id: str, spec: ModelSpec, created: int) -> ModelCard:
    engine = registry.loaded().get(spec.name)
    return ModelCard(
        id=model_id,
        created=created,
        owned_by=spec.owned_by,
        available=registry.available(spec),
        loaded=engine is not None and engine.alive,
    )
