"""`/v1/models` cards carry the memory a model's worker is estimated to take (server/engine/memory.py) and, while
it is loaded, what it measures (fake engines have no process: none)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ModelSpec, PathSource, Settings
from server.engine.memory import estimate_memory
from server.models.registry import ModelRegistry
from tests.conftest import FakeLoader
from tests.fakes import fake_spec
from tests.gguf_factory import write_tiny_llama


def test_cards_show_the_estimate_of_a_model_whose_file_is_here(tmp_path):
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    spec = ModelSpec(name="tiny", source=PathSource(path=path), n_ctx=512, parallel=2)
    registry = ModelRegistry([spec, fake_spec("elsewhere")], FakeLoader())
    app = create_app(Settings(models_file=tmp_path / "unused.yaml"), registry=registry)
    with TestClient(app) as client:
        cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
        estimate = estimate_memory(spec, path)
        assert cards["tiny"]["memory"] == {
            "estimated": estimate.total,
            "weights": path.stat().st_size,
            "kv_cache": estimate.kv_cache,
            "compute": estimate.compute,
            "process": estimate.process,
            "resident": None,
        }
        assert cards["elsewhere"]["memory"] is None  # its file is not on this machine
        assert client.get("/v1/models/tiny").json()["memory"]["estimated"] == estimate.total
