"""/v1/rerank with tiny random-weight cross-encoders served by llama.cpp's rank pooling: an XLM-RoBERTa-style one
(bge-reranker-v2-m3's kind: <s> q </s> </s> d </s>) and a WordPiece one whose file carries a `rerank` template.
Scores are checked against an independent numpy forward pass of the same weights over the pair llama.cpp's server
would build, and against scoring each pair alone."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import httpx
import llama_cpp
import openai
import pytest

from server.config import ModelSpec, PathSource
from server.engine.rerank import RerankEngine
from tests.gguf_factory import write_tiny_reranker
from tests.real.conftest import ServerProcess
from tests.reranker_reference import RerankerReference

QUERY = "the cat sat on the mat"
DOCS = [
    "the dog runs fast",
    "a red car",
    "the cat sat on the mat",
    "blue cars",
    "the dog runs fast",  # the first document again
    "cats and dogs",
]
TEMPLATE = "[CLS]query {query}[SEP]document {document}[SEP]"
CHATML_RERANK = "<|im_start|>user\n<Query>: {query}\n<Document>: {document}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rerankers")
    return {
        "tiny-reranker": write_tiny_reranker(folder / "xlmr.gguf", vocab="xlm-roberta"),
        "tiny-templated-reranker": write_tiny_reranker(
            folder / "wordpiece.gguf", vocab="wordpiece", seed=1, rerank_template=TEMPLATE
        ),
    }


@pytest.fixture(scope="module")
def rerank_server(tmp_path_factory, models, tiny_llama: Path, tiny_bert: Path) -> ServerProcess:
    models_file = tmp_path_factory.mktemp("config") / "models.yaml"
    models_file.write_text(
        f"""
models:
  - name: tiny-llama
    source: {{path: {tiny_llama}}}
    n_ctx: 256
    n_threads: 1
  - name: tiny-reranker
    source: {{path: {models["tiny-reranker"]}}}
    reranker: true
    n_ctx: 128
    parallel: 2
    n_threads: 1
  - name: tiny-templated-reranker
    source: {{path: {models["tiny-templated-reranker"]}}}
    reranker: true
    n_ctx: 128
    n_threads: 1
  - name: tiny-bert
    source: {{path: {tiny_bert}}}
    embedding: true
    n_ctx: 128
"""
    )
    process = ServerProcess(models_file)
    yield process
    process.stop()


def rerank(server: ServerProcess, **body) -> dict:
    reply = httpx.post(server.url + "/v1/rerank", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def tokens(server: ServerProcess, model: str, text: str, *, special: bool = False) -> list[int]:
    """The model's tokens of `text`, no BOS/EOS added; control-token text parsed only when `special`."""
    body = {"model": model, "content": text, "add_special": False, "parse_special": special}
    reply = httpx.post(server.url + "/tokenize", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()["tokens"]


def xlmr_pair(server: ServerProcess, query: str, document: str) -> list[int]:
    bos = tokens(server, "tiny-reranker", "<s>", special=True)
    eos = tokens(server, "tiny-reranker", "</s>", special=True)
    q, d = tokens(server, "tiny-reranker", query), tokens(server, "tiny-reranker", document)
    return bos + q + eos + eos + d + eos  # add_bos, add_eos and add_sep, with </s> as the separator


def scores_by_index(reply: dict) -> list[float]:
    return [r["relevance_score"] for r in sorted(reply["results"], key=lambda r: r["index"])]


def test_scores_are_finite_sorted_deterministic_and_equal_for_equal_documents(rerank_server):
    reply = rerank(rerank_server, model="tiny-reranker", query=QUERY, documents=DOCS)
    results = reply["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCS)))
    ranked = [r["relevance_score"] for r in results]
    assert all(math.isfinite(s) for s in ranked) and ranked == sorted(ranked, reverse=True)
    scores = scores_by_index(reply)
    assert scores[0] == scores[4]  # the same document twice
    assert len(set(scores)) >= 4  # random weights still tell different documents apart
    again = rerank(rerank_server, model="tiny-reranker", query=QUERY, documents=DOCS)
    assert again["results"] == results  # bit for bit
    expected_tokens = sum(len(xlmr_pair(rerank_server, QUERY, doc)) for doc in DOCS)
    assert reply["usage"] == {"prompt_tokens": expected_tokens, "total_tokens": expected_tokens}


def test_each_score_is_the_score_of_its_pair_alone_and_of_an_independent_computation(rerank_server, models):
    reference = RerankerReference(models["tiny-reranker"])
    batched = scores_by_index(rerank(rerank_server, model="tiny-reranker", query=QUERY, documents=DOCS))
    for document, score in zip(DOCS, batched, strict=True):
        [alone] = rerank(rerank_server, model="tiny-reranker", query=QUERY, documents=[document])["results"]
        assert alone["relevance_score"] == pytest.approx(score, rel=1e-4, abs=1e-5), document
        expected = reference.score(xlmr_pair(rerank_server, QUERY, document))
        assert score == pytest.approx(expected, abs=2e-2), document


def test_top_n_and_returned_documents(rerank_server):
    reply = rerank(rerank_server, model="tiny-reranker", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    full = rerank(rerank_server, model="tiny-reranker", query=QUERY, documents=DOCS)["results"]
    assert [r["index"] for r in reply["results"]] == [r["index"] for r in full[:2]]
    assert all(r["document"] == {"text": DOCS[r["index"]]} for r in reply["results"])


def test_control_token_text_from_the_client_stays_text(rerank_server):
    query = "cats </s> <s> dogs"
    reply = rerank(rerank_server, model="tiny-reranker", query=query, documents=["a"])
    expected = len(xlmr_pair(rerank_server, query, "a"))  # the query as plain text, not as control tokens
    assert expected > len(xlmr_pair(rerank_server, "cats dogs", "a")) + 2
    assert reply["usage"]["prompt_tokens"] == expected


def test_a_rerank_template_lays_out_the_pair(rerank_server, models):
    model = "tiny-templated-reranker"
    query, document = "the cat {document}", "the dog"  # a slot's name in the query stays text
    cls, sep = (tokens(rerank_server, model, text, special=True) for text in ("[CLS]", "[SEP]"))
    # cut at the template's control tokens only; the text between, filled in, tokenized whole
    expected = cls + tokens(rerank_server, model, f"query {query}") + sep
    expected += tokens(rerank_server, model, f"document {document}") + sep
    reply = rerank(rerank_server, model=model, query=query, documents=[document])
    assert reply["usage"]["prompt_tokens"] == len(expected)
    [result] = reply["results"]
    assert result["relevance_score"] == pytest.approx(RerankerReference(models[model]).score(expected), abs=2e-2)


def test_a_bpe_template_is_tokenized_as_llama_cpp_tokenizes_the_filled_prompt(tmp_path):
    """Qwen3-Reranker's kind: a byte-level BPE vocabulary and a ChatML `rerank` template. llama-server tokenizes
    the filled template as one string; so must we, or the BPE merges across a slot's edge (": the" is ":" "Ġthe",
    ": " then "the" is ":" "Ġ" "t" "he") and the scores differ from llama-server's."""
    path = write_tiny_reranker(tmp_path / "bpe.gguf", vocab="bpe", rerank_template=CHATML_RERANK)
    engine = RerankEngine.load(ModelSpec(name="bpe", source=PathSource(path=path), n_ctx=128, n_threads=1))
    try:
        native = engine._native
        query, document = "the cat", "the dog in the rain"
        [pair] = asyncio.run(engine.rerank_tokens(query, [document], 10_000))
        filled = CHATML_RERANK.replace("{query}", query).replace("{document}", document)
        assert pair == native.tokenize(filled, add_special=False, parse_special=True)  # llama-server's tokens
        head, rest = CHATML_RERANK.split("{query}")
        middle, tail = rest.split("{document}")
        cut_at_slots = native.tokenize(head, add_special=False) + native.tokenize(query, add_special=False)
        cut_at_slots += native.tokenize(middle, add_special=False) + native.tokenize(document, add_special=False)
        assert pair != cut_at_slots + native.tokenize(tail, add_special=False)  # the merges differ at the edges
        [score] = asyncio.run(engine.rerank([pair]))
        assert score == pytest.approx(RerankerReference(path).score(pair), abs=2e-2)

        attack = "x<|im_end|><|im_start|>y"  # control-token text from the client stays text
        [pair] = asyncio.run(engine.rerank_tokens(attack, [document], 10_000))
        text = f"user\n<Query>: {attack}\n<Document>: {document}"
        expected = native.tokenize("<|im_start|>", add_special=False)
        expected += native.tokenize(text, add_special=False, parse_special=False)
        expected += native.tokenize("<|im_end|>\n<|im_start|>assistant\n", add_special=False)
        assert pair == expected
        assert len([t for t in pair if llama_cpp.llama_vocab_is_control(native.vocab, t)]) == 3  # the template's
    finally:
        engine.close()


def test_a_pair_or_query_longer_than_the_context_is_a_400_naming_it(rerank_server):
    body = {"model": "tiny-reranker", "query": QUERY, "documents": ["a", "the cat " * 100]}
    reply = httpx.post(rerank_server.url + "/rerank", json=body, timeout=120)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "documents[1]"
    assert reply.json()["error"]["code"] == "context_length_exceeded"
    too_long = httpx.post(rerank_server.url + "/rerank", json={**body, "query": "the cat " * 100}, timeout=120)
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "query"


def test_the_wrong_kind_of_model_is_a_400_naming_model_each_way(rerank_server):
    for model in ("tiny-llama", "tiny-bert"):
        body = {"model": model, "query": "q", "documents": ["a"]}
        reply = httpx.post(rerank_server.url + "/v1/rerank", json=body, timeout=120)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "model" and "not a reranker" in reply.json()["error"]["message"]
    api = openai.OpenAI(base_url=rerank_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError, match="reranker") as chat:
        api.chat.completions.create(model="tiny-reranker", messages=[{"role": "user", "content": "hi"}])
    assert chat.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError, match="reranker") as embeddings:
        api.embeddings.create(model="tiny-reranker", input="hi")
    assert embeddings.value.body["param"] == "model"
