"""The Ray application's ingress without Ray (server/cluster/ingress.py): requests go through IngressCore into the
server's own app run by the replica's bridge (bridge.py), and must come out as the single server answers them:
the same 400/404/413 bodies for hostile requests, SSE passed through, and a lost replica a clean 503 or, mid-stream,
an error event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from server.app import create_app
from server.cluster.bridge import AppBridge, RequestHead, ResponseHead
from server.cluster.ingress import IngressCore, ModelRouter
from server.cluster.metrics_merge import merge_expositions
from server.config import Settings
from server.models.registry import ModelRegistry
from tests.conftest import FakeLoader
from tests.fakes import fake_spec

MAX_BODY = 4096
SPECS = [fake_spec("fake-model", "gpt-4o-mini"), fake_spec("other-model")]
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}


def settings(tmp_path) -> Settings:
    return Settings(models_file=tmp_path / "unused.yaml", max_body_bytes=MAX_BODY, data_dir=tmp_path / "data")


class Cluster:
    """The ingress in front of one replica's bridge, as an ASGI app; records the model each request was routed
    by (the multiplexed model id Ray would get)."""

    def __init__(self, tmp_path, forward=None) -> None:
        self.routed: list[str | None] = []
        self.bridge = AppBridge(create_app(settings(tmp_path), registry=ModelRegistry(SPECS, FakeLoader())))
        self._started = False
        self.core = IngressCore(ModelRouter(SPECS), forward or self._forward, max_body_bytes=MAX_BODY)

    async def _forward(self, head: RequestHead, body: bytes, model: str | None) -> AsyncIterator[ResponseHead | bytes]:
        if not self._started:
            self._started = True
            await self.bridge.start()
        self.routed.append(model)
        async for item in self.bridge.call(head, body):
            yield item

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            message = await receive()
            await self.bridge.stop()
            await send({"type": message["type"] + ".complete"})
            return
        response = await self.core(Request(scope, receive))
        await response(scope, receive, send)


@pytest.fixture
def through_ingress(tmp_path) -> Iterator[tuple[TestClient, Cluster]]:
    cluster = Cluster(tmp_path / "cluster")
    with TestClient(cluster, raise_server_exceptions=False) as client:
        yield client, cluster


@pytest.fixture
def single(tmp_path) -> Iterator[TestClient]:
    app = create_app(settings(tmp_path / "single"), registry=ModelRegistry(SPECS, FakeLoader()))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


HOSTILE = {
    "not JSON": b"not json at all",
    "truncated JSON": b'{"model": "fake-model", "messages": [',
    "an array": b'[{"model": "fake-model"}]',
    "model a number": b'{"model": 5, "messages": [{"role": "user", "content": "Hi"}]}',
    "model a list": b'{"model": ["fake-model"], "messages": [{"role": "user", "content": "Hi"}]}',
    "model null": b'{"model": null, "messages": [{"role": "user", "content": "Hi"}]}',
    "no model": b'{"messages": [{"role": "user", "content": "Hi"}]}',
    "an unknown model": b'{"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}',
    "nested too deep": b'{"model": ' + b"[" * 1900 + b"]" * 1900 + b"}",
    "not UTF-8": b'{"model": "fake-\xff", "messages": []}',
}


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "request_id"}  # Anthropic's: one per request


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_hostile_body_gets_the_single_servers_answer_and_no_model_route(through_ingress, single, body, path):
    client, cluster = through_ingress
    headers = {"content-type": "application/json"}
    got, expected = client.post(path, content=body, headers=headers), single.post(path, content=body, headers=headers)
    assert got.status_code == expected.status_code and got.status_code in (400, 404)
    assert without_request_id(got.json()) == without_request_id(expected.json())
    assert ("error" in got.json()) if path.startswith("/v1/chat") else got.json()["type"] == "error"
    assert cluster.routed == [None]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_the_single_servers_413_and_never_forwarded(through_ingress, single, declared):
    client, cluster = through_ingress
    body = json.dumps({**CHAT, "padding": "x" * MAX_BODY}).encode()
    content: Any = body if declared else iter([body[:1000], body[1000:]])
    got = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    expected = single.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert got.status_code == expected.status_code == 413
    assert got.json() == expected.json() and got.json()["error"]["code"] == "payload_too_large"
    assert cluster.routed == []


def test_requests_are_routed_by_the_models_canonical_name(through_ingress):
    client, cluster = through_ingress
    for model in ("fake-model", "gpt-4o-mini", "other-model"):
        response = client.post("/v1/chat/completions", json={**CHAT, "model": model})
        assert response.status_code == 200, response.text
    assert client.get("/v1/models").status_code == 200
    assert cluster.routed == ["fake-model", "fake-model", "other-model", None]


def test_a_stream_passes_through_as_the_single_server_sends_it(through_ingress, single):
    client, _ = through_ingress

    def events(test_client: TestClient) -> list[dict[str, Any] | str]:
        with test_client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        return [line if line == "[DONE]" else json.loads(line)["choices"] for line in lines]

    assert events(client) == events(single)


def lost_replica(chunks: list[bytes], content_type: bytes = b"text/event-stream"):
    async def forward(head: RequestHead, body: bytes, model: str | None) -> AsyncIterator[ResponseHead | bytes]:
        if chunks:
            yield ResponseHead(200, [(b"content-type", content_type)])
        for chunk in chunks:
            yield chunk
        raise ConnectionError("the replica's process died")

    return forward


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_replica_lost_before_it_answered_is_a_clean_503(tmp_path, path):
    with TestClient(Cluster(tmp_path, forward=lost_replica([]))) as client:
        response = client.post(path, json=CHAT)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    body = response.json()
    if path == "/v1/messages":
        assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"  # the server's 503s
    else:
        assert body["error"]["code"] == "replica_lost" and body["error"]["type"] == "server_error"
    assert "died" not in response.text  # nothing internal


def test_a_replica_lost_mid_stream_ends_it_with_an_error_event_and_done(tmp_path):
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "fake-model", "choices": []}
    first = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    with (
        TestClient(Cluster(tmp_path, forward=lost_replica([first]))) as client,
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response,
    ):
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == first.decode().strip()
    assert json.loads(lines[1][6:])["error"]["code"] == "replica_lost"
    assert lines[2:] == ["data: [DONE]"]


def test_an_anthropic_stream_lost_mid_way_ends_with_its_error_event(tmp_path):
    with (
        TestClient(Cluster(tmp_path, forward=lost_replica([b"event: ping\ndata: {}\n\n"]))) as client,
        client.stream("POST", "/v1/messages", json={**CHAT, "stream": True}) as response,
    ):
        lines = [line for line in response.iter_lines() if line]
    assert lines[-2] == "event: error"
    assert json.loads(lines[-1][6:])["error"]["type"] == "overloaded_error"
    assert "data: [DONE]" not in lines


def test_a_whole_body_cut_short_is_not_passed_off_as_complete(tmp_path):
    forward = lost_replica([b'{"tokens": [1, 2, '], content_type=b"application/json")
    with TestClient(Cluster(tmp_path, forward=forward)) as client, pytest.raises(ConnectionError):
        client.post("/tokenize", json={"model": "fake-model", "content": "Hi"})


def test_model_router_reads_only_a_string_model_of_a_json_object():
    router = ModelRouter(SPECS)
    assert router.model_of(b' {"model": "gpt-4o-mini"}') == "fake-model"
    assert router.model_of(b'{"model": "other-model", "x": 1}') == "other-model"
    for body in (*HOSTILE.values(), b"", b'"fake-model"', b'{"model": {"name": "fake-model"}}'):
        assert router.model_of(body) is None


def test_merged_metrics_label_each_replica_and_describe_each_family_once():
    text = (
        "# HELP slm_requests_total HTTP requests\n# TYPE slm_requests_total counter\n"
        'slm_requests_total{model="a"} 2.0\n'
    )
    merged = merge_expositions({"r1": text, "r2": text.replace("2.0", "3.0")}, {"r1": 10.0, "r2": 11.0}).decode()
    assert merged.count("# TYPE slm_requests_total counter") == 1
    samples = {
        (s.name, s.labels.get("replica")): s.value
        for family in text_string_to_metric_families(merged)
        for s in family.samples
    }
    assert samples[("slm_requests_total", "r1")] == 2.0 and samples[("slm_requests_total", "r2")] == 3.0
    assert samples[("slm_replica_metrics_timestamp_seconds", "r2")] == 11.0


@pytest.mark.parametrize("path", ["/v1/files", "/v1/files/file-1/content", "/v1/batches", "/v1/batches/b1/cancel"])
def test_files_and_batches_are_refused_plainly_not_found_on_a_random_replica(through_ingress, path):
    client, cluster = through_ingress
    response = client.post(path, json={})
    assert response.status_code == 501
    assert response.json()["error"]["code"] == "not_supported_in_cluster"
    assert client.get(path).status_code == 501
    assert cluster.routed == []
