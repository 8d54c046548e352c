"""`GET /models`, `POST /models/load`, `POST /models/unload`: llama.cpp router mode's shapes, our statuses, and
every wrong body a 400 naming `model`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import HubSource, ModelSpec, PackageSource, PathSource, Settings
from server.errors import ModelUnavailableError
from server.models.registry import ModelRegistry
from tests.api.openai.test_routes import assert_openai_error
from tests.conftest import FakeLoader
from tests.fakes import fake_spec

MB = 1024 * 1024
ACTIONS = ["/models/load", "/models/unload"]


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def admin(tmp_path, loader) -> Iterator[TestClient]:
    weights = tmp_path / "on-disk.gguf"
    weights.write_bytes(b"\0" * MB)
    specs = [
        fake_spec("fake-model", "gpt-4o-mini"),
        ModelSpec(name="on-disk", source=PathSource(path=weights), keep_alive=None, description="one line"),
        ModelSpec(name="embedder", embedding=True, source=PackageSource(package="not-installed-pkg")),
        ModelSpec(name="hub", reranker=True, source=HubSource(repo_id="org/repo", filename="m.gguf", revision="r1")),
    ]
    app = create_app(Settings(models_file=tmp_path / "unused.yaml"), registry=ModelRegistry(specs, loader))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def entries(client: TestClient) -> dict[str, dict]:
    response = client.get("/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    return {entry["id"]: entry for entry in body["data"]}


def test_every_entry_is_listed_with_its_source_files_status_and_settings(admin):
    listed = entries(admin)
    assert list(listed) == ["fake-model", "on-disk", "embedder", "hub"]
    fake, on_disk, embedder, hub = listed.values()
    assert fake == {
        "id": "fake-model",
        "object": "model",
        "created": admin.app.state.created,
        "owned_by": "slm-server",
        "aliases": ["gpt-4o-mini"],
        "description": "",
        "kind": "chat",
        "source": {"kind": "path", "path": "/nonexistent.gguf"},
        "files_present": False,
        "status": {"value": "unloaded"},
        "resident_bytes": None,
        "in_flight": 0,
        "idle_s": None,
        "keep_alive": 300.0,
        "restarts": 0,
    }
    assert on_disk["files_present"] is True and on_disk["keep_alive"] is None and on_disk["description"] == "one line"
    assert embedder["kind"] == "embedding" and not embedder["files_present"]
    assert embedder["source"] == {"kind": "package", "package": "not-installed-pkg", "file": "*.gguf"}
    assert hub["kind"] == "reranker" and not hub["files_present"]
    assert hub["source"] == {"kind": "huggingface", "repo_id": "org/repo", "filename": "m.gguf", "revision": "r1"}


def test_load_then_unload_changes_the_status(admin, loader):
    loaded = admin.post("/models/load", json={"model": "on-disk"})
    assert loaded.status_code == 200, loaded.text
    body = loaded.json()
    assert body["success"] is True and body["data"]["id"] == "on-disk"
    assert body["data"]["status"] == {"value": "loaded"}
    assert body["data"]["resident_bytes"] >= MB  # no worker process to measure: the expected size, file included
    assert entries(admin)["on-disk"]["status"] == {"value": "loaded"}
    assert admin.post("/models/load", json={"model": "on-disk"}).status_code == 200  # already loaded: no-op
    assert loader.loads == ["on-disk"]

    unloaded = admin.post("/models/unload", json={"model": "on-disk"})
    assert unloaded.status_code == 200 and unloaded.json()["data"]["status"] == {"value": "unloaded"}
    assert loader.engines["on-disk"].closed
    listed = entries(admin)["on-disk"]
    assert listed["status"] == {"value": "unloaded"} and listed["resident_bytes"] is None
    assert admin.post("/models/unload", json={"model": "on-disk"}).status_code == 200  # not loaded: no-op


def test_an_alias_loads_its_model_and_answers_with_its_name(admin):
    response = admin.post("/models/load", json={"model": "gpt-4o-mini"})
    assert response.status_code == 200 and response.json()["data"]["id"] == "fake-model"
    assert admin.app.state.registry.loaded().keys() == {"fake-model"}


def test_a_busy_model_is_not_unloaded(admin, loader):
    admin.post("/models/load", json={"model": "fake-model"})
    loader.engines["fake-model"].in_flight = 1  # a stream is running
    assert entries(admin)["fake-model"]["in_flight"] == 1
    response = admin.post("/models/unload", json={"model": "fake-model"})
    error = assert_openai_error(response, 409, code="model_busy", param="model")
    assert "serving 1 request" in error["message"] and response.headers["Retry-After"] == "1"
    assert not loader.engines["fake-model"].closed
    loader.engines["fake-model"].in_flight = 0
    assert admin.post("/models/unload", json={"model": "fake-model"}).status_code == 200


@pytest.mark.parametrize("path", ACTIONS)
def test_an_unknown_model_is_a_404_naming_it(admin, path):
    error = assert_openai_error(admin.post(path, json={"model": "nope"}), 404, code="model_not_found", param="model")
    assert "`nope`" in error["message"]


def test_a_model_not_pulled_is_a_404_saying_so(admin):
    assert_openai_error(admin.post("/models/load", json={"model": "hub"}), 404, code="model_not_pulled")
    assert entries(admin)["hub"]["status"]["failed"] is True


def test_a_failed_load_is_a_503_and_the_model_shows_failed_until_it_loads(admin, loader):
    class FailsOnce(FakeLoader):
        def __call__(self, spec):
            if not self.loads:
                self.loads.append(spec.name)
                raise ModelUnavailableError("The model `fake-model` failed to load; see the server log.")
            return super().__call__(spec)

    failing = FailsOnce()
    admin.app.state.registry._loader = failing
    assert_openai_error(admin.post("/models/load", json={"model": "fake-model"}), 503, code="model_unavailable")
    status = entries(admin)["fake-model"]["status"]
    assert status == {
        "value": "unloaded",
        "failed": True,
        "message": "The model `fake-model` failed to load; see the server log.",
    }
    assert admin.post("/models/load", json={"model": "fake-model"}).status_code == 200
    assert entries(admin)["fake-model"]["status"] == {"value": "loaded"}


def test_a_crashed_worker_shows_as_failed_with_a_restart(admin, loader):
    admin.post("/models/load", json={"model": "fake-model"})
    loader.engines["fake-model"].crashed = True
    entry = entries(admin)["fake-model"]
    assert entry["status"]["value"] == "unloaded" and entry["status"]["failed"] is True
    assert "stopped unexpectedly" in entry["status"]["message"] and entry["restarts"] == 1


WRONG_BODIES = [
    ({"model": 5}, "model"),
    ({"model": None}, "model"),
    ({"model": ["fake-model"]}, "model"),
    ({"model": ""}, "model"),
    ({"model": "x" * 513}, "model"),
    ({}, "model"),
]


@pytest.mark.parametrize("path", ACTIONS)
@pytest.mark.parametrize(("body", "param"), WRONG_BODIES)
def test_a_wrong_model_field_is_a_400_naming_it(admin, path, body, param):
    error = assert_openai_error(admin.post(path, json=body), 400, param=param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ACTIONS)
@pytest.mark.parametrize("raw", [b"[1]", b'"fake-model"', b"{not json", b""])
def test_a_body_that_is_not_a_json_object_is_a_400(admin, path, raw):
    assert_openai_error(admin.post(path, content=raw), 400, code="invalid_json")


def test_the_openai_model_list_is_unchanged(admin):
    response = admin.get("/v1/models")  # checked against OpenAI's schema by the contract fixture
    assert response.status_code == 200
    assert [card["id"] for card in response.json()["data"]] == ["fake-model", "on-disk", "embedder", "hub"]
