"""Response bodies checked against OpenAI's own published OpenAPI description (`openai/openapi.json` here, vendored
unchanged from openai/openai-openapi): each body is validated with `jsonschema` against the spec's component schema
for its endpoint, every `$ref` resolved over the whole document. Fields the spec does not list (slm-server's own
additions) pass wherever the spec allows additional properties, as JSON Schema does by default.

`check_body(path, body, status=...)` returns the violations of one JSON body, `check_sse(path, text)` those of each
event of a stream; `check_responses_of` hooks a transport so that every /v1 body a test receives is checked."""

from __future__ import annotations

import copy
import functools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4, DRAFT202012

SPEC_FILE = Path(__file__).parent / "openai" / "openapi.json"
SPEC_URI = "urn:openai-openapi"
SCHEMAS = "#/components/schemas/"

ERROR_BODY = "ErrorResponse"
COMPLETION_CHUNK = "x-slm-CompletionStreamChunk"
# Request path -> (component of its JSON body, component of each event of its stream).
ENDPOINTS = {
    "/v1/chat/completions": ("CreateChatCompletionResponse", "CreateChatCompletionStreamResponse"),
    "/v1/completions": ("CreateCompletionResponse", COMPLETION_CHUNK),
    "/v1/embeddings": ("CreateEmbeddingResponse", None),
    "/v1/models": ("ListModelsResponse", None),
    "/v1/responses": ("Response", "ResponseStreamEvent"),
}
MODEL_PATH_PREFIX = "/v1/models/"
MODEL_BODY = "Model"
# Files and batches: a path under the collection is one object (or, for .../cancel, the batch it cancelled).
COLLECTIONS = {
    "/v1/files": ("ListFilesResponse", "OpenAIFile"),
    "/v1/batches": ("ListBatchesResponse", "Batch"),
}
DELETED_FILE = "DeleteFileResponse"
# Under /v1 but not OpenAI's protocol: Anthropic's (checked by tests/contracts/anthropic_contract.py instead), and
# reranking, which OpenAI does not have (llama.cpp's, Jina's and Cohere's shape; tests/api/llamacpp/test_rerank.py).
OTHER_PROTOCOL_PATHS = ("/v1/messages", "/v1/messages/count_tokens", "/v1/rerank")


def _completion_chunk(schemas: dict[str, Any]) -> dict[str, Any]:
    # The spec says a streamed completion has the non-streamed object's shape, whose finish_reason is never null;
    # OpenAI's streams send null until the last chunk, as they do for chat, whose chunk schema says so.
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    finish = chunk["properties"]["choices"]["items"]["properties"]
    finish["finish_reason"] = {"anyOf": [finish["finish_reason"], {"type": "null"}]}
    return chunk


def _base64_embedding(schemas: dict[str, Any]) -> dict[str, Any]:
    # The spec's Embedding lists only floats, but `encoding_format: base64` (a request field the same spec
    # defines) makes OpenAI send the vector as one base64 string.
    embedding = copy.deepcopy(schemas["Embedding"])
    floats = embedding["properties"]["embedding"]
    embedding["properties"]["embedding"] = {"anyOf": [floats, {"type": "string"}]}
    return embedding


def _with_reasoning_content(component: str) -> Any:
    # slm-server's one extension of chat bodies: a reasoning model's thinking in `reasoning_content`, on the message
    # and on stream deltas, where DeepSeek's API, vLLM and llama.cpp's server put it. Declared here with its type,
    # so it is checked, not merely let through as a property the spec does not list.
    def derive(schemas: dict[str, Any]) -> dict[str, Any]:
        schema = copy.deepcopy(schemas[component])
        schema["properties"]["reasoning_content"] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
        return schema

    return derive


def _null_until_known(component: str) -> Any:
    # The spec types a batch's and a file's optional fields as plain integers and strings, while its own examples
    # (and OpenAI's API) send null for each that is not known yet (`"completed_at": null`); the SDKs' types say so.
    def derive(schemas: dict[str, Any]) -> dict[str, Any]:
        schema = copy.deepcopy(schemas[component])
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            if name not in required:
                schema["properties"][name] = {"anyOf": [prop, {"type": "null"}]}
        return schema

    return derive


def _empty_page(component: str) -> Any:
    # A list with no items has no first or last id: null, where the spec has only a string.
    def derive(schemas: dict[str, Any]) -> dict[str, Any]:
        schema = copy.deepcopy(schemas[component])
        for name in ("first_id", "last_id"):
            schema["properties"][name] = {"anyOf": [schema["properties"][name], {"type": "null"}]}
        return schema

    return derive


# Where the published spec does not describe what OpenAI itself sends (each function's comment says how), or what
# slm-server deliberately adds: component -> the schema used instead, derived from the spec's own. Applied to the
# in-memory document only.
SPEC_GAPS = {
    COMPLETION_CHUNK: _completion_chunk,
    "Embedding": _base64_embedding,
    "ChatCompletionResponseMessage": _with_reasoning_content("ChatCompletionResponseMessage"),
    "ChatCompletionStreamResponseDelta": _with_reasoning_content("ChatCompletionStreamResponseDelta"),
    "Batch": _null_until_known("Batch"),
    "OpenAIFile": _null_until_known("OpenAIFile"),
    "ListFilesResponse": _empty_page("ListFilesResponse"),
    "ListBatchesResponse": _empty_page("ListBatchesResponse"),
}


def _honour_nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema: the schema, or null. OpenAI's 3.1 document still carries it
    in places (e.g. a chat chunk's `finish_reason`), where it means the same; JSON Schema alone would ignore it."""
    if isinstance(node, list):
        return [_honour_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    walked = {key: _honour_nullable(value) for key, value in node.items() if not _is_nullable_flag(key, value)}
    if node.get("nullable") is True:
        return {"anyOf": [walked, {"type": "null"}]}
    return walked


def _is_nullable_flag(key: str, value: Any) -> bool:
    return key == "nullable" and isinstance(value, bool)


class Contract:
    """The loaded spec: a validator per component, and the stream-event unions resolved by their `type`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        version = str(spec.get("openapi", ""))
        if version.startswith("3.1."):
            self._validator_class, specification = jsonschema.Draft202012Validator, DRAFT202012
        elif version.startswith("3.0."):
            # 3.0's schema objects are an extended subset of JSON Schema draft 4 (boolean exclusiveMinimum ...).
            self._validator_class, specification = jsonschema.Draft4Validator, DRAFT4
        else:
            raise ValueError(f"OpenAPI version {version!r} is not one this check knows")
        spec = _honour_nullable(spec)
        schemas = spec["components"]["schemas"]
        for name, derive in SPEC_GAPS.items():
            schemas[name] = derive(schemas)
        self._schemas = schemas
        self._registry = Registry().with_resource(SPEC_URI, Resource(contents=spec, specification=specification))
        self._validators: dict[str, Any] = {}
        self._unions: dict[str, dict[str, str] | None] = {}

    def violations(self, component: str, body: Any) -> list[str]:
        """Each way `body` breaks the component (for a union of events, the member its `type` names):
        `[component] JSON path: what is wrong`."""
        members = self._events_by_type(component)
        if members is not None:
            kind = body.get("type") if isinstance(body, dict) else None
            if kind not in members:
                return [f"[{component}] $.type: {kind!r} is not the type of any event in {component}"]
            component = members[kind]
        errors = self._validator(component).iter_errors(body)
        leaves = sorted((leaf for error in errors for leaf in _leaf_errors(error)), key=lambda e: e.json_path)
        return [f"[{component}] {leaf.json_path}: {_describe(leaf)}" for leaf in leaves]

    def _validator(self, component: str) -> Any:
        if component not in self._validators:
            schema = {"$ref": f"{SPEC_URI}{SCHEMAS}{component}"}
            self._validators[component] = self._validator_class(schema, registry=self._registry)
        return self._validators[component]

    def _events_by_type(self, component: str) -> dict[str, str] | None:
        """For a union of events (every member fixes its `type`), its members by type; else None."""
        if component not in self._unions:
            self._unions[component] = self._union_of_events(component)
        return self._unions[component]

    def _union_of_events(self, component: str) -> dict[str, str] | None:
        options = self._schemas[component].get("anyOf") or self._schemas[component].get("oneOf")
        if not options or not all("$ref" in option for option in options):
            return None
        members = {}
        for option in options:
            name = option["$ref"].removeprefix(SCHEMAS)
            fixed = self._schemas[name].get("properties", {}).get("type", {})
            kinds = fixed.get("enum") or ([fixed["const"]] if "const" in fixed else [])
            if len(kinds) != 1:
                return None
            members[kinds[0]] = name
        return members


def _leaf_errors(error: ValidationError) -> list[ValidationError]:
    """Inside an anyOf/oneOf, the errors of the one option the value is meant to be (the only one whose kind, its
    JSON type or its `type`/`object` tag, fits), so a report names the field at fault, not the whole union."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [error]
    options: dict[Any, list[ValidationError]] = defaultdict(list)
    for sub in error.context:
        options[sub.relative_schema_path[0]].append(sub)
    meant = [subs for subs in options.values() if not any(_wrong_kind(sub) for sub in subs)]
    if len(meant) != 1:
        return [error]
    return [leaf for sub in meant[0] for leaf in _leaf_errors(sub)]


def _wrong_kind(error: ValidationError) -> bool:
    where = list(error.relative_path)
    if not where:
        return error.validator in ("type", "enum", "const")
    return where in (["type"], ["object"]) and error.validator in ("enum", "const")


def _describe(error: ValidationError) -> str:
    if error.validator in ("anyOf", "oneOf"):
        count = len(error.validator_value)
        return f"{_short(error.instance)} matches none of the {count} shapes the spec allows here"
    return error.message if len(error.message) <= 300 else error.message[:300] + "..."


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:120] + "..."


@functools.cache
def contract() -> Contract:
    return Contract(json.loads(SPEC_FILE.read_text(encoding="utf-8")))


def component_for(path: str, status: int, *, stream: bool, method: str = "GET") -> str | None:
    if status >= 400:
        return ERROR_BODY
    if path.startswith(MODEL_PATH_PREFIX):
        return None if stream else MODEL_BODY
    for collection, (listed, one) in COLLECTIONS.items():
        if path == collection:
            return one if method == "POST" else listed
        if path.startswith(collection + "/"):
            return DELETED_FILE if method == "DELETE" else one
    json_body, event = ENDPOINTS.get(path, (None, None))
    return event if stream else json_body


def check_body(path: str, body: Any, *, status: int = 200, method: str = "GET") -> list[str]:
    component = component_for(path, status, stream=False, method=method)
    if component is None:
        return [f"{path}: status {status}: no OpenAI schema is known for this path"]
    return [f"{path} {problem}" for problem in contract().violations(component, body)]


def sse_events(text: str) -> list[str]:
    """The data of each event of an SSE stream (its `data:` lines joined), in order."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events


def check_sse(path: str, text: str) -> list[str]:
    """Each event against the path's stream schema; an `{"error": ...}` event (a chat or legacy stream that fails
    midway) against the error body. `[DONE]` ends a stream and is not JSON."""
    component = component_for(path, 200, stream=True)
    if component is None:
        return [f"{path}: no OpenAI schema is known for a stream from this path"]
    # Each problem once, at the first event that has it, with how many more events repeat it.
    events_with: dict[str, list[int]] = defaultdict(list)
    for index, data in enumerate(sse_events(text)):
        if data == "[DONE]":
            continue
        try:
            event = json.loads(data)
        except ValueError:
            events_with[f"not JSON: {data[:120]!r}"].append(index)
            continue
        schema = ERROR_BODY if isinstance(event, dict) and set(event) == {"error"} else component
        kind = event.get("type", "") if isinstance(event, dict) else ""
        for problem in contract().violations(schema, event):
            events_with[f"({kind}) {problem}" if kind else problem].append(index)
    return [
        f"{path} event {indices[0]}{f' (and {len(indices) - 1} more)' if len(indices) > 1 else ''}: {problem}"
        for problem, indices in events_with.items()
    ]


class CheckedStreamMixin:
    """Wraps a response's byte stream: passes the bytes through untouched, and checks the whole body against the
    spec when the stream closes, adding any violation to `violations`."""

    def __init__(
        self, inner: Any, path: str, status: int, content_type: str, violations: list[str], method: str = "GET"
    ) -> None:
        self._inner = inner
        self._path = path
        self._method = method
        self._status = status
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
            self._violations += check_body(self._path, json.loads(text), status=self._status, method=self._method)


def _checked_stream_class(stream_type: type) -> type:
    # httpx and the httpx fork Starlette's test client uses each insist on their own SyncByteStream type.
    base = next(c for c in stream_type.__mro__ if c.__name__ == "SyncByteStream")
    return type("CheckedStream", (CheckedStreamMixin, base), {})


def check_responses_of(transport_class: type, monkeypatch: Any, violations: list[str]) -> None:
    """Route every /v1 response that `transport_class` returns (but Anthropic's routes) through the check against
    OpenAI's spec."""
    original = transport_class.handle_request

    def handle_request(self: Any, request: Any) -> Any:
        response = original(self, request)
        if request.url.path.startswith("/v1/") and request.url.path not in OTHER_PROTOCOL_PATHS:
            content_type = response.headers.get("content-type", "")
            response.stream = _checked_stream_class(type(response.stream))(
                response.stream, request.url.path, response.status_code, content_type, violations, request.method
            )
        return response

    monkeypatch.setattr(transport_class, "handle_request", handle_request)
