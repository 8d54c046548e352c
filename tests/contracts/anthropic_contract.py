"""Anthropic bodies checked against the official `anthropic` SDK's own pydantic types: a `Message`, each stream
event (`RawMessageStreamEvent`, and the `ping` and `error` events the SDK reads apart), error bodies
(`ErrorResponse`) and token counts (`MessageTokensCount`).

The SDK's models accept fields they do not declare, so a misspelt field would pass them: here any field that no
type declares is a violation too. A stream is also checked for its order (message_start, blocks opened, filled
and closed by increasing index, message_delta, message_stop; or an error event, which ends it) and folded into
its final Message with the SDK's own accumulator, which must be a valid Message.

`check_*` return lists of problems; `assert_*` raise with them. `check_response` checks any response of the
Anthropic routes, by path, status and content type.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import BaseModel, TypeAdapter, ValidationError

ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
# Anthropic's documented error types by status. 413's `request_too_large` is documented but not in the SDK's types.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_EVENT = TypeAdapter(RawMessageStreamEvent)
Event = tuple[str, dict[str, Any]]


def _undeclared(obj: Any, where: str) -> list[str]:
    """Fields that no SDK type declares, anywhere in a validated object."""
    if isinstance(obj, BaseModel):
        found = [f"{where}.{name}: a field no SDK type declares" for name in obj.model_extra or {}]
        for name in type(obj).model_fields:
            found += _undeclared(getattr(obj, name), f"{where}.{name}")
        return found
    if isinstance(obj, list):
        return [problem for i, item in enumerate(obj) for problem in _undeclared(item, f"{where}[{i}]")]
    return []


def _validate(adapter: Any, data: Any, where: str) -> tuple[Any, list[str]]:
    try:
        obj = adapter.validate_python(data) if isinstance(adapter, TypeAdapter) else adapter.model_validate(data)
    except ValidationError as exc:
        return None, [f"{where}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return obj, _undeclared(obj, where)


def check_message(body: Any, where: str = "$") -> list[str]:
    """A Message as a non-streamed answer has it: stop_reason set, Anthropic's id prefixes."""
    message, problems = _validate(Message, body, where)
    if message is None:
        return problems
    if message.stop_reason is None:
        problems.append(f"{where}.stop_reason: null in a finished message")
    if not message.id.startswith("msg_"):
        problems.append(f"{where}.id: {message.id!r} does not start with msg_")
    for i, block in enumerate(message.content):
        if block.type == "tool_use" and not block.id.startswith("toolu_"):
            problems.append(f"{where}.content[{i}].id: {block.id!r} does not start with toolu_")
    return problems


def check_token_count(body: Any) -> list[str]:
    return _validate(MessageTokensCount, body, "$")[1]


def check_error(body: Any, status: int, where: str = "$") -> list[str]:
    """An error body: the SDK's ErrorResponse, with the documented type for its status."""
    expected = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    if expected == "request_too_large":  # documented, but no SDK type: the envelope by hand
        ok = (
            isinstance(body, dict)
            and set(body) <= {"type", "error", "request_id"}
            and body.get("type") == "error"
            and body.get("error", {}).keys() == {"type", "message"}
            and isinstance(body["error"]["message"], str)
        )
        problems = [] if ok else [f"{where}: not an error envelope: {body!r:.200}"]
    else:
        problems = _validate(ErrorResponse, body, where)[1]
    if not problems and body["error"]["type"] != expected:
        problems.append(f"{where}.error.type: {body['error']['type']!r} for status {status}, expected {expected!r}")
    return problems


def parse_sse(text: str) -> list[Event]:
    """(event name, data) pairs of a text/event-stream body; each event must have one `event:` and one `data:`."""
    events = []
    for raw in text.split("\n\n"):
        if not raw.strip():
            continue
        fields = dict(line.split(": ", 1) for line in raw.split("\n"))
        assert set(fields) == {"event", "data"}, f"an SSE event without its event or data line: {raw!r:.200}"
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def check_stream(events: Iterable[Event]) -> list[str]:
    """Every event's type, the order of the whole stream, and the Message it folds into."""
    problems: list[str] = []
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    state = _Order()
    for i, (name, data) in enumerate(events):
        where = f"event {i} ({name})"
        if state.phase == "ended":
            problems.append(f"{where}: after the stream ended")
        elif not isinstance(data, dict) or data.get("type") != name:
            problems.append(f"{where}: the data's type is not the event's name")
        elif name == "error":
            problems += _validate(ErrorResponse, data, where)[1]
            state.phase = "ended"
        elif name == "ping":
            if data != {"type": "ping"} or state.phase == "start":
                problems.append(f"{where}: a ping must be exactly {{'type': 'ping'}}, after message_start")
        else:
            event, found = _validate(_EVENT, data, where)
            problems += found + state.follow(name, data, where)
            if event is not None:
                try:
                    snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
                except Exception as exc:  # the SDK's own accumulator cannot follow the stream
                    problems.append(f"{where}: the SDK cannot accumulate it: {exc}")
    if state.phase != "ended":
        problems.append("the stream ended without message_stop or an error event")
    if state.stopped and snapshot is not None and not problems:
        problems += check_message(snapshot.to_dict(), "final message")
    return problems


class _Order:
    """message_start, then blocks opened, filled and closed by increasing index, message_delta, message_stop."""

    def __init__(self) -> None:
        self.phase = "start"  # start -> blocks -> delta -> ended
        self.open_block: int | None = None
        self.next_block = 0
        self.stopped = False

    def follow(self, name: str, data: dict[str, Any], where: str) -> list[str]:
        if self.phase == "start":
            allowed = {"message_start"}
        elif self.phase == "delta":
            allowed = {"message_stop"}
        elif self.open_block is None:
            allowed = {"content_block_start", "message_delta"}
        else:
            allowed = {"content_block_delta", "content_block_stop"}
        if name not in allowed:
            return [f"{where}: expected one of {sorted(allowed)}"]
        index = data.get("index")
        if name == "message_start":
            self.phase = "blocks"
            message = data["message"]
            if message["content"] or message["stop_reason"] is not None:
                return [f"{where}: message_start carries content or a stop reason"]
        elif name == "content_block_start":
            if index != self.next_block:
                return [f"{where}: block index {index}, expected {self.next_block}"]
            self.open_block, self.next_block = index, index + 1
        elif index is not None and index != self.open_block:
            return [f"{where}: block index {index}, but block {self.open_block} is open"]
        elif name == "content_block_stop":
            self.open_block = None
        elif name == "message_delta":
            self.phase = "delta"
            if data["delta"]["stop_reason"] is None:
                return [f"{where}: message_delta without a stop reason"]
        elif name == "message_stop":
            self.phase, self.stopped = "ended", True
        return []


def final_message(events: list[Event]) -> dict[str, Any]:
    """The Message a stream folds into, as the SDK accumulates it (`stream.get_final_message()`)."""
    snapshot: Any = None
    json_bufs: dict[int, bytes] = {}
    for name, data in events:
        if name not in ("ping", "error"):
            snapshot = accumulate_event(
                event=_EVENT.validate_python(data), current_snapshot=snapshot, json_bufs=json_bufs
            )
    return snapshot.to_dict()


def assert_message(body: Any) -> None:
    problems = check_message(body)
    assert not problems, "a Message that breaks the anthropic SDK's types:\n" + "\n".join(problems)


def assert_stream(events: list[Event]) -> None:
    problems = check_stream(events)
    assert not problems, "a stream that breaks the anthropic SDK's types:\n" + "\n".join(problems)


def assert_error(body: Any, status: int) -> None:
    problems = check_error(body, status)
    assert not problems, "an error body that breaks Anthropic's shape:\n" + "\n".join(problems)


def check_response(path: str, status: int, content_type: str, text: str) -> list[str]:
    """Any response of the Anthropic routes, by path, status and content type."""
    if content_type.startswith("text/event-stream"):
        return [f"{path}: {problem}" for problem in check_stream(parse_sse(text))]
    try:
        body = json.loads(text)
    except ValueError:
        return [f"{path}: status {status}: not JSON: {text[:120]!r}"]
    if status >= 400:
        return [f"{path}: {problem}" for problem in check_error(body, status)]
    check = check_token_count if path.endswith("/count_tokens") else check_message
    return [f"{path}: {problem}" for problem in check(body)]
