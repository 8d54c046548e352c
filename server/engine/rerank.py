"""A cross-encoder reranker served through llama.cpp: rank pooling, whose classification head scores a query and a
document read together (bge-reranker, jina-reranker, ms-marco cross-encoders). Worker processes only.

Pairs are laid out as llama.cpp's server lays them out for its /rerank: the file's `rerank` template with
`{query}` and `{document}` filled in, or else [BOS] query [EOS] [SEP] document [EOS], each special token where the
vocabulary asks for it (BERT: [CLS] q [SEP] d [SEP]; XLM-RoBERTa: <s> q </s> </s> d </s>). llama.cpp tokenizes the
filled template as one string, its tokenizer cutting it at control-token text first and tokenizing the plain text
between whole; so do we, cutting the template alone: the plain stretches, with the query and document put in, are
tokenized whole (so a BPE vocabulary merges across the slot's edge as llama.cpp's does), as text. Unlike llama.cpp,
client text never becomes a control token, and a query holding "{document}" stays text."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from server.config import ModelSpec
from server.engine.base import EngineInfo
from server.engine.embedding import EmbeddingEngine, open_pooled
from server.engine.kinds import Kind
from server.engine.llama import checked_path
from server.engine.native import NativeModel
from server.errors import ContextLengthExceededError, InvalidRequestError, ModelUnavailableError

logger = logging.getLogger(__name__)

QUERY, DOCUMENT = "{query}", "{document}"
_SLOTS = re.compile(r"\{query\}|\{document\}")
_C_SPACE = " \t\n\v\f\r"  # what C's isspace() matches: the whitespace llama.cpp strips beside a control token


@dataclass(frozen=True)
class Special:
    """A control token whose text a `rerank` template holds, and whether llama.cpp's tokenizer strips the
    whitespace before it (`lstrip`) or after it (`rstrip`)."""

    token: int
    text: str
    lstrip: bool = False
    rstrip: bool = False


@dataclass(frozen=True)
class Stretch:
    """Plain text of a pair's layout: the query and document go in its slots, and it is tokenized whole, as text.
    Whitespace at an edge beside a stripping control token is dropped, as llama.cpp drops it."""

    text: str
    strip_start: bool = False
    strip_end: bool = False


Layout = list[list[int] | Stretch]  # control tokens, and the plain stretches between them


class RerankEngine(EmbeddingEngine):
    kind: Kind = "reranker"

    def __init__(self, spec: ModelSpec, native: NativeModel) -> None:
        super().__init__(spec, native, dims=1)
        self._layout = pair_layout(native)

    @classmethod
    def load(cls, spec: ModelSpec) -> RerankEngine:
        path = checked_path(spec)
        if not has_classifier_head(path):
            logger.error("model %s: %s has no classification head (no cls.* tensors)", spec.name, path)
            raise ModelUnavailableError(
                f"The model `{spec.name}` is not a cross-encoder reranker: its file has no classification head."
            )
        native = open_pooled(spec, llama_cpp.LLAMA_POOLING_TYPE_RANK, "not a cross-encoder reranker")
        if llama_cpp.llama_pooling_type(native.ctx) != llama_cpp.LLAMA_POOLING_TYPE_RANK:
            native.free()
            raise ModelUnavailableError(f"llama.cpp does not rerank with the model `{spec.name}`.")
        return cls(spec, native)

    @staticmethod
    def _engine_info(spec: ModelSpec, native: NativeModel, dims: int) -> EngineInfo:
        return EngineInfo(n_ctx=spec.n_ctx, n_vocab=native.n_vocab, reranker=True)

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        raise self._wrong_endpoint("embedding")

    async def rerank_tokens(self, query: str, documents: Sequence[str], max_tokens: int) -> list[list[int]]:
        # Work in proportion to the request: off the worker's loop, which must keep answering pings.
        return await asyncio.to_thread(self._pairs, query, documents, max_tokens)

    async def rerank(self, inputs: Sequence[Sequence[int]]) -> list[float]:
        return [scores[0] for scores in await self._pooled(inputs)]

    def _pairs(self, query: str, documents: Sequence[str], max_tokens: int) -> list[list[int]]:
        n_ctx = self._info.n_ctx
        text = functools.cache(self._text)  # a stretch without the document is the same in every pair
        alone = len(fill(self._layout, query, "", text))
        if alone > n_ctx:
            raise ContextLengthExceededError(
                f"This model's maximum input length is {n_ctx} tokens; the query alone takes {alone}.",
                param="query",
            )
        pairs, total = [], 0
        for index, document in enumerate(documents):
            tokens = fill(self._layout, query, document, text)
            if len(tokens) > n_ctx:
                raise ContextLengthExceededError(
                    f"This model's maximum input length is {n_ctx} tokens; the query and document {index} "
                    f"together take {len(tokens)}.",
                    param=f"documents[{index}]",
                )
            total += len(tokens)
            if total > max_tokens:  # the query is repeated in every pair: stop before they take the memory
                raise InvalidRequestError(
                    f"The query and documents come to more than {max_tokens} tokens (the query counted with each "
                    f"document); this server reranks at most {max_tokens} tokens per request.",
                    param="documents",
                )
            pairs.append(tokens)
        return pairs

    def _text(self, text: str) -> list[int]:
        return self._native.tokenize(text, add_special=False, parse_special=False)

    def _output(self, pointer: Any) -> list[float]:
        """The sequence's score: the first of the classification head's outputs, as llama.cpp's server reads it."""
        if not pointer:
            raise RuntimeError("llama.cpp returned no score for a sequence")
        score = float(pointer[0])
        if not math.isfinite(score):
            raise RuntimeError(f"llama.cpp returned a non-finite score ({score})")
        return [score]


def pair_layout(native: NativeModel) -> Layout:
    """How a (query, document) pair is laid out for this model: its `rerank` template, else llama.cpp's default."""
    raw = llama_cpp.llama_model_chat_template(native.model, b"rerank")
    if raw:
        template = raw.decode("utf-8", "replace")
        return template_layout(template, template_specials(native, template))
    vocab = native.vocab
    eos = llama_cpp.llama_vocab_eos(vocab)
    if eos == llama_cpp.LLAMA_TOKEN_NULL:
        eos = llama_cpp.llama_vocab_sep(vocab)
    bos = [llama_cpp.llama_vocab_bos(vocab)] if llama_cpp.llama_vocab_get_add_bos(vocab) else []
    end = [eos] if llama_cpp.llama_vocab_get_add_eos(vocab) else []
    sep = [llama_cpp.llama_vocab_sep(vocab)] if llama_cpp.llama_vocab_get_add_sep(vocab) else []
    return default_layout(bos, end, sep)


def default_layout(bos: list[int], end: list[int], sep: list[int]) -> Layout:
    """llama.cpp's pair without a template: [BOS] query [EOS] [SEP] document [EOS], the query and the document
    tokenized apart; each special token only where the vocabulary asks for it (empty lists where it does not)."""
    return [_known(bos), Stretch(QUERY), _known(end + sep), Stretch(DOCUMENT), _known(end)]


def template_specials(native: NativeModel, template: str) -> list[Special]:
    """The control tokens llama.cpp's tokenizer finds in the template's text (those it cuts out only when it
    parses special tokens: control and unknown ones; user-defined ones are cut from plain text too)."""
    vocab, cut_when_special = native.vocab, llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    specials = []
    for token in dict.fromkeys(native.tokenize(template, add_special=False, parse_special=True)):
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attr & cut_when_special:
            text = llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", "replace")
            lstrip = bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP)
            specials.append(Special(token, text, lstrip=lstrip, rstrip=bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP)))
    return specials


def template_layout(template: str, specials: Sequence[Special]) -> Layout:
    """The template cut as llama.cpp's tokenizer cuts text (llama_vocab::impl::tokenizer_st_partition): at every
    occurrence of each control token's text, the longest texts first; the plain stretches between keep their slots."""
    parts: list[str | Special] = [template]
    for special in sorted((s for s in specials if s.text), key=lambda s: len(s.text), reverse=True):
        cut: list[str | Special] = []
        for part in parts:
            if isinstance(part, Special):
                cut.append(part)
                continue
            for i, piece in enumerate(part.split(special.text)):
                cut += [special, piece] if i else [piece]
        parts = cut
    layout: Layout = []
    for i, part in enumerate(parts):  # strings and specials alternate: a string's neighbours are specials
        if isinstance(part, Special):
            layout.append([part.token])
        elif part:
            before, after = parts[i - 1] if i else None, parts[i + 1] if i + 1 < len(parts) else None
            layout.append(
                Stretch(
                    part,
                    strip_start=isinstance(before, Special) and before.rstrip,
                    strip_end=isinstance(after, Special) and after.lstrip,
                )
            )
    return layout


def fill(layout: Layout, query: str, document: str, tokenize: Callable[[str], list[int]]) -> list[int]:
    """A pair's tokens: the layout's control tokens, and each stretch with the query and document put in its slots
    (in one pass: the client's text is not searched for slots) tokenized whole by `tokenize`, as plain text."""
    tokens: list[int] = []
    for part in layout:
        if isinstance(part, list):
            tokens += part
            continue
        text = _SLOTS.sub(lambda slot: query if slot.group() == QUERY else document, part.text)
        if part.strip_start:
            text = text.lstrip(_C_SPACE)
        if part.strip_end:
            text = text.rstrip(_C_SPACE)
        if text:
            tokens += tokenize(text)
    return tokens


def has_classifier_head(path: Path) -> bool:
    """Whether the GGUF holds the classification head rank pooling applies (`cls.*`: BERT, XLM-RoBERTa and
    ModernBERT rerankers; Qwen3's as `cls.output`)."""
    from gguf import GGUFReader

    try:
        return any(tensor.name.split(".")[0] == "cls" for tensor in GGUFReader(path, "r").tensors)
    except Exception as exc:  # the header was checked already (gguf_check): llama.cpp reports anything else
        logger.warning("could not read the tensor names of %s: %s", path, exc)
        return True


def _known(tokens: list[int]) -> list[int]:
    return [token for token in tokens if token != llama_cpp.LLAMA_TOKEN_NULL]
