"""Reranking, in no protocol's terms: a query and documents to one relevance score per document, by a cross-encoder
reranker, within the embedding limits.

The same bounds as embeddings, since the work is the same (one encoder pass per document, the query read with
each): at most `max_embedding_inputs` documents and `max_embedding_tokens` tokens in all per request (the query
counted with every document), each pair within the model's context; the per-model admission bound; the request
timeout; and cancellation that reaches the worker (it stops between batches)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.engine.kinds import info_kind, require_kind, spec_kind
from server.errors import InvalidRequestError
from server.generation.embedding import PooledWork, within_request_timeout
from server.metrics import RequestRecord


@dataclass(frozen=True)
class RerankPlan:
    model: str | None  # None: the first reranker of the models file, as llama-server serves its one model
    query: str
    documents: Sequence[str]


@dataclass(frozen=True)
class Reranked:
    model: str  # the name the request asked for, or the reranker chosen for it
    scores: list[float]  # one per document, in the request's order
    tokens: int


class Reranker(PooledWork):
    async def rerank(self, plan: RerankPlan, record: RequestRecord) -> Reranked:
        """Score within the request timeout; past it (or when the client leaves) the worker stops too."""
        return await within_request_timeout(self._rerank(plan, record), self._timeout, record)

    async def _rerank(self, plan: RerankPlan, record: RequestRecord) -> Reranked:
        limits = self._limits
        if len(plan.documents) > limits.max_embedding_inputs:
            raise InvalidRequestError(
                f"Too many documents: {len(plan.documents)}; this server reranks at most "
                f"{limits.max_embedding_inputs} per request.",
                param="documents",
            )
        name = plan.model or self._default_model()
        spec = self._registry.resolve(name)
        record.model = spec.name
        require_kind(name, spec_kind(spec), "reranker")  # before a chat or embedding model loads
        with self._admission.admit(spec):
            async with self._registry.use(name) as engine:
                require_kind(name, info_kind(engine.info), "reranker")
                pairs = await engine.rerank_tokens(plan.query, plan.documents, limits.max_embedding_tokens)
                _check_pairs(pairs)
                scores = await engine.rerank(pairs)
        used = sum(map(len, pairs))
        record.prompt_tokens = used
        return Reranked(name, scores, used)

    def _default_model(self) -> str:
        name = next((spec.name for spec in self._registry.specs() if spec.reranker), None)
        if name is None:
            raise InvalidRequestError(
                "No reranker is configured (`reranker: true` in models.yaml); name one in `model`.", param="model"
            )
        return name


def _check_pairs(pairs: list[list[int]]) -> None:
    for index, tokens in enumerate(pairs):
        if not tokens:  # a model without special tokens, and text that tokenizes to nothing
            raise InvalidRequestError(f"The query and document {index} hold no tokens.", param=f"documents[{index}]")
