from __future__ import annotations

import os
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


@pytest.fixture(scope="session", autouse=True)
def data_home(tmp_path_factory) -> Iterator[None]:
    """Files and batches of every app (and server process) the tests start live in a fresh folder, never in the
    user's data directory (Settings.data_dir defaults under $XDG_DATA_HOME)."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved


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
