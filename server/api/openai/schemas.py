"""OpenAI wire types: requests, responses, stream chunks, model list and error body. Pydantic only."""

from __future__ import annotations

import itertools
import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from server.api.openai.request_parts import (
    ChatMessage,
    ChatToolChoice,
    ChatTools,
    LogitBias,
    ResponseFormat,
    StructuredOutputsParam,
)

logger = logging.getLogger(__name__)
LOGGED_NAMES, LOGGED_NAME_CHARS = 10, 40  # a client can send 100k unknown fields: the log line stays short

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]  # the spec's enum


class OpenAIRequest(BaseModel):
    """Base of request bodies: strict types; unknown fields (newer OpenAI parameters) are accepted and logged."""

    model_config = ConfigDict(strict=True, extra="allow")

    @model_validator(mode="after")
    def _log_unknown_fields(self) -> OpenAIRequest:
        if self.model_extra:
            names = [name[:LOGGED_NAME_CHARS] for name in itertools.islice(self.model_extra, LOGGED_NAMES)]
            logger.info("ignoring %d unknown request fields: %s", len(self.model_extra), names)
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    include_usage: bool = False


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Field(ge=1)]
Stop = str | Annotated[list[str], Field(max_length=4)]


class SamplingFields(OpenAIRequest):
    """Parameters shared by chat and legacy completions."""

    model: str = Field(min_length=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: PositiveInt | None = None
    stop: Stop | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: LogitBias | None = None
    # llama.cpp server extensions, under the names its users know.
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    ignore_eos: bool = False
    # Output constraints besides `response_format` (server/api/openai/constraints.py), under the names users of
    # vLLM (`structured_outputs`, and its older `guided_*`) and of llama.cpp's server (`grammar`, GBNF) know.
    structured_outputs: StructuredOutputsParam | None = None
    grammar: str | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: ChatTools | None = None
    tool_choice: ChatToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: ReasoningEffort | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    max_tokens: PositiveInt | None = 16  # OpenAI's documented default for legacy completions
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    best_of: int | None = None
    suffix: str | None = None

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None  # for a reasoning model's replies

    @model_serializer(mode="wrap")
    def _drop_empty_details(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("completion_tokens_details") is None:
            data.pop("completion_tokens_details", None)
        return data


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    # A reasoning model's thinking, where DeepSeek's API, vLLM and llama.cpp's server put it (not OpenAI's field).
    reasoning_content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_empty_tool_calls(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for name in ("tool_calls", "reasoning_content"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class _Fingerprinted(BaseModel):
    """OpenAI's schema types `system_fingerprint` as a string, never null: it is left out when there is none."""

    system_fingerprint: str | None = None

    @model_serializer(mode="wrap")
    def _without_empty_fingerprint(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("system_fingerprint") is None:
            data.pop("system_fingerprint", None)
        return data


class ChatCompletion(_Fingerprinted):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    """A stream delta: fields that carry nothing are left out, as OpenAI does."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None  # a reasoning model's thinking (as on AssistantMessage)
    tool_calls: list[dict[str, Any]] | None = None

    @model_serializer(mode="wrap")
    def _drop_nones(self, handler: Any) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Fingerprinted):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class Completion(_Fingerprinted):
    """A legacy completion; also the shape of each of its stream chunks (`usage` then only on the last)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # slm-server's additions: whether the model's file is on this machine, whether it is in memory, and the memory
    # its worker takes (estimated before it loads; measured while it is loaded).
    available: bool = True
    loaded: bool = False
    memory: ModelMemory | None = None
    # What the model takes besides text: "vision" (images) for a model with a projector (`mmproj`).
    capabilities: list[Literal["vision"]] = Field(default_factory=list)


class ModelMemory(BaseModel):
    """Bytes: the estimate's total and its parts (server/engine/memory.py), and the worker's resident memory."""

    estimated: int
    weights: int
    kv_cache: int
    compute: int
    process: int
    resident: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
