from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import _TestClientTransport

from server.app import create_app
from server.config import ModelSpec, Settings
from server.models.registry import ModelRegistry
from tests.contracts.openai_contract import check_responses_of
from tests.fakes import FakeEngine, FakeScript, fake_spec


class FakeLoader:
    """Builds a FakeEngine per model name; records loads."""

    def __init__(self) -> None:
        self.scripts: dict[str, FakeScript] = {}
        self.engines: dict[str, FakeEngine] = {}
        self.loads: list[str] = []

    def __call__(self, spec: ModelSpec) -> FakeEngine:
        self.loads.append(spec.name)
        engine = FakeEngine(self.scripts.get(spec.name))
        self.engines[spec.name] = engine
        return engine


@pytest.fixture(autouse=True)
def openai_schema_check(monkeypatch):
    """Every /v1 body the fast tier's test client receives is checked against OpenAI's published schema."""
    violations: list[str] = []
    check_responses_of(_TestClientTransport, monkeypatch, violations)
    yield
    assert not violations, "responses that break OpenAI's schema:\n" + "\n".join(violations[:20])


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def registry(loader: FakeLoader) -> ModelRegistry:
    return ModelRegistry([fake_spec("fake-model", "gpt-4o-mini"), fake_spec("other-model")], loader)


@pytest.fixture
def client(registry: ModelRegistry, tmp_path) -> Iterator[TestClient]:
    app = create_app(Settings(models_file=tmp_path / "unused.yaml"), registry=registry)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
