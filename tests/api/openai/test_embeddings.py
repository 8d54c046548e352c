"""/v1/embeddings through the real app with a fake embedding engine."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ConfigError, ModelSpec, Settings
from server.generation.embedding import Embedder, EmbeddingPlan
from server.metrics import RequestRecord
from server.models.registry import ModelRegistry
from tests.api.openai.test_routes import CHAT, HELLO, assert_openai_error
from tests.conftest import FakeLoader
from tests.fakes import FakeEngine, FakeScript, fake_spec

EMB = "/v1/embeddings"
WAIT_S = 30  # an upper bound for conditions that hold within milliseconds; reached only when a test fails


def embedding_spec(name: str, **updates) -> ModelSpec:
    return fake_spec(name).model_copy(update={"embedding": True, **updates})


@pytest.fixture
def registry(loader: FakeLoader) -> ModelRegistry:
    """The shared fixture's models, with `other-model` an embedding model (`embedding: true`)."""
    return ModelRegistry([fake_spec("fake-model", "gpt-4o-mini"), embedding_spec("other-model")], loader)


def make_client(tmp_path, loader: FakeLoader, **settings) -> TestClient:
    """A chat model `fake-model`, an embedding model `slow-model` and a reranker `ranker`, with those settings."""
    ranker = fake_spec("ranker").model_copy(update={"reranker": True})
    registry = ModelRegistry([fake_spec("fake-model"), embedding_spec("slow-model"), ranker], loader)
    app = create_app(Settings(models_file=tmp_path / "unused.yaml", **settings), registry=registry)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def embedder(loader):
    loader.scripts["other-model"] = FakeScript(embedding_dims=8)
    return loader


def test_string_list_and_token_inputs(client, embedder):
    one = client.post(EMB, json={"model": "other-model", "input": "hello"}).json()
    assert one["object"] == "list" and one["model"] == "other-model"
    [item] = one["data"]
    assert item["object"] == "embedding" and item["index"] == 0 and len(item["embedding"]) == 8
    assert math.isclose(sum(v * v for v in item["embedding"]), 1.0, rel_tol=1e-6)
    assert one["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    many = client.post(EMB, json={"model": "other-model", "input": ["a", "bb", "ccc"]}).json()
    assert [d["index"] for d in many["data"]] == [0, 1, 2] and many["usage"]["prompt_tokens"] == 6
    tokens = client.post(EMB, json={"model": "other-model", "input": [[1, 2, 3], [4]]}).json()
    assert len(tokens["data"]) == 2 and tokens["usage"]["prompt_tokens"] == 4
    assert len(client.post(EMB, json={"model": "other-model", "input": [5, 6]}).json()["data"]) == 1


def test_base64_and_dimensions(client, embedder):
    plain = client.post(EMB, json={"model": "other-model", "input": "x"}).json()["data"][0]["embedding"]
    packed = client.post(EMB, json={"model": "other-model", "input": "x", "encoding_format": "base64"}).json()
    decoded = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(decoded, plain, strict=True))
    short = client.post(EMB, json={"model": "other-model", "input": "x", "dimensions": 3}).json()["data"][0]
    assert len(short["embedding"]) == 3 and math.isclose(sum(v * v for v in short["embedding"]), 1.0, rel_tol=1e-6)
    assert_openai_error(
        client.post(EMB, json={"model": "other-model", "input": "x", "dimensions": 9}), 400, param="dimensions"
    )


def test_wrong_model_kinds_and_limits(client, embedder, tmp_path):
    assert_openai_error(client.post(EMB, json={"model": "fake-model", "input": "x"}), 400, param="model")
    assert_openai_error(client.post(CHAT, json={**HELLO, "model": "other-model"}), 400)
    assert embedder.loads == []  # both refused from their models.yaml entries, before either model loads
    assert_openai_error(client.post(EMB, json={"model": "other-model", "input": []}), 400, param="input")
    assert_openai_error(client.post(EMB, json={"model": "other-model", "input": ""}), 400, param="input")
    assert_openai_error(
        client.post(EMB, json={"model": "other-model", "input": "y" * 300}), 400, code="context_length_exceeded"
    )
    assert_openai_error(client.post(EMB, json={"model": "other-model", "input": [[5000]]}), 400, param="input")
    assert_openai_error(client.post(EMB, json={"model": "nope", "input": "x"}), 404)


def test_input_count_limit(tmp_path, loader):
    loader.scripts["slow-model"] = FakeScript(embedding_dims=4)
    with make_client(tmp_path, loader, max_embedding_inputs=2) as client:
        assert_openai_error(
            client.post(EMB, json={"model": "slow-model", "input": ["a", "b", "c"]}), 400, param="input"
        )
        assert client.post(EMB, json={"model": "slow-model", "input": ["a", "b"]}).status_code == 200


def test_openai_client_float_and_base64(client, embedder):
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    floats = api.embeddings.create(model="other-model", input=["a", "b"])
    assert len(floats.data) == 2 and len(floats.data[0].embedding) == 8
    packed = api.embeddings.create(model="other-model", input="a", encoding_format="base64")
    assert isinstance(packed.data[0].embedding, str)


class BlockingEmbedder(FakeEngine):
    """An embedding engine whose `embed` waits (on the app's loop) until released, and records a cancellation."""

    def __init__(self) -> None:
        super().__init__(FakeScript(embedding_dims=4))
        self.entered = threading.Event()
        self.release = threading.Event()
        self.cancelled = threading.Event()

    async def embed(self, inputs):
        self.entered.set()
        try:
            await asyncio.to_thread(self.release.wait, WAIT_S)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return await super().embed(inputs)


class BlockingLoader(FakeLoader):
    def __init__(self) -> None:
        super().__init__()
        self.embedder = BlockingEmbedder()

    def __call__(self, spec):
        self.loads.append(spec.name)
        return self.embedder


def single_slot_client(tmp_path, loader: FakeLoader, **settings) -> TestClient:
    """The embedding model `e` takes one request at a time (parallel 1, no wait queue)."""
    spec = embedding_spec("e", parallel=1, max_queue=0)
    app = create_app(Settings(models_file=tmp_path / "unused.yaml", **settings), registry=ModelRegistry([spec], loader))
    return TestClient(app, raise_server_exceptions=False)


def test_embedding_requests_beyond_the_models_bound_get_a_429_with_retry_after(tmp_path):
    loader = BlockingLoader()
    with single_slot_client(tmp_path, loader) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, EMB, json={"model": "e", "input": "a"})
        assert loader.embedder.entered.wait(WAIT_S)
        refused = client.post(EMB, json={"model": "e", "input": "b"})
        assert_openai_error(refused, 429, code="overloaded")
        assert refused.headers["retry-after"] == "1"
        loader.embedder.release.set()
        assert first.result(WAIT_S).status_code == 200
        assert client.post(EMB, json={"model": "e", "input": "c"}).status_code == 200  # admitted again


def test_an_embedding_request_past_the_timeout_is_a_504_and_stops_the_engine(tmp_path):
    loader = BlockingLoader()
    # The timeout must leave time to reach the engine (which blocks until released) on a loaded machine.
    with single_slot_client(tmp_path, loader, request_timeout_s=0.5) as client:
        assert_openai_error(client.post(EMB, json={"model": "e", "input": "a"}), 504, code="timeout")
        assert loader.embedder.cancelled.wait(WAIT_S)
        loader.embedder.release.set()
        assert client.post(EMB, json={"model": "e", "input": "a"}).status_code != 429  # its admission was returned


def test_a_cancelled_embedding_request_cancels_the_engine_call(tmp_path):
    loader = BlockingLoader()
    embedder = Embedder(ModelRegistry([embedding_spec("e")], loader))

    async def scenario():
        record = RequestRecord(request_id="", method="", path="")
        request = asyncio.ensure_future(embedder.embed(EmbeddingPlan(model="e", inputs=["a"]), record))
        await asyncio.to_thread(loader.embedder.entered.wait, WAIT_S)
        request.cancel()  # what the route does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await request
        loader.embedder.release.set()  # lets the waiting thread go

    asyncio.run(scenario())
    assert loader.embedder.cancelled.is_set()


def test_the_total_token_cap_is_a_400_naming_input(tmp_path, loader):
    loader.scripts["slow-model"] = FakeScript(embedding_dims=4)
    with make_client(tmp_path, loader, max_embedding_tokens=5) as client:
        assert_openai_error(
            client.post(EMB, json={"model": "slow-model", "input": [[1, 2, 3], [4, 5, 6]]}), 400, param="input"
        )
        assert loader.loads == []  # token arrays are counted before any model loads
        error = assert_openai_error(client.post(EMB, json={"model": "slow-model", "input": ["abc", "def"]}), 400)
        assert error["param"] == "input" and "at most 5 tokens" in error["message"]
        assert client.post(EMB, json={"model": "slow-model", "input": ["ab", "cde"]}).status_code == 200


@pytest.mark.parametrize(("model", "kind"), [("fake-model", "a generative model"), ("ranker", "a reranker")])
def test_a_chat_model_or_reranker_is_refused_before_it_loads(tmp_path, loader, model, kind):
    with make_client(tmp_path, loader) as client:
        error = assert_openai_error(client.post(EMB, json={"model": model, "input": "x"}), 400, param="model")
    assert f"is {kind}, not an embedding model" in error["message"]
    assert loader.loads == []  # refused from its models.yaml entry: nothing loaded, nothing evicted for it


def test_a_wrong_max_embedding_tokens_setting_is_refused():
    with pytest.raises(ConfigError, match="max_embedding_tokens"):
        Settings.from_env({"SLM_MAX_EMBEDDING_TOKENS": "0"})


def test_embedding_batches_fill_sequences_and_tokens_in_order():
    from server.engine.embedding import batches

    inputs = [[1] * 3, [2] * 3, [3] * 5, [4], [5], [6]]
    assert list(batches(inputs, 2, 8)) == [[[1] * 3, [2] * 3], [[3] * 5, [4]], [[5], [6]]]
    assert list(batches([[1] * 5, [2] * 4, [3]], 4, 8)) == [[[1] * 5], [[2] * 4, [3]]]  # 5 + 4 tokens > 8
    assert list(batches([[1] * 8, [2]], 4, 8)) == [[[1] * 8], [[2]]]


def test_the_embedding_engine_stops_between_batches_once_cancelled():
    from server.engine.embedding import EmbeddingEngine

    # Only the batching loop runs here: the native batch is replaced, so no model is needed.
    engine = EmbeddingEngine.__new__(EmbeddingEngine)
    engine._spec = fake_spec("e").model_copy(update={"parallel": 1})
    engine._lock = threading.Lock()
    engine._batch_started = None
    first_batch, proceed = threading.Event(), threading.Event()
    batches_run = []

    def one_batch(group):
        batches_run.append(group)
        assert engine.stalled_s() >= 0 and engine._batch_started is not None
        first_batch.set()
        proceed.wait(WAIT_S)
        return [[1.0] for _ in group]

    engine._embed_batch = one_batch

    async def scenario():
        embedding = asyncio.ensure_future(engine.embed([[1], [2], [3]]))
        await asyncio.to_thread(first_batch.wait, WAIT_S)
        embedding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await embedding
        proceed.set()
        return await asyncio.to_thread(engine._lock.acquire, True, WAIT_S)  # the thread let go of the engine

    assert asyncio.run(scenario())
    assert len(batches_run) == 1  # the two other batches never ran
    assert engine.stalled_s() == 0.0


def test_a_pooled_engine_refuses_chat_with_the_protocols_arguments():
    """The worker calls render_chat / tokenize_chat with `template_vars` (the Engine protocol): a pooled engine
    refuses them with the 400 naming `model`, not a TypeError (a 500)."""
    from server.engine.embedding import EmbeddingEngine
    from server.engine.rerank import RerankEngine
    from server.errors import InvalidRequestError

    for engine_type, kind in ((EmbeddingEngine, "an embedding model"), (RerankEngine, "a reranker")):
        engine = engine_type.__new__(engine_type)  # only the refusals run: no model is needed
        engine._spec = fake_spec("e")
        messages = [{"role": "user", "content": "Hi"}]
        for call in (engine.render_chat, engine.tokenize_chat):
            with pytest.raises(InvalidRequestError, match=f"is {kind}, not a generative model") as caught:
                asyncio.run(call(messages, None, {"enable_thinking": False}))
            assert caught.value.param == "model"
