"""`POST /v1/rerank` (and `/rerank`): reranking in the shape llama.cpp's server, Jina and Cohere share.

Request: `query`, `documents` (strings, or Jina's and Cohere's `{"text": ...}` objects), `top_n`, `return_documents`
and `model` (optional, as llama-server serves one model: the first `reranker: true` entry of models.yaml).
Answer: `results` with each document's `index` and `relevance_score`, best first and cut to `top_n`, each with its
`document` when asked; `usage` counts the tokens of every (query, document) pair. Scores are llama.cpp's: the
classification head's raw output (a logit, not squashed into 0..1), so only their order and differences mean
anything across models."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from server.generation.rerank import Reranked, Reranker, RerankPlan
from server.http.deps import RecordDep, json_body, request_body_doc, require_api_key
from server.http.disconnect import ClientLeft, unless_disconnected


class RerankDocument(BaseModel):
    """Jina's and Cohere's document object; only its text is read."""

    model_config = ConfigDict(strict=True, extra="ignore")

    text: str


class RerankRequest(BaseModel):
    """How many documents one request may hold is the operator's `max_embedding_inputs`, checked by the reranker;
    how long they may be, the model's context (per pair) and `max_embedding_tokens` (all pairs together)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: Annotated[str, Field(min_length=1)] | None = None
    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] = Field(min_length=1)
    top_n: Annotated[int, Field(ge=1)] | None = None
    return_documents: bool = False

    def texts(self) -> list[str]:
        return [doc if isinstance(doc, str) else doc.text for doc in self.documents]


class DocumentText(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: DocumentText | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankList(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    results: list[RerankResult]
    usage: RerankUsage


def rerank_plan(body: RerankRequest) -> RerankPlan:
    return RerankPlan(model=body.model, query=body.query, documents=body.texts())


def rerank_list(body: RerankRequest, reranked: Reranked) -> RerankList:
    """Best first (ties in the request's order), cut to `top_n`."""
    order = sorted(range(len(reranked.scores)), key=lambda i: -reranked.scores[i])[: body.top_n]
    texts = body.texts() if body.return_documents else None
    results = [
        RerankResult(
            index=i,
            relevance_score=reranked.scores[i],
            document=None if texts is None else DocumentText(text=texts[i]),
        )
        for i in order
    ]
    usage = RerankUsage(prompt_tokens=reranked.tokens, total_tokens=reranked.tokens)
    return RerankList(id=f"rerank-{uuid.uuid4().hex}", model=reranked.model, results=results, usage=usage)


async def get_reranker(request: Request) -> Reranker:
    return request.app.state.reranker


RerankBody = Annotated[RerankRequest, Depends(json_body(RerankRequest))]
RerankerDep = Annotated[Reranker, Depends(get_reranker)]

rerank_routes = APIRouter(dependencies=[Depends(require_api_key)])


@rerank_routes.post("/v1/rerank", response_model=None, openapi_extra=request_body_doc(RerankRequest))
@rerank_routes.post("/rerank", response_model=None, openapi_extra=request_body_doc(RerankRequest))
async def rerank(request: Request, body: RerankBody, reranker: RerankerDep, record: RecordDep) -> Response:
    async def score() -> RerankList:
        return rerank_list(body, await reranker.rerank(rerank_plan(body), record))

    try:
        answer = await unless_disconnected(request, score())
    except ClientLeft as left:
        return left.response()
    return JSONResponse(answer.model_dump(mode="json", exclude_none=True))
