"""The Files and Batch API over the fake engine: shapes (checked against OpenAI's spec by the autouse contract
fixture), ownership, limits, validation, the lifecycle, cancel and expiry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.api.openai.batch_lines import BatchLines
from server.app import create_app
from server.config import Settings
from server.errors import NoRoomForBatch
from server.generation.embedding import Embedder
from server.generation.pipeline import GenerationPipeline
from server.models.registry import ModelRegistry
from tests.fakes import FakeScript

KEY_A, KEY_B = "key-a", "key-b"


def line(custom_id: str, content: str = "hi", model: str = "fake-model", **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(*items) -> bytes:
    return b"".join((item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n" for item in items)


@pytest.fixture
def make_client(registry: ModelRegistry, tmp_path):
    clients = []

    def make(lifespan: bool = True, **settings) -> TestClient:
        settings.setdefault("data_dir", tmp_path / "data")
        app = create_app(Settings(models_file=tmp_path / "unused.yaml", **settings), registry=registry)
        client = TestClient(app, raise_server_exceptions=False)
        if lifespan:
            client.__enter__()
            clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> Iterator[TestClient]:
    return make_client()


def upload(client: TestClient, content: bytes, key: str | None = None, **form) -> dict:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    response = client.post(
        "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch", **form}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()


def run_batch(client: TestClient, content: bytes, endpoint: str = "/v1/chat/completions", key=None) -> dict:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    file_id = upload(client, content, key)["id"]
    created = client.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", "metadata": {"k": "v"}},
        headers=headers,
    )
    assert created.status_code == 200, created.text
    assert created.json()["status"] == "validating"
    settle(client)
    return client.get(f"/v1/batches/{created.json()['id']}", headers=headers).json()


def settle(client: TestClient) -> None:
    """Until no batch is open (a batch that never ends fails the test, not hangs it)."""
    client.portal.call(asyncio.wait_for, client.app.state.batch_runner.settled(), 60)


def lines_of(client: TestClient, file_id: str | None, key=None) -> list[dict]:
    if file_id is None:
        return []
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    response = client.get(f"/v1/files/{file_id}/content", headers=headers)
    assert response.status_code == 200
    return [json.loads(text) for text in response.text.splitlines()]


def test_a_chat_batch_runs_each_line_once_as_the_live_endpoint_would(client):
    no_model = {**line("c"), "body": {"messages": [{"role": "user", "content": "hi"}]}}
    batch = run_batch(client, jsonl(line("a"), line("b", max_tokens=-1), no_model))
    assert batch["status"] == "completed" and batch["model"] == "fake-model"
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    assert batch["metadata"] == {"k": "v"} and batch["in_progress_at"] and batch["completed_at"]
    (done,) = lines_of(client, batch["output_file_id"])
    assert done["custom_id"] == "a" and done["error"] is None
    assert done["response"]["status_code"] == 200
    assert done["response"]["body"]["choices"][0]["message"]["content"] == "Hello, world!"
    failed = {item["custom_id"]: item["response"] for item in lines_of(client, batch["error_file_id"])}
    assert failed["b"]["status_code"] == 400 and failed["b"]["body"]["error"]["param"] == "max_tokens"
    live = client.post("/v1/chat/completions", json=line("b", max_tokens=-1)["body"])
    assert live.status_code == 400 and live.json() == failed["b"]["body"]  # the same 400 as the live endpoint
    assert failed["c"]["status_code"] == 400 and failed["c"]["body"]["error"]["param"] == "model"
    assert batch["usage"]["input_tokens"] > 0 and batch["usage"]["output_tokens"] == 4


def test_a_batch_for_an_unknown_model_answers_404_on_each_line(client):
    batch = run_batch(client, jsonl(line("a", model="nope"), line("b", model="nope")))
    assert batch["status"] == "completed" and batch["request_counts"]["failed"] == 2
    assert {item["response"]["status_code"] for item in lines_of(client, batch["error_file_id"])} == {404}


def test_batch_lines_run_at_batch_priority(client, loader):
    run_batch(client, jsonl(line("a")))
    assert [request.priority for request in loader.engines["fake-model"].requests] == ["batch"]


def test_embeddings_and_completions_batches(client):
    embed = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-model", "input": "x"}}
    batch = run_batch(client, jsonl(embed), "/v1/embeddings")
    # The fake chat model cannot embed: the line answers what the live endpoint answers, an error.
    assert batch["status"] == "completed" and batch["request_counts"]["failed"] == 1
    complete = {
        "custom_id": "p",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": "fake-model", "prompt": "x"},
    }
    batch = run_batch(client, jsonl(complete), "/v1/completions")
    assert lines_of(client, batch["output_file_id"])[0]["response"]["body"]["choices"][0]["text"] == "Hello, world!"


def test_a_streaming_line_is_an_error_line(client):
    batch = run_batch(client, jsonl(line("s", stream=True)))
    (failed,) = lines_of(client, batch["error_file_id"])
    assert failed["response"]["status_code"] == 400 and failed["response"]["body"]["error"]["param"] == "stream"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"not json\n", "invalid_json_line"),
        (jsonl(line("a"), line("a")), "duplicate_custom_id"),
        (jsonl(line("a"), {**line("b"), "url": "/v1/embeddings"}), "mismatched_endpoint"),
        (jsonl({**line("a"), "method": "GET"}), "invalid_method"),
        (jsonl({**line("a"), "custom_id": 7}), "invalid_custom_id"),
        (jsonl(line("a"), line("b", model="other-model")), "mismatched_model"),
        (b"\n\n", "empty_file"),
    ],
)
def test_a_file_that_is_not_a_batch_fails_validation_with_reasons(client, content, code):
    batch = run_batch(client, content)
    assert batch["status"] == "failed" and batch["failed_at"]
    assert code in [error["code"] for error in batch["errors"]["data"]]
    assert batch["output_file_id"] is None and batch["request_counts"]["total"] == 0


def test_files_belong_to_the_key_that_uploaded_them(make_client):
    client = make_client(api_keys=(KEY_A, KEY_B))
    a, b = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}
    batch = run_batch(client, jsonl(line("x")), key=KEY_A)
    file_id = batch["input_file_id"]
    assert client.get(f"/v1/files/{file_id}", headers=b).status_code == 404
    assert client.get(f"/v1/files/{file_id}/content", headers=b).status_code == 404
    assert client.delete(f"/v1/files/{file_id}", headers=b).status_code == 404
    assert client.get("/v1/files", headers=b).json()["data"] == []
    assert client.get(f"/v1/batches/{batch['id']}", headers=b).status_code == 404
    assert client.post(f"/v1/batches/{batch['id']}/cancel", headers=b).status_code == 404
    assert client.get("/v1/batches", headers=b).json()["data"] == []
    created = client.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        headers=b,
    )
    assert created.status_code == 404
    assert [f["id"] for f in client.get("/v1/files", headers=a).json()["data"]][-1] == file_id
    assert client.get("/v1/files").status_code == 401


def test_listing_pages_with_after_and_limit(client):
    ids = [upload(client, jsonl(line(str(i))))["id"] for i in range(3)]
    first = client.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/v1/files", params={"limit": 2, "after": first["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and not rest["has_more"]
    ascending = client.get("/v1/files", params={"order": "asc"}).json()
    assert [f["id"] for f in ascending["data"]] == ids
    batches = [run_batch(client, jsonl(line("x")))["id"] for _ in range(2)]
    page = client.get("/v1/batches", params={"limit": 1}).json()
    assert [b["id"] for b in page["data"]] == [batches[1]] and page["has_more"]
    page = client.get("/v1/batches", params={"limit": 1, "after": batches[1]}).json()
    assert [b["id"] for b in page["data"]] == [batches[0]]


def test_delete_a_file(client):
    file_id = upload(client, jsonl(line("a")))["id"]
    assert client.delete(f"/v1/files/{file_id}").json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}").status_code == 404
    assert client.get(f"/v1/files/{file_id}/content").status_code == 404


@pytest.mark.parametrize(
    ("request_kwargs", "status", "param"),
    [
        ({"data": {"purpose": "assistants"}, "files": {"file": ("a", b"x")}}, 400, "purpose"),
        ({"data": {}, "files": {"file": ("a", b"x")}}, 400, "purpose"),
        ({"data": {"purpose": "batch"}}, 400, "file"),
        ({"data": {"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "5"},
          "files": {"file": ("a", b"x")}}, 400, "expires_after.seconds"),
        ({"data": {"purpose": "batch", "expires_after[anchor]": "now", "expires_after[seconds]": "3600"},
          "files": {"file": ("a", b"x")}}, 400, "expires_after.anchor"),
    ],
)  # fmt: skip
def test_uploads_sent_wrong(client, request_kwargs, status, param):
    response = client.post("/v1/files", **request_kwargs)
    assert response.status_code == status and response.json()["error"]["param"] == param


def test_upload_limits(make_client):
    client = make_client(max_file_bytes=2048, batch_max_lines=2, max_stored_bytes=3000)
    too_big = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("a", b"x" * 3000)})
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] in ("file_too_large", "payload_too_large")
    too_long = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("a", b"{}\n" * 3)})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "too_many_lines"
    upload(client, b"x" * 2000)
    over_quota = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("a", b"x" * 1500)})
    assert over_quota.status_code == 413 and over_quota.json()["error"]["code"] == "storage_limit_exceeded"
    assert len(client.get("/v1/files").json()["data"]) == 1  # nothing of the refused uploads is kept


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id"),
        ({"input_file_id": "F", "endpoint": "/v1/moderations", "completion_window": "24h"}, "endpoint"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "1h"}, "completion_window"),
        ({"input_file_id": 5, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": {"k": 1}}, "metadata.k"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"input_file_id": "F", "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "output_expires_after": {"anchor": "created_at", "seconds": 10}}, "output_expires_after.seconds"),
    ],
)  # fmt: skip
def test_batch_bodies_sent_wrong(client, body, param):
    file_id = upload(client, jsonl(line("a")))["id"]
    body = {**body, "input_file_id": file_id} if body.get("input_file_id") == "F" else body
    response = client.post("/v1/batches", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_list_queries_sent_wrong(client):
    response = client.get("/v1/batches", params={"limit": 0})
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"
    assert client.get("/v1/files", params={"order": "sideways"}).json()["error"]["param"] == "order"


def test_unknown_ids_are_404(client):
    for path in ("/v1/files/file-x", "/v1/files/file-x/content", "/v1/batches/batch_x"):
        assert client.get(path).status_code == 404
    assert client.post("/v1/batches/batch_x/cancel").status_code == 404
    created = client.post(
        "/v1/batches", json={"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    )
    assert created.status_code == 404 and created.json()["error"]["param"] == "input_file_id"


def test_open_batches_per_key_are_bounded_and_cancel_before_running(make_client):
    client = make_client(max_open_batches=1, lifespan=False)  # no runner: batches stay open
    file_id = upload(client, jsonl(line("a")))["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    first = client.post("/v1/batches", json=body).json()
    second = client.post("/v1/batches", json=body)
    assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_open_batches"
    assert client.delete(f"/v1/files/{file_id}").json()["error"]["code"] == "file_in_use"
    cancelling = client.post(f"/v1/batches/{first['id']}/cancel").json()
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"]
    with client:  # the runner starts and ends it
        settle(client)
        ended = client.get(f"/v1/batches/{first['id']}").json()
        assert ended["status"] == "cancelled" and ended["cancelled_at"] and ended["output_file_id"] is None
        again = client.post(f"/v1/batches/{first['id']}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        done = run_batch(client, jsonl(line("b")))
        refused = client.post(f"/v1/batches/{done['id']}/cancel")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "batch_not_cancellable"


def test_a_line_without_room_is_handed_back_to_the_runner_not_failed(registry, loader):
    """The line executor lets the engine's 'no room' and 'preempted' through (the runner waits and runs the line
    again); any other failure is that line's error."""
    loader.scripts["fake-model"] = FakeScript(parallel=1)
    pipeline = GenerationPipeline(registry)
    lines = BatchLines(pipeline, Embedder(registry))
    body = line("a")["body"]

    async def scenario() -> None:
        async with registry.use("fake-model") as engine:
            engine.in_flight = 1  # an interactive request holds the only sequence
            with pytest.raises(NoRoomForBatch):
                await lines("/v1/chat/completions", body)
            engine.in_flight = 0
            outcome = await lines("/v1/chat/completions", body)
        assert outcome.status_code == 200 and outcome.body["choices"][0]["message"]["content"] == "Hello, world!"
        assert outcome.tokens[1] == 4

    asyncio.run(scenario())


def test_an_upload_without_an_expiry_gets_openais_thirty_days(client):
    uploaded = upload(client, jsonl(line("a")))
    assert uploaded["expires_at"] == uploaded["created_at"] + 30 * 24 * 3600
    expiry = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    chosen = upload(client, jsonl(line("a")), **expiry)
    assert chosen["expires_at"] == chosen["created_at"] + 3600


def test_a_line_longer_than_a_request_body_may_be_fails_the_file_naming_the_line(make_client):
    client = make_client(max_body_bytes=1024)
    batch = run_batch(client, jsonl(line("a"), line("b", content="x" * 2000)))
    assert batch["status"] == "failed"
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [("line_too_large", 2)]


def test_a_line_with_more_choices_than_sequences_runs(registry, loader, make_client):
    loader.scripts["fake-model"] = FakeScript(parallel=1)
    batch = run_batch(make_client(), jsonl(line("a", n=3)))
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 1
    assert [r.priority for r in loader.engines["fake-model"].requests] == ["batch"] * 3
