"""Who may use the admin API: admin keys, never client keys; open without a key only on loopback with no key."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.cli import _parser
from server.config import ConfigError, Settings
from server.models.registry import ModelRegistry
from tests.api.openai.test_routes import CHAT, HELLO, assert_openai_error
from tests.conftest import FakeLoader
from tests.fakes import fake_spec

ADMIN_ROUTES = [
    ("GET", "/models", None),
    ("POST", "/models/load", {"model": "fake-model"}),
    ("POST", "/models/unload", {"model": "fake-model"}),
    ("GET", "/admin/stats", None),
]


def make_client(tmp_path: Path, **settings) -> TestClient:
    registry = ModelRegistry([fake_spec("fake-model")], FakeLoader())
    return TestClient(create_app(Settings(models_file=tmp_path / "unused.yaml", **settings), registry=registry))


def ask(client: TestClient, method: str, path: str, body: dict | None, key: str | None = None):
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_no_key_at_all_on_loopback_is_open_as_before(tmp_path, method, path, body):
    with make_client(tmp_path) as client:
        assert ask(client, method, path, body).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_with_admin_keys_only_an_admin_key_opens_the_admin_api(tmp_path, method, path, body):
    with make_client(tmp_path, api_keys=["client-key"], admin_keys=["admin-key"]) as client:
        assert ask(client, method, path, body, "admin-key").status_code == 200
        assert_openai_error(ask(client, method, path, body), 401, code="invalid_api_key")
        assert_openai_error(ask(client, method, path, body, "wrong-key"), 401, code="invalid_api_key")
        error = assert_openai_error(ask(client, method, path, body, "client-key"), 403, code="admin_key_required")
        assert "client API key" in error["message"]


def test_an_ordinary_client_key_cannot_unload_a_model_but_serves_requests(tmp_path):
    with make_client(tmp_path, api_keys=["client-key"], admin_keys=["admin-key"]) as client:
        assert client.post(CHAT, json=HELLO, headers={"Authorization": "Bearer client-key"}).status_code == 200
        client_key = {"Authorization": "Bearer client-key"}
        refused = client.post("/models/unload", json={"model": "fake-model"}, headers=client_key)
        assert_openai_error(refused, 403, code="admin_key_required")
        assert client.app.state.registry.loaded()  # still loaded
        # The admin key serves the client API too (a console also chats).
        assert client.post(CHAT, json=HELLO, headers={"Authorization": "Bearer admin-key"}).status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Bearer admin-key"}).status_code == 200


def test_admin_keys_alone_leave_the_client_api_as_it_was(tmp_path):
    with make_client(tmp_path, admin_keys=["admin-key"]) as client:
        assert client.post(CHAT, json=HELLO).status_code == 200  # no client key: open, on loopback, as before
        assert_openai_error(client.get("/models"), 401, code="invalid_api_key")
        assert client.get("/models", headers={"Authorization": "Bearer admin-key"}).status_code == 200


def test_client_keys_without_an_admin_key_close_the_admin_api(tmp_path):
    with make_client(tmp_path, api_keys=["client-key"]) as client:
        assert_openai_error(client.get("/models"), 401, code="invalid_api_key")
        error = assert_openai_error(
            client.get("/models", headers={"Authorization": "Bearer client-key"}), 403, code="admin_key_required"
        )
        assert "--admin-key" in error["message"]


def test_beyond_loopback_without_any_key_no_request_opens_the_admin_api(tmp_path):
    with make_client(tmp_path, host="0.0.0.0", insecure_no_auth=True) as client:
        assert client.post(CHAT, json=HELLO).status_code == 200  # the operator chose an open client API
        for key in (None, "anything"):
            error = assert_openai_error(ask(client, "GET", "/models", None, key), 403, code="admin_key_required")
            assert "loopback" in error["message"]


def test_admin_keys_come_from_the_flag_and_the_environment():
    args = vars(_parser().parse_args(["serve", "--admin-key", "a1", "--admin-key", "a2"]))
    overrides = {k: v for k, v in args.items() if k != "command"}
    assert Settings.from_env({}, **overrides).all_admin_keys() == ("a1", "a2")
    assert Settings.from_env({"SLM_ADMIN_KEYS": "e1, e2"}).all_admin_keys() == ("e1", "e2")
    assert Settings.from_env({"SLM_ADMIN_KEYS": "e1"}, admin_keys=["flag"]).all_admin_keys() == ("flag",)
    assert "a1" not in repr(Settings.from_env({}, **overrides))  # secrets stay out of logs


def test_an_empty_admin_key_stops_the_server(tmp_path):
    with pytest.raises(ConfigError, match="admin key is empty"):
        create_app(Settings(models_file=tmp_path / "unused.yaml", admin_keys=[" "]), registry=ModelRegistry([]))


def test_the_event_stream_needs_an_admin_key_too(tmp_path):
    with make_client(tmp_path, api_keys=["client-key"], admin_keys=["admin-key"]) as client:
        assert_openai_error(client.get("/models/sse"), 401, code="invalid_api_key")
        refused = client.get("/models/sse", headers={"Authorization": "Bearer client-key"})
        assert_openai_error(refused, 403, code="admin_key_required")
        assert client.app.state.model_events.subscribers == 0


def test_the_key_is_checked_before_the_body(tmp_path):
    with make_client(tmp_path, api_keys=["client-key"], admin_keys=["admin-key"]) as client:
        assert_openai_error(client.post("/models/load", json={"model": 5}), 401, code="invalid_api_key")
        refused = client.post("/models/load", json={"model": 5}, headers={"Authorization": "Bearer client-key"})
        assert_openai_error(refused, 403, code="admin_key_required")
