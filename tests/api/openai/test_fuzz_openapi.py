"""Schemathesis fuzzes the app's own OpenAPI (fake engines behind the real app): no 5xx, OpenAI-shaped errors.

Bounded: a fixed number of generated examples per operation, derandomized so a run is repeatable. Most
generated bodies name a served model, so typed bodies that pass validation reach the service and the engine.
"""

from __future__ import annotations

import json
import zlib

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
from hypothesis import HealthCheck, settings  # noqa: E402

from server.app import create_app  # noqa: E402
from server.config import Settings  # noqa: E402
from server.models.registry import ModelRegistry  # noqa: E402
from tests.conftest import FakeLoader  # noqa: E402
from tests.fakes import FakeScript, fake_spec  # noqa: E402


def _app():
    loader = FakeLoader()
    loader.scripts["fake-model"] = FakeScript(n_ctx=4096)
    loader.scripts["embed-model"] = FakeScript(n_ctx=4096, embedding_dims=8)
    loader.scripts["rerank-model"] = FakeScript(n_ctx=4096, reranker=True)
    reranker = fake_spec("rerank-model").model_copy(update={"reranker": True})
    embedder = fake_spec("embed-model").model_copy(update={"embedding": True})
    models = [fake_spec("fake-model", "gpt-4o-mini"), embedder, reranker]
    return create_app(Settings(), registry=ModelRegistry(models, loader))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
SERVED = {"/v1/embeddings": "embed-model", "/v1/rerank": "rerank-model", "/rerank": "rerank-model"}


@pytest.fixture
def served_app():
    """A fresh app per operation: schemathesis ends an app's lifespan (closing its registry) after each test."""
    return _app()


def _aim_at_a_served_model(case) -> None:
    """Three bodies in four (chosen by a hash of the body, so runs repeat) name a model that is served."""
    if not (isinstance(case.body, dict) and isinstance(case.body.get("model"), str)):
        return
    if zlib.crc32(json.dumps(case.body, sort_keys=True, default=str).encode()) % 4:
        case.body["model"] = SERVED.get(case.path, "fake-model")


@schema.parametrize()
# 60 examples per operation: drawing bodies from the large chat schemas is most of the fast tier's time.
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_openai_error_bodies(case, served_app):
    _aim_at_a_served_model(case)
    response = case.call(app=served_app)
    assert response.status_code < 500, response.text
    if case.path.startswith("/v1/messages") and response.status_code >= 400:  # Anthropic's error shape
        body = response.json()
        assert body["type"] == "error" and {"type", "message"} <= set(body["error"]), body
    elif case.path.startswith("/v1") and response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert {"message", "type", "param", "code"} <= set(body["error"]), body
