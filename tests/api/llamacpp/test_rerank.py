"""/v1/rerank and /rerank through the real app with fake engines: the shape llama.cpp's server, Jina and Cohere share,
sorting and top_n, the bounds, wrong types, and the 400s for the wrong kind of model each way.

The fake reranker scores a pair by its document's length in tokens (a token per character), so the order is known."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ConfigError, HubSource, ModelSpec, PathSource, Settings, load_models_file
from server.generation.rerank import Reranker, RerankPlan
from server.metrics import RequestRecord
from server.models.registry import ModelRegistry
from tests.api.openai.test_routes import CHAT, HELLO, assert_openai_error
from tests.conftest import FakeLoader
from tests.fakes import FakeEngine, FakeScript, fake_spec

RERANK = "/v1/rerank"
WAIT_S = 30  # an upper bound for conditions that hold within milliseconds; reached only when a test fails
DOCS = ["a", "ccc", "bb", "ccc"]  # scores 1, 3, 2, 3: best first, ties in the request's order -> 1, 3, 2, 0
QUERY = "q?"  # 2 tokens, and a separator: each pair is 3 + len(document) tokens


def rerank_spec(name: str, **updates) -> ModelSpec:
    return fake_spec(name).model_copy(update={"reranker": True, **updates})


@pytest.fixture
def loader() -> FakeLoader:
    loader = FakeLoader()
    loader.scripts["ranker"] = FakeScript(reranker=True, n_ctx=64)
    loader.scripts["embedder"] = FakeScript(embedding_dims=4)
    return loader


def make_client(tmp_path: Path, loader: FakeLoader, specs: list[ModelSpec] | None = None, **settings) -> TestClient:
    embedder = fake_spec("embedder").model_copy(update={"embedding": True})
    specs = specs or [fake_spec("fake-model"), embedder, rerank_spec("ranker", aliases=("rr",))]
    app = create_app(Settings(models_file=tmp_path / "unused.yaml", **settings), registry=ModelRegistry(specs, loader))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(tmp_path, loader) -> Iterator[TestClient]:
    with make_client(tmp_path, loader) as test_client:
        yield test_client


@pytest.mark.parametrize("path", [RERANK, "/rerank"])
def test_results_are_sorted_best_first_with_their_indices_and_usage(client, path):
    reply = client.post(path, json={"model": "ranker", "query": QUERY, "documents": DOCS})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"id", "object", "model", "results", "usage"}
    assert body["id"].startswith("rerank-") and body["object"] == "list" and body["model"] == "ranker"
    assert body["results"] == [
        {"index": 1, "relevance_score": 3.0},
        {"index": 3, "relevance_score": 3.0},
        {"index": 2, "relevance_score": 2.0},
        {"index": 0, "relevance_score": 1.0},
    ]
    tokens = sum(3 + len(doc) for doc in DOCS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_top_n_cuts_the_ranking_and_a_larger_one_keeps_all(client):
    top = client.post(RERANK, json={"model": "ranker", "query": QUERY, "documents": DOCS, "top_n": 2}).json()
    assert [r["index"] for r in top["results"]] == [1, 3]
    assert top["usage"]["prompt_tokens"] == sum(3 + len(doc) for doc in DOCS)  # every document was scored
    every = client.post(RERANK, json={"model": "ranker", "query": QUERY, "documents": DOCS, "top_n": 50}).json()
    assert [r["index"] for r in every["results"]] == [1, 3, 2, 0]


def test_return_documents_and_document_objects(client):
    documents = ["a", {"text": "ccc", "title": "ignored"}, "bb"]
    body = {"model": "rr", "query": QUERY, "documents": documents, "return_documents": True, "top_n": 2}
    reply = client.post(RERANK, json=body).json()
    assert reply["model"] == "rr"  # the name asked for, as llama.cpp's server answers
    assert reply["results"] == [
        {"index": 1, "relevance_score": 3.0, "document": {"text": "ccc"}},
        {"index": 2, "relevance_score": 2.0, "document": {"text": "bb"}},
    ]
    plain = client.post(RERANK, json={**body, "return_documents": False}).json()
    assert all("document" not in result for result in plain["results"])


def test_without_a_model_the_first_reranker_of_the_models_file_answers(client, tmp_path, loader):
    reply = client.post("/rerank", json={"query": QUERY, "documents": ["x"]})
    assert reply.status_code == 200 and reply.json()["model"] == "ranker"
    with make_client(tmp_path, loader, [fake_spec("fake-model")]) as no_reranker:
        error = assert_openai_error(no_reranker.post("/rerank", json={"query": QUERY, "documents": ["x"]}), 400)
        assert error["param"] == "model" and "No reranker is configured" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": 5, "documents": ["a"]}, "query"),
        ({"query": "", "documents": ["a"]}, "query"),
        ({"documents": ["a"]}, "query"),
        ({"query": "q", "documents": "a"}, "documents"),
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "q"}, "documents"),
        ({"query": "q", "documents": ["a", 1]}, "documents[1]"),
        ({"query": "q", "documents": [{"txt": "a"}]}, "documents[0].text"),
        ({"query": "q", "documents": [{"text": 1}]}, "documents[0].text"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": "2"}, "top_n"),
        ({"query": "q", "documents": ["a"], "top_n": 1.5}, "top_n"),
        ({"query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
        ({"query": "q", "documents": ["a"], "model": 5}, "model"),
        ({"query": "q", "documents": ["a"], "model": ""}, "model"),
    ],
)
def test_a_wrong_field_is_a_400_naming_its_path(client, loader, body, param):
    assert_openai_error(client.post(RERANK, json={"model": "ranker", **body}), 400, param=param)
    assert "ranker" not in loader.loads  # refused before any model loads


def test_a_body_that_is_not_an_object_is_a_400(client):
    assert_openai_error(client.post(RERANK, json=["query"]), 400, code="invalid_json")
    assert_openai_error(client.post(RERANK, content=b"{broken"), 400)


@pytest.mark.parametrize(("model", "kind"), [("fake-model", "a generative model"), ("embedder", "an embedding model")])
def test_a_chat_or_embedding_model_on_rerank_is_a_400_naming_model_before_it_loads(client, loader, model, kind):
    error = assert_openai_error(client.post(RERANK, json={"model": model, "query": "q", "documents": ["a"]}), 400)
    assert error["param"] == "model" and kind in error["message"] and "not a reranker" in error["message"]
    assert loader.loads == []  # refused from its models.yaml entry: nothing was loaded, nothing evicted
    assert_openai_error(client.post(RERANK, json={"model": "nope", "query": "q", "documents": ["a"]}), 404)


def test_the_loaded_engines_kind_is_checked_too(tmp_path, loader):
    """An entry whose flags do not say what loads (only fakes can do that): the engine's kind is checked too."""
    loader.scripts["odd"] = FakeScript(embedding_dims=4)
    with make_client(tmp_path, loader, [rerank_spec("odd")]) as client:
        body = {"model": "odd", "query": "q", "documents": ["a"]}
        error = assert_openai_error(client.post(RERANK, json=body), 400, param="model")
        assert "an embedding model, not a reranker" in error["message"]


def test_a_reranker_refuses_chat_completions_embeddings_and_messages(client, loader):
    for path, body in [
        (CHAT, {**HELLO, "model": "ranker"}),
        (CHAT, {**HELLO, "model": "ranker", "stream": True}),
        ("/v1/completions", {"model": "ranker", "prompt": "Hi"}),
        ("/v1/completions", {"model": "ranker", "prompt": "Hi", "stream": True}),
        ("/v1/responses", {"model": "ranker", "input": "Hi"}),
        ("/v1/embeddings", {"model": "ranker", "input": "Hi"}),
    ]:
        error = assert_openai_error(client.post(path, json=body), 400, param="model")
        assert "reranker" in error["message"], path
    messages = {"model": "ranker", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    refused = client.post("/v1/messages", json=messages)
    assert refused.status_code == 400 and "reranker" in refused.json()["error"]["message"]
    assert loader.loads == []  # each refused from its models.yaml entry, before the reranker loads


def test_teis_texts_field_is_not_read(client, loader):
    """TEI's body (`texts`, answered as a bare list) is not accepted, though llama-server reads it: without
    `documents` it is a 400 naming `documents` (see the README)."""
    body = {"model": "ranker", "query": "q", "texts": ["a", "b"]}
    assert_openai_error(client.post("/rerank", json=body), 400, param="documents")
    assert loader.loads == []


def test_more_documents_than_the_embedding_input_limit_is_refused_before_a_load(tmp_path, loader):
    with make_client(tmp_path, loader, max_embedding_inputs=2) as client:
        body = {"model": "ranker", "query": "q", "documents": ["a", "b", "c"]}
        error = assert_openai_error(client.post(RERANK, json=body), 400, param="documents")
        assert "at most 2" in error["message"] and loader.loads == []
        assert client.post(RERANK, json={**body, "documents": ["a", "b"]}).status_code == 200


def test_the_token_cap_counts_the_query_with_every_document(tmp_path, loader):
    with make_client(tmp_path, loader, max_embedding_tokens=10) as client:
        body = {"model": "ranker", "query": QUERY, "documents": ["aa", "bb"]}  # 5 + 5 tokens
        assert client.post(RERANK, json=body).status_code == 200
        error = assert_openai_error(client.post(RERANK, json={**body, "documents": ["aa", "bbb"]}), 400)
        assert error["param"] == "documents" and "10 tokens" in error["message"]


def test_a_pair_longer_than_the_context_names_its_document(client):
    body = {"model": "ranker", "query": QUERY, "documents": ["ok", "x" * 62]}  # 3 + 62 > 64
    assert_openai_error(client.post(RERANK, json=body), 400, code="context_length_exceeded", param="documents[1]")


def test_rerank_needs_the_api_key_when_keys_are_configured(tmp_path, loader):
    with make_client(tmp_path, loader, api_keys=["k1"]) as client:
        body = {"model": "ranker", "query": "q", "documents": ["a"]}
        for path in (RERANK, "/rerank"):
            assert_openai_error(client.post(path, json=body), 401, code="invalid_api_key")
            assert client.post(path, json=body, headers={"Authorization": "Bearer k1"}).status_code == 200


def test_a_model_cannot_be_both_an_embedding_model_and_a_reranker(tmp_path):
    with pytest.raises(ValueError, match="cannot both be true"):
        ModelSpec(name="x", source=PathSource(path="/x.gguf"), embedding=True, reranker=True)
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - name: both\n    source: {path: x.gguf}\n    embedding: true\n    reranker: true\n")
    with pytest.raises(ConfigError, match=r"model 'both'.*cannot both be true"):
        load_models_file(models)


def test_the_repository_models_file_lists_a_pinned_reranker():
    models = {spec.name: spec for spec in load_models_file(Path(__file__).parents[3] / "models.yaml").models}
    spec = models["bge-reranker-v2-m3"]
    assert spec.reranker and not spec.embedding
    assert isinstance(spec.source, HubSource) and len(spec.source.revision) == 40  # pinned to a commit


class BlockingReranker(FakeEngine):
    """A reranker whose scoring waits (off the app's loop) until released, and records a cancellation."""

    def __init__(self) -> None:
        super().__init__(FakeScript(reranker=True))
        self.entered = threading.Event()
        self.release = threading.Event()
        self.cancelled = threading.Event()

    async def rerank(self, inputs):
        self.entered.set()
        try:
            await asyncio.to_thread(self.release.wait, WAIT_S)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return await super().rerank(inputs)


class BlockingLoader(FakeLoader):
    def __init__(self) -> None:
        super().__init__()
        self.engine = BlockingReranker()

    def __call__(self, spec):
        self.loads.append(spec.name)
        return self.engine


def single_slot_client(tmp_path, loader: FakeLoader, **settings) -> TestClient:
    """The reranker `r` takes one request at a time (parallel 1, no wait queue)."""
    spec = rerank_spec("r", parallel=1, max_queue=0)
    return make_client(tmp_path, loader, [spec], **settings)


def test_rerank_requests_beyond_the_models_bound_get_a_429(tmp_path):
    loader = BlockingLoader()
    body = {"model": "r", "query": "q", "documents": ["a"]}
    with single_slot_client(tmp_path, loader) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, RERANK, json=body)
        assert loader.engine.entered.wait(WAIT_S)
        assert_openai_error(client.post(RERANK, json=body), 429, code="overloaded")
        loader.engine.release.set()
        assert first.result(WAIT_S).status_code == 200
        assert client.post(RERANK, json=body).status_code == 200  # admitted again


def test_a_rerank_request_past_the_timeout_is_a_504_and_stops_the_engine(tmp_path):
    loader = BlockingLoader()
    # The timeout must leave time to reach the engine (which blocks until released) on a loaded machine.
    with single_slot_client(tmp_path, loader, request_timeout_s=0.5) as client:
        body = {"model": "r", "query": "q", "documents": ["a"]}
        assert_openai_error(client.post(RERANK, json=body), 504, code="timeout")
        assert loader.engine.cancelled.wait(WAIT_S)
        loader.engine.release.set()
        assert client.post(RERANK, json=body).status_code != 429  # its admission was returned


def test_a_cancelled_rerank_request_cancels_the_engine_call():
    loader = BlockingLoader()
    reranker = Reranker(ModelRegistry([rerank_spec("r")], loader))

    async def scenario():
        record = RequestRecord(request_id="", method="", path="")
        request = asyncio.ensure_future(reranker.rerank(RerankPlan(model="r", query="q", documents=["a"]), record))
        await asyncio.to_thread(loader.engine.entered.wait, WAIT_S)
        request.cancel()  # what the route does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await request
        loader.engine.release.set()

    asyncio.run(scenario())
    assert loader.engine.cancelled.is_set()
