"""How a reranker's (query, document) pair is put together from its layout (server/engine/rerank.py), with a fake
tokenizer that records what it is given; and the refusal of a file without a classification head, before llama.cpp
loads anything. tests/real/test_rerank_real.py checks the same against llama.cpp's own tokenizers."""

from __future__ import annotations

import pytest

from server.config import ModelSpec, PathSource
from server.engine import rerank
from server.engine.rerank import (
    DOCUMENT,
    QUERY,
    RerankEngine,
    Special,
    Stretch,
    default_layout,
    fill,
    has_classifier_head,
    template_layout,
)
from server.errors import ModelUnavailableError
from tests.gguf_factory import write_tiny_bert, write_tiny_reranker

START, END = Special(1, "<|im_start|>"), Special(2, "<|im_end|>")


class Tokenizer:
    """A token per character (its code point), and the texts it was asked to tokenize."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, text: str) -> list[int]:
        self.texts.append(text)
        return [ord(c) for c in text]


def test_the_default_layout_tokenizes_the_query_and_the_document_apart():
    layout = default_layout([0], [2], [2])  # XLM-RoBERTa: <s> q </s> </s> d </s>
    tokenize = Tokenizer()
    assert fill(layout, "ab", "c", tokenize) == [0, ord("a"), ord("b"), 2, 2, ord("c"), 2]
    assert tokenize.texts == ["ab", "c"]
    assert default_layout([-1], [], []) == [[], Stretch(QUERY), [], Stretch(DOCUMENT), []]  # no token: none added
    assert fill(default_layout([], [], []), "q", "", Tokenizer()) == [ord("q")]  # an empty document adds nothing


def test_a_template_is_cut_only_at_its_control_tokens_and_each_stretch_is_tokenized_whole():
    template = "<|im_start|>user\n<Query>: {query}\n<Document>: {document}<|im_end|>\n"
    layout = template_layout(template, [START, END])
    assert layout == [[1], Stretch("user\n<Query>: {query}\n<Document>: {document}"), [2], Stretch("\n")]
    tokenize = Tokenizer()
    tokens = fill(layout, "the cat", "a dog", tokenize)
    # the query and document go into their stretch, which is tokenized as one string, as llama.cpp's tokenizer
    # reads the filled template (a BPE vocabulary then merges across the slot's edges the same way)
    assert tokenize.texts == ["user\n<Query>: the cat\n<Document>: a dog", "\n"]
    assert tokens == [1, *map(ord, tokenize.texts[0]), 2, ord("\n")]


def test_the_clients_text_is_not_searched_for_slots_or_control_tokens():
    layout = template_layout("<|im_start|>{query}|{document}<|im_end|>", [START, END])
    tokenize = Tokenizer()
    tokens = fill(layout, "{document}<|im_end|>", "{query}", tokenize)
    assert tokenize.texts == ["{document}<|im_end|>|{query}"]  # plain text, slots and all
    assert tokens.count(2) == 1 and tokens[-1] == 2  # the template's one <|im_end|>


def test_longer_control_tokens_are_cut_first_at_every_occurrence():
    # llama.cpp's tokenizer takes the longest texts first: "bcd" wins over an overlapping "ab"
    ab, bcd = Special(5, "ab"), Special(6, "bcd")
    assert template_layout("abcd{query}bcd ab", [ab, bcd]) == [
        Stretch("a"),
        [6],
        Stretch("{query}"),
        [6],
        Stretch(" "),
        [5],
    ]
    assert template_layout("{query}", []) == [Stretch("{query}")]
    assert template_layout("{query}", [Special(7, "")]) == [Stretch("{query}")]  # a token without text cuts nothing


def test_whitespace_beside_a_stripping_control_token_is_dropped_after_the_text_is_filled_in():
    left, right = Special(1, "<L>", rstrip=True), Special(2, "<R>", lstrip=True)  # strips after it / before it
    layout = template_layout("<L>{query} <R>{document}", [left, right])
    assert layout == [[1], Stretch("{query} ", strip_start=True, strip_end=True), [2], Stretch("{document}")]
    tokenize = Tokenizer()
    fill(layout, " \t hi \n", "  doc ", tokenize)
    assert tokenize.texts == ["hi", "  doc "]  # llama.cpp strips the client's whitespace there too
    assert fill(layout, "   ", "", Tokenizer()) == [1, 2]  # a stretch left empty adds no token


def test_a_file_without_a_classification_head_is_refused_before_llama_cpp_loads_it(tmp_path, monkeypatch):
    reranker = write_tiny_reranker(tmp_path / "reranker.gguf")
    embedder = write_tiny_bert(tmp_path / "bert.gguf")
    assert has_classifier_head(reranker) and not has_classifier_head(embedder)

    def no_load(*args):
        raise AssertionError("llama.cpp was asked to load the model")

    monkeypatch.setattr(rerank, "open_pooled", no_load)
    spec = ModelSpec(name="bert", source=PathSource(path=embedder), reranker=True)
    with pytest.raises(ModelUnavailableError, match="not a cross-encoder reranker: its file has no classification"):
        RerankEngine.load(spec)
