"""A check of response bodies against OpenAI's published API schema (openai/openai-openapi, `openapi.yaml`):
for each object the fields the spec lists as required, their types, and which of them may be null. Fields the
spec does not list (slm-server's own additions) are allowed, as they are for any OpenAI client.

`check_body(path, body)` returns the violations for one JSON body; `check_sse(path, text)` for each event of
a stream. The real tier runs every body its clients receive through it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

STR, INT, NUM, BOOL, ANY = "string", "integer", "number", "boolean", "any"


@dataclass(frozen=True)
class Nullable:
    inner: Any


@dataclass(frozen=True)
class Array:
    items: Any


@dataclass(frozen=True)
class Const:
    value: str


@dataclass(frozen=True)
class OneOf:
    options: tuple[Any, ...]


@dataclass(frozen=True)
class Obj:
    required: dict[str, Any]
    optional: dict[str, Any] = field(default_factory=dict)


USAGE = Obj({"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT})
TOP_LOGPROB = Obj({"token": STR, "logprob": NUM, "bytes": Nullable(Array(INT))})
TOKEN_LOGPROB = Obj({"token": STR, "logprob": NUM, "bytes": Nullable(Array(INT)), "top_logprobs": Array(TOP_LOGPROB)})
CHOICE_LOGPROBS = Obj({"content": Nullable(Array(TOKEN_LOGPROB)), "refusal": Nullable(Array(TOKEN_LOGPROB))})
TOOL_CALL = Obj({"id": STR, "type": Const("function"), "function": Obj({"name": STR, "arguments": STR})})
MESSAGE = Obj(
    {"role": Const("assistant"), "content": Nullable(STR), "refusal": Nullable(STR)},
    {"tool_calls": Array(TOOL_CALL)},
)
CHAT_COMPLETION = Obj(
    {
        "id": STR,
        "object": Const("chat.completion"),
        "created": INT,
        "model": STR,
        "choices": Array(
            Obj({"index": INT, "message": MESSAGE, "finish_reason": STR, "logprobs": Nullable(CHOICE_LOGPROBS)})
        ),
    },
    {"usage": USAGE, "system_fingerprint": STR, "service_tier": Nullable(STR)},
)
TOOL_CALL_CHUNK = Obj(
    {"index": INT},
    {"id": STR, "type": Const("function"), "function": Obj({}, {"name": STR, "arguments": STR})},
)
CHAT_CHUNK = Obj(
    {
        "id": STR,
        "object": Const("chat.completion.chunk"),
        "created": INT,
        "model": STR,
        "choices": Array(
            Obj(
                {
                    "index": INT,
                    "delta": Obj(
                        {},
                        {
                            "role": STR,
                            "content": Nullable(STR),
                            "refusal": Nullable(STR),
                            "tool_calls": Array(TOOL_CALL_CHUNK),
                        },
                    ),
                    "finish_reason": Nullable(STR),
                },
                {"logprobs": Nullable(CHOICE_LOGPROBS)},
            )
        ),
    },
    {"usage": Nullable(USAGE), "system_fingerprint": STR, "service_tier": Nullable(STR)},
)
LEGACY_LOGPROBS = Obj(
    {}, {"text_offset": Array(INT), "token_logprobs": Array(NUM), "tokens": Array(STR), "top_logprobs": Array(ANY)}
)


def _completion(stream: bool) -> Obj:
    # The spec describes streamed completions with the same object; their finish_reason is null until the end.
    finish = Nullable(STR) if stream else STR
    choice = Obj({"index": INT, "text": STR, "finish_reason": finish, "logprobs": Nullable(LEGACY_LOGPROBS)})
    return Obj(
        {"id": STR, "object": Const("text_completion"), "created": INT, "model": STR, "choices": Array(choice)},
        {"usage": USAGE, "system_fingerprint": STR},
    )


EMBEDDINGS = Obj(
    {
        "object": Const("list"),
        "model": STR,
        "data": Array(Obj({"index": INT, "object": Const("embedding"), "embedding": OneOf((Array(NUM), STR))})),
        "usage": Obj({"prompt_tokens": INT, "total_tokens": INT}),
    }
)
MODEL = Obj({"id": STR, "object": Const("model"), "created": INT, "owned_by": STR})
MODELS = Obj({"object": Const("list"), "data": Array(MODEL)})
ERROR = Obj({"error": Obj({"message": STR, "type": STR, "param": Nullable(STR), "code": Nullable(STR)})})
OUTPUT_TEXT = Obj({"type": Const("output_text"), "text": STR, "annotations": Array(ANY)})
OUTPUT_ITEM = OneOf(
    (
        Obj(
            {
                "type": Const("message"),
                "id": STR,
                "status": STR,
                "role": Const("assistant"),
                "content": Array(OUTPUT_TEXT),
            }
        ),
        Obj(
            {"type": Const("function_call"), "call_id": STR, "name": STR, "arguments": STR}, {"id": STR, "status": STR}
        ),
    )
)
RESPONSE = Obj(
    {
        "id": STR,
        "object": Const("response"),
        "created_at": NUM,
        "model": STR,
        "output": Array(OUTPUT_ITEM),
        "error": Nullable(ANY),
        "incomplete_details": Nullable(Obj({}, {"reason": STR})),
        "instructions": Nullable(ANY),
        "metadata": Nullable(ANY),
        "parallel_tool_calls": BOOL,
        "temperature": Nullable(NUM),
        "top_p": Nullable(NUM),
        "tool_choice": ANY,
        "tools": Array(ANY),
    },
    {
        "status": STR,
        "usage": Nullable(Obj({"input_tokens": INT, "output_tokens": INT, "total_tokens": INT})),
        "max_output_tokens": Nullable(INT),
    },
)
RESPONSE_EVENT = Obj({"type": STR, "sequence_number": INT}, {"response": RESPONSE, "item": OUTPUT_ITEM})


def schema_for(path: str, body: Any, *, stream: bool) -> Obj | None:
    if isinstance(body, dict) and "error" in body and len(body) == 1:
        return ERROR
    path = path.split("?")[0]
    if path.endswith("/chat/completions"):
        return CHAT_CHUNK if stream else CHAT_COMPLETION
    if path.endswith("/v1/completions"):
        return _completion(stream)
    if path.endswith("/embeddings"):
        return EMBEDDINGS
    if path.endswith("/v1/models"):
        return MODELS
    if "/v1/models/" in path:
        return MODEL
    if path.endswith("/responses"):
        return RESPONSE_EVENT if stream else RESPONSE
    return None


def check_body(path: str, body: Any, *, stream: bool = False) -> list[str]:
    schema = schema_for(path, body, stream=stream)
    return [] if schema is None else [f"{path}: {problem}" for problem in _check(schema, body, "$")]


def check_sse(path: str, text: str) -> list[str]:
    problems = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            problems += check_body(path, json.loads(line[len("data: ") :]), stream=True)
    return problems


def _check(schema: Any, value: Any, where: str) -> list[str]:
    if isinstance(schema, Nullable):
        return [] if value is None else _check(schema.inner, value, where)
    if value is None and schema != ANY:
        return [f"{where} is null, which the schema does not allow"]
    if isinstance(schema, Const):
        return [] if value == schema.value else [f"{where} is {value!r}, not {schema.value!r}"]
    if isinstance(schema, OneOf):
        attempts = [_check(option, value, where) for option in schema.options]
        return [] if any(not a for a in attempts) else min(attempts, key=len)
    if isinstance(schema, Array):
        if not isinstance(value, list):
            return [f"{where} is not an array"]
        return [p for i, item in enumerate(value) for p in _check(schema.items, item, f"{where}[{i}]")]
    if isinstance(schema, Obj):
        if not isinstance(value, dict):
            return [f"{where} is not an object"]
        problems = [f"{where}.{key} is missing (required)" for key in schema.required if key not in value]
        for key, sub in {**schema.optional, **schema.required}.items():
            if key in value:
                problems += _check(sub, value[key], f"{where}.{key}")
        return problems
    expected = {
        STR: (str,),
        INT: (int,),
        NUM: (int, float),
        BOOL: (bool,),
        ANY: (object,),
    }[schema]
    if isinstance(value, bool) and schema in (INT, NUM):
        return [f"{where} is a boolean, not a {schema}"]
    return [] if isinstance(value, expected) or value is None else [f"{where} is not a {schema}"]


class CheckedStreamMixin:
    """Wraps a response's byte stream: passes the bytes through untouched, and checks the whole body against the
    schema when the stream closes, adding any violation to `violations`."""

    def __init__(self, inner: Any, path: str, content_type: str, violations: list[str]) -> None:
        self._inner = inner
        self._path = path
        self._content_type = content_type
        self._violations = violations
        self._body = bytearray()

    def __iter__(self):
        for chunk in self._inner:
            self._body.extend(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()
        text = self._body.decode("utf-8", "replace")
        if "text/event-stream" in self._content_type:
            self._violations += check_sse(self._path, text)
        elif "application/json" in self._content_type and text:
            self._violations += check_body(self._path, json.loads(text))


def _checked_stream_class(stream_type: type) -> type:
    # httpx and the httpx fork Starlette's test client uses each insist on their own SyncByteStream type.
    base = next(c for c in stream_type.__mro__ if c.__name__ == "SyncByteStream")
    return type("CheckedStream", (CheckedStreamMixin, base), {})


def check_responses_of(transport_class: type, monkeypatch: Any, violations: list[str]) -> None:
    """Route every /v1 response that `transport_class` returns through the schema check."""
    original = transport_class.handle_request

    def handle_request(self: Any, request: Any) -> Any:
        response = original(self, request)
        if request.url.path.startswith("/v1/"):
            content_type = response.headers.get("content-type", "")
            response.stream = _checked_stream_class(type(response.stream))(
                response.stream, request.url.path, content_type, violations
            )
        return response

    monkeypatch.setattr(transport_class, "handle_request", handle_request)
