"""/v1/embeddings through the real app with a fake embedding engine."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

from tests.fakes import FakeScript
from tests.test_routes import CHAT, HELLO, assert_openai_error

EMB = "/v1/embeddings"


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
    assert_openai_error(client.post(EMB, json={"model": "other-model", "input": []}), 400, param="input")
    assert_openai_error(client.post(EMB, json={"model": "other-model", "input": ""}), 400, param="input")
    assert_openai_error(
        client.post(EMB, json={"model": "other-model", "input": "y" * 300}), 400, code="context_length_exceeded"
    )
    assert_openai_error(client.post(EMB, json={"model": "other-model", "input": [[5000]]}), 400, param="input")
    assert_openai_error(client.post(EMB, json={"model": "nope", "input": "x"}), 404)


def test_input_count_limit(tmp_path, loader):
    from tests.test_operations import make_client

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
