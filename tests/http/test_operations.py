"""Keys, CORS, limits, readiness, draining and metrics, through the real app with fake engines."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.models.registry import ModelRegistry
from tests.api.openai.test_routes import CHAT, HELLO, assert_openai_error
from tests.conftest import FakeLoader
from tests.fakes import FakeScript, fake_spec


def make_client(tmp_path, loader: FakeLoader | None = None, **settings) -> TestClient:
    registry = ModelRegistry([fake_spec("fake-model"), fake_spec("slow-model")], loader or FakeLoader())
    app = create_app(Settings(models_file=tmp_path / "unused.yaml", **settings), registry=registry)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def keyed(tmp_path) -> Iterator[TestClient]:
    key_file = tmp_path / "keys"
    key_file.write_text("# operators\nfile-key\n\n")
    with make_client(tmp_path, api_keys=["k1", "k2"], api_key_file=key_file) as client:
        yield client


def test_no_key_configured_means_open(client):
    assert client.post(CHAT, json=HELLO).status_code == 200


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "k1"}, {"Authorization": "Basic k1"}]
)
def test_missing_or_wrong_key_is_a_401_with_an_openai_body(keyed, headers):
    error = assert_openai_error(keyed.post(CHAT, json=HELLO, headers=headers), 401, code="invalid_api_key")
    assert error["type"] == "invalid_request_error"
    assert_openai_error(keyed.get("/v1/models", headers=headers), 401)


def test_every_configured_key_works_including_the_key_file(keyed):
    for key in ("k1", "k2", "file-key"):
        assert keyed.post(CHAT, json=HELLO, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_the_key_is_checked_before_the_body(keyed):
    response = keyed.post(CHAT, content=b"{broken", headers={"content-type": "application/json"})
    assert_openai_error(response, 401)


def test_health_ready_and_metrics_need_no_key_by_default(keyed):
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/ready").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def test_metrics_can_require_the_key(tmp_path):
    with make_client(tmp_path, api_keys=["k1"], metrics_require_key=True) as client:
        assert_openai_error(client.get("/metrics"), 401)
        assert client.get("/metrics", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_cors_is_off_by_default_and_configurable(client, tmp_path):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options(CHAT, headers=preflight).headers
    with make_client(tmp_path, cors_origins=["https://app.example"]) as allowed:
        response = allowed.options(CHAT, headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = allowed.options(CHAT, headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_body_size_limit(tmp_path):
    with make_client(tmp_path, max_body_bytes=2048) as client:
        big = {**HELLO, "messages": [{"role": "user", "content": "x" * 4000}]}
        assert_openai_error(client.post(CHAT, json=big), 413, code="payload_too_large")

        def chunks():  # no Content-Length: the limit applies as the body streams in
            yield b'{"model": "fake-model", "messages": [{"role": "user", "content": "'
            yield b"y" * 4000
            yield b'"}]}'

        assert_openai_error(client.post(CHAT, content=chunks()), 413)
        assert client.post(CHAT, json=HELLO).status_code == 200


def test_message_count_stop_length_and_token_cap_limits(tmp_path, loader):
    with make_client(tmp_path, loader, max_messages=2) as client:
        three = {**HELLO, "messages": HELLO["messages"] * 3}
        assert_openai_error(client.post(CHAT, json=three), 400, param="messages")
        assert_openai_error(client.post(CHAT, json={**HELLO, "stop": "s" * 501}), 400, param="stop")
    registry = ModelRegistry([fake_spec("fake-model").model_copy(update={"max_tokens_cap": 10})], FakeLoader())
    with TestClient(create_app(Settings(), registry=registry)) as client:
        assert_openai_error(client.post(CHAT, json={**HELLO, "max_tokens": 11}), 400, param="max_tokens")
        assert client.post(CHAT, json={**HELLO, "max_tokens": 10}).status_code == 200


def test_request_timeout_is_a_504_or_an_error_event(tmp_path):
    class Stuck(FakeLoader):
        def __call__(self, spec):
            engine = super().__call__(spec)

            async def never(request):
                await asyncio.Event().wait()
                yield  # pragma: no cover

            engine._stream = never
            return engine

    with make_client(tmp_path, Stuck(), request_timeout_s=0.2) as client:
        assert_openai_error(client.post(CHAT, json=HELLO), 504, code="timeout")
        with client.stream("POST", CHAT, json={**HELLO, "stream": True}) as response:
            assert response.status_code == 200
            text = response.read().decode()
        assert '"code":"timeout"' in text and text.endswith("data: [DONE]\n\n")


def test_ready_waits_for_preloaded_models(tmp_path):
    gate = threading.Event()  # the loader runs in a worker thread; the test opens the gate

    class Gated(FakeLoader):
        def __call__(self, spec):
            if spec.name == "slow-model":
                assert gate.wait(timeout=30)
            return super().__call__(spec)

    with make_client(tmp_path, Gated(), preload=["fake-model", "slow-model"]) as client:
        waiting = client.get("/ready")
        assert waiting.status_code == 503 and "slow-model" in waiting.json()["waiting_for"]
        gate.set()
        client.post(CHAT, json={**HELLO, "model": "slow-model"})  # answered once the preload finished loading it
        assert client.get("/ready").json() == {"status": "ready"}


def test_unknown_preload_name_is_a_configuration_error(tmp_path):
    from server.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        make_client(tmp_path, preload=["nope"])


def test_draining_turns_new_requests_away_but_keeps_health(client):
    client.app.state.draining = True
    assert_openai_error(client.post(CHAT, json=HELLO), 503, code="shutting_down")
    assert client.get("/health").status_code == 200


def test_metrics_count_requests_with_bounded_labels(client, loader):
    client.post(CHAT, json=HELLO)
    client.post(CHAT, json={**HELLO, "model": "no-such-model-" + "x" * 50})
    client.post("/v1/definitely/not/a/route", json={})
    loader.engines["fake-model"].script = FakeScript(fail_after=1)
    client.post(CHAT, json=HELLO)
    text = client.get("/metrics").text
    assert 'slm_requests_total{endpoint="/v1/chat/completions",model="fake-model",status="200"} 1.0' in text
    assert 'slm_requests_total{endpoint="/v1/chat/completions",model="none",status="404"} 1.0' in text
    assert 'slm_requests_total{endpoint="other",model="none",status="404"} 1.0' in text
    assert 'model="fake-model",status="500"' in text
    assert "no-such-model" not in text
    assert 'slm_generated_tokens_total{model="fake-model"} 5.0' in text
