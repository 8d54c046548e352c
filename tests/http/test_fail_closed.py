"""Configuration that fails closed: the loopback guard (Host and Origin), keys on the documentation, refusals at
start-up, and logs that stay bounded whatever a client or llama.cpp sends."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server import cli
from server.app import create_app
from server.config import ConfigError, Settings
from server.http.access_guard import is_loopback_host_header, is_loopback_name
from server.http.middleware import MAX_LOGGED_PATH, bounded
from server.models.registry import ModelRegistry
from tests.api.openai.test_routes import CHAT, HELLO, assert_openai_error
from tests.conftest import FakeLoader
from tests.fakes import fake_spec

LOCAL = {"Host": "127.0.0.1:8000"}
DOC_PATHS = ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"]


def make_client(tmp_path: Path, **settings) -> TestClient:
    registry = ModelRegistry([fake_spec("fake-model")], FakeLoader())
    app = create_app(Settings(models_file=tmp_path / "unused.yaml", **settings), registry=registry)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def guarded(tmp_path) -> Iterator[TestClient]:
    """What `slm-server serve` builds on 127.0.0.1 with no key."""
    with make_client(tmp_path, loopback_guard=True, cors_origins=["https://app.example"]) as client:
        yield client


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8000",
        "LocalHost:8000",
        "127.0.0.1",
        "127.0.0.1:1",
        "127.8.9.10:65535",
        "[::1]",
        "[::1]:8000",
    ],
)
def test_loopback_names_pass_the_guard(guarded, host):
    assert guarded.get("/v1/models", headers={"Host": host}).status_code == 200
    assert guarded.post(CHAT, json=HELLO, headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "testserver",
        "evil.example",
        "evil.example:8000",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "localhost:8000@evil.example",
        "localhost:abc",
        "localhost:",
        "0.0.0.0:8000",
        "10.0.0.5",
        "[::2]:8000",
        "::1",
        "[::1]evil",
        "",
    ],
)
def test_other_hosts_are_refused_with_an_openai_error(guarded, host):
    for response in (
        guarded.post(CHAT, json=HELLO, headers={"Host": host}),
        guarded.get("/v1/models", headers={"Host": host}),
        guarded.get("/health", headers={"Host": host}),
        guarded.get("/docs", headers={"Host": host}),
    ):
        error = assert_openai_error(response, 403, code="forbidden_host")
        assert error["type"] == "request_forbidden"
        assert "API key" in error["message"]


def test_a_huge_host_is_not_echoed_whole(guarded):
    response = guarded.get("/v1/models", headers={"Host": "a" * 5000})
    assert len(assert_openai_error(response, 403, code="forbidden_host")["message"]) < 400


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://app.example", "localhost"),  # a configured CORS origin
        ("http://127.0.0.1:8000", "127.0.0.1:8000"),  # this server's own page (/docs)
        ("http://LOCALHOST:8000", "localhost:8000"),
    ],
)
def test_allowed_origins_pass(guarded, origin, host):
    assert guarded.post(CHAT, json=HELLO, headers={"Host": host, "Origin": origin}).status_code == 200


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://evil.example", "127.0.0.1:8000"),  # a cross-site form post or fetch
        ("http://localhost:3000", "localhost:8000"),  # another local port is another site
        ("http://127.0.0.1:8000", "localhost:8000"),
        ("ftp://127.0.0.1:8000", "127.0.0.1:8000"),
        ("null", "127.0.0.1:8000"),  # sandboxed frames and file:// pages
        ("", "127.0.0.1:8000"),
        ("https://app.example.evil", "localhost"),
    ],
)
def test_other_origins_are_refused(guarded, origin, host):
    response = guarded.post(CHAT, json=HELLO, headers={"Host": host, "Origin": origin})
    assert_openai_error(response, 403, code="forbidden_origin")


def test_a_cors_preflight_from_an_allowed_origin_is_answered_by_cors(guarded):
    response = guarded.options(
        CHAT,
        headers={**LOCAL, "Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example"


def test_a_wildcard_cors_origin_allows_every_origin(tmp_path):
    with make_client(tmp_path, loopback_guard=True, cors_origins=["*"]) as client:
        assert client.post(CHAT, json=HELLO, headers={**LOCAL, "Origin": "https://any.example"}).status_code == 200
        assert_openai_error(client.get("/v1/models", headers={"Host": "evil.example"}), 403, code="forbidden_host")


def test_a_refusal_is_in_the_request_log_with_an_id(guarded, caplog):
    caplog.set_level(logging.INFO, logger="server.requests")
    response = guarded.get("/v1/models", headers={"Host": "evil.example", "X-Request-ID": "probe-1"})
    assert response.headers["x-request-id"] == "probe-1"
    lines = [json.loads(r.getMessage().removeprefix("request ")) for r in caplog.records if r.name == "server.requests"]
    assert {"request_id": "probe-1", "status": 403, "path": "/v1/models"}.items() <= lines[-1].items()


@pytest.mark.parametrize(
    "settings",
    [
        {},  # an app built in-process (tests, embedding) is not told how it is served
        {"loopback_guard": True, "api_keys": ["k"]},  # keys decide instead
        {"loopback_guard": True, "host": "0.0.0.0", "insecure_no_auth": True},  # not loopback: the start-up check
    ],
)
def test_the_guard_is_off_where_it_does_not_apply(tmp_path, settings):
    with make_client(tmp_path, **settings) as client:
        response = client.get("/v1/models", headers={"Host": "evil.example", "Authorization": "Bearer k"})
        assert response.status_code == 200


def test_loopback_names():
    for name in ("localhost", "127.0.0.1", "127.255.0.1", "::1", "[::1]"):
        assert is_loopback_name(name), name
    for name in ("0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example.com", "127.1", ""):
        assert not is_loopback_name(name), name
    assert is_loopback_host_header("[::1]:8000") and not is_loopback_host_header("::1:8000")


# Documentation routes behind the keys.


@pytest.mark.parametrize("path", DOC_PATHS)
def test_documentation_needs_a_key_when_keys_are_configured(tmp_path, path):
    with make_client(tmp_path, api_keys=["k1"]) as client:
        assert_openai_error(client.get(path), 401, code="invalid_api_key")
        assert_openai_error(client.get(path, headers={"Authorization": "Bearer nope"}), 401, code="invalid_api_key")
        assert client.get(path, headers={"Authorization": "Bearer k1"}).status_code == 200


@pytest.mark.parametrize("path", DOC_PATHS)
def test_documentation_is_open_without_keys(client, path):
    assert client.get(path).status_code == 200


def test_health_and_ready_still_need_no_key(tmp_path):
    with make_client(tmp_path, api_keys=["k1"]) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200


# Start-up refusals (the refusals that start nothing; starting with --insecure-no-auth is in the real tier).


@pytest.fixture
def models_file(tmp_path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  - name: local\n    source: {{path: {tmp_path / 'absent.gguf'}}}\n")
    return path


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n   \n"])
def test_a_key_file_with_no_key_is_a_configuration_error(tmp_path, models_file, content, caplog):
    key_file = tmp_path / "keys"
    key_file.write_text(content)
    with pytest.raises(ConfigError, match="holds no key"):
        Settings(api_key_file=key_file).all_api_keys()
    with pytest.raises(ConfigError, match="holds no key"):
        create_app(Settings(api_key_file=key_file, models_file=models_file))
    assert cli.main(["serve", "--api-key-file", str(key_file), "--models", str(models_file)]) == 2
    assert f"the API key file {key_file} holds no key" in caplog.text


def test_an_empty_key_file_from_the_environment_stops_serve_too(tmp_path, models_file, monkeypatch, caplog):
    key_file = tmp_path / "keys"
    key_file.write_text("")
    monkeypatch.setenv("SLM_API_KEY_FILE", str(key_file))
    assert cli.main(["serve", "--models", str(models_file)]) == 2
    assert "holds no key" in caplog.text


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.com"])
def test_serving_beyond_loopback_without_a_key_is_refused(models_file, host, caplog):
    assert cli.main(["serve", "--host", host, "--models", str(models_file)]) == 2
    assert f"refusing to listen on {host} without an API key" in caplog.text
    assert "--insecure-no-auth" in caplog.text and "SLM_API_KEYS" in caplog.text


def test_insecure_no_auth_from_the_environment():
    assert Settings.from_env({"SLM_INSECURE_NO_AUTH": "1"}).insecure_no_auth is True
    assert Settings.from_env({}).insecure_no_auth is False
    with pytest.raises(ConfigError):
        Settings.from_env({"SLM_INSECURE_NO_AUTH": "maybe"})


class _NotRun:
    """Stands in for the uvicorn server: `_serve` builds everything, then returns instead of serving."""

    built: list = []

    def __init__(self, config, app) -> None:
        _NotRun.built.append(app)

    def run(self) -> None:
        pass


@pytest.fixture
def built_apps(monkeypatch) -> list:
    monkeypatch.setattr(cli, "_DrainingServer", _NotRun)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # `_serve` sets these; monkeypatch restores them
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    _NotRun.built = []
    return _NotRun.built


@pytest.mark.parametrize(
    ("args", "env", "warned"),
    [
        (["--host", "0.0.0.0", "--insecure-no-auth"], {}, True),
        (["--host", "0.0.0.0"], {"SLM_INSECURE_NO_AUTH": "1"}, True),
        (["--host", "0.0.0.0", "--api-key", "k"], {}, False),
        ([], {}, False),
    ],
)
def test_what_serve_accepts(built_apps, models_file, monkeypatch, caplog, args, env, warned):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve", "--models", str(models_file), *args]) == 0
    assert len(built_apps) == 1
    assert ("WITHOUT an API key" in caplog.text) is warned


def test_serve_turns_the_loopback_guard_on(built_apps, models_file):
    assert cli.main(["serve", "--models", str(models_file)]) == 0
    (app,) = built_apps
    assert app.state.settings.loopback_guard
    with TestClient(app) as client:
        assert_openai_error(client.get("/v1/models"), 403, code="forbidden_host")  # Host: testserver
        assert client.get("/v1/models", headers={"Host": "localhost:8000"}).status_code == 200


def test_a_model_not_pulled_yet_is_one_info_line_a_missing_file_an_error(built_apps, tmp_path, caplog):
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        f"""
models:
  - name: catalog-a
    source: {{repo_id: nobody-slm-test/never-pulled-a, filename: a.gguf}}
  - name: catalog-b
    source: {{repo_id: nobody-slm-test/never-pulled-b, filename: b.gguf}}
  - name: local
    source: {{path: {tmp_path / "never-copied.gguf"}}}
"""
    )
    caplog.set_level(logging.INFO, logger="server")
    assert cli.main(["serve", "--models", str(models_file)]) == 0
    records = [r for r in caplog.records if r.name == "server"]
    not_pulled = [r for r in records if "not pulled yet" in r.getMessage()]
    assert len(not_pulled) == 1 and not_pulled[0].levelno == logging.INFO
    assert "catalog-a, catalog-b" in not_pulled[0].getMessage()
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert errors == [f"model local is not available: {tmp_path / 'never-copied.gguf'} does not exist"]


# Logs stay bounded.


def test_client_text_in_the_request_log_is_bounded(client, caplog):
    caplog.set_level(logging.INFO, logger="server.requests")
    client.get("/v1/" + "a" * 10_000, headers={"X-Request-ID": "x" * 5000})
    client.request("X" * 5000, "/v1/models")
    for record in [r for r in caplog.records if r.name == "server.requests"]:
        assert len(record.getMessage()) < 1000
        fields = json.loads(record.getMessage().removeprefix("request "))
        assert len(fields["path"]) <= MAX_LOGGED_PATH + 20 and len(fields["method"]) <= 40
        assert len(fields["request_id"]) <= 128
    assert "... (9748 more)" in caplog.text


def test_bounded():
    assert bounded("abc", 3) == "abc"
    assert bounded("abcdef", 3) == "abc... (3 more)"


def test_llama_cpp_log_lines_are_bounded(caplog):
    from server.engine.llama import native_log

    caplog.set_level(logging.DEBUG, logger="server.engine.llama.native")
    native_log(4, b"root ::= " + "é".encode() * 2_000_000 + b"\n", None)
    native_log(3, b"a short warning\n", None)
    huge, short = (r for r in caplog.records if r.name == "server.engine.llama.native")
    assert huge.levelno == logging.ERROR and len(huge.getMessage()) < 600
    assert huge.getMessage().startswith("root ::= é") and huge.getMessage().endswith(" more bytes)")
    assert short.levelno == logging.WARNING and short.getMessage() == "a short warning"
