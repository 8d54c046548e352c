"""One batch line, run as the live endpoint runs a request: the same body model (so a bad body is the same 400,
naming the same field), the same use case, the same response body; at batch priority in the engine."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from pydantic import BaseModel, ValidationError

from server.api.openai import endpoints
from server.api.openai import responses as responses_api
from server.api.openai.embeddings import EmbeddingRequest, embedding_list, embedding_plan
from server.api.openai.plans import off_loop
from server.api.openai.responses import ResponsesRequest
from server.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from server.batch.slice import LineOutcome
from server.errors import (
    APIError,
    InternalError,
    InvalidRequestError,
    NoRoomForBatch,
    PreemptedError,
    from_validation_errors,
)
from server.generation.embedding import Embedder
from server.generation.pipeline import GenerationPipeline
from server.generation.reply import finished
from server.metrics import RequestRecord

logger = logging.getLogger(__name__)

BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/responses": ResponsesRequest,
    "/v1/embeddings": EmbeddingRequest,
}


class BatchLines:
    def __init__(self, pipeline: GenerationPipeline, embedder: Embedder) -> None:
        self._pipeline = pipeline.with_priority("batch")
        self._embedder = embedder.with_priority("batch")

    async def __call__(self, endpoint: str, body: Any) -> LineOutcome:
        request_id = f"req_{secrets.token_hex(12)}"
        record = RequestRecord(request_id=request_id, method="POST", path=endpoint)
        try:
            parsed = _parse(BODIES[endpoint], body)
            answer = await self._run(endpoint, parsed, record)
        except (PreemptedError, NoRoomForBatch):
            raise  # the runner runs the line again (when there is room)
        except APIError as error:
            return LineOutcome(error.status_code, error.body().model_dump(mode="json"), request_id=request_id)
        except Exception:
            logger.exception("a batch line failed")
            error = InternalError()
            return LineOutcome(error.status_code, error.body().model_dump(mode="json"), request_id=request_id)
        return LineOutcome(200, answer, _tokens(answer), request_id)

    async def _run(self, endpoint: str, body: Any, record: RequestRecord) -> dict[str, Any]:
        pipeline = self._pipeline
        if endpoint == "/v1/embeddings":
            return _dumped(embedding_list(body, await self._embedder.embed(embedding_plan(body), record)))
        if getattr(body, "stream", None):
            raise InvalidRequestError("A batch request cannot stream: leave 'stream' out.", param="stream")
        if endpoint == "/v1/chat/completions":
            return _dumped(await endpoints.chat(pipeline, body, record))
        if endpoint == "/v1/completions":
            return _dumped(await endpoints.complete(pipeline, body, record))
        plan = await off_loop(responses_api.to_plan, body)
        generation = await pipeline.start(plan, record)
        (choice,) = await finished(generation.events, generation.choices)
        return responses_api.from_finished(body, choice, generation.prompt_tokens)


def _parse(model: type[BaseModel], body: Any) -> BaseModel:
    """As the live endpoint parses its JSON body (strict JSON-mode validation)."""
    try:
        return model.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None


def _dumped(answer: BaseModel) -> dict[str, Any]:
    return answer.model_dump(mode="json")


def _tokens(answer: dict[str, Any]) -> tuple[int, int]:
    usage = answer.get("usage") or {}
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return int(prompt or 0), int(completion or 0)
