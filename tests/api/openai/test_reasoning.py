"""A reasoning model through the OpenAI routes, with the fake engine: `reasoning_content` on chat messages and
deltas, `reasoning` items and `response.reasoning_text.*` events in the Responses API, reasoning tokens in the
usage, and `reasoning_effort` / `reasoning.effort` mapped onto the template's switch and the thinking budget. Every
body is checked against OpenAI's spec (conftest), with `reasoning_content` the one declared extension."""

from __future__ import annotations

import json

import pytest

from server.engine.base import ReasoningFormat
from tests.api.openai.test_routes import assert_openai_error, sse_events
from tests.contracts.openai_contract import sse_events as contract_sse_events
from tests.fakes import FakeScript

CHAT, RESPONSES = "/v1/chat/completions", "/v1/responses"
HELLO = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
QWEN3 = ReasoningFormat("<think>", "</think>", 64, "enable_thinking")
R1 = ReasoningFormat("<think>", "</think>", 64, None)
THOUGHT = ("<think>", "\nLet me ", "think.\n</", "think>", "\n\nHello", "!")


@pytest.fixture
def qwen3(loader):
    loader.scripts["fake-model"] = FakeScript(pieces=THOUGHT, n_ctx=4096, reasoning=QWEN3)


@pytest.fixture
def r1(loader):
    loader.scripts["fake-model"] = FakeScript(
        pieces=("Let me think.", "</think>", "Hello!"), n_ctx=4096, reasoning=R1, opens_thinking=True
    )


def test_chat_message_has_the_thinking_in_reasoning_content(client, qwen3):
    body = client.post(CHAT, json=HELLO).json()
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hello!", "refusal": None, "reasoning_content": "Let me think."}
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}


def test_chat_stream_sends_reasoning_content_deltas_first(client, qwen3):
    payload = {**HELLO, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse_events(client.post(CHAT, json=payload))
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    thinking = [d["reasoning_content"] for d in deltas if "reasoning_content" in d]
    content = [d["content"] for d in deltas if d.get("content")]
    assert "".join(thinking) == "Let me think." and "".join(content) == "Hello!"
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first_content:])
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}


def test_a_model_that_opens_the_block_in_its_prompt(client, r1):
    message = client.post(CHAT, json=HELLO).json()["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("Let me think.", "Hello!")


def test_reasoning_effort_maps_to_the_switch_and_the_budget(client, loader, qwen3):
    assert client.post(CHAT, json={**HELLO, "reasoning_effort": "low"}).status_code == 200
    engine = loader.engines["fake-model"]
    assert engine.template_vars[-1] == {"enable_thinking": True}
    assert engine.requests[-1].thinking.tokens == 32  # half the model's budget
    off = client.post(CHAT, json={**HELLO, "reasoning_effort": "none"}).json()
    assert engine.template_vars[-1] == {"enable_thinking": False}
    assert "reasoning_content" not in off["choices"][0]["message"]
    assert "completion_tokens_details" not in off["usage"]  # nothing thought, nothing counted


def test_none_on_a_model_that_always_thinks_is_a_400(client, r1):
    error = assert_openai_error(client.post(CHAT, json={**HELLO, "reasoning_effort": "none"}), 400)
    assert error["param"] == "reasoning_effort" and "always thinks" in error["message"]


def test_a_model_that_does_not_reason_refuses_an_effort(client):
    error = assert_openai_error(client.post(CHAT, json={**HELLO, "reasoning_effort": "high"}), 400)
    assert (error["param"], error["code"]) == ("reasoning_effort", "unsupported_parameter")
    assert client.post(CHAT, json={**HELLO, "reasoning_effort": "none"}).status_code == 200


def test_json_output_holds_with_thinking_on(client, loader):
    loader.scripts["fake-model"] = FakeScript(pieces=("<think>", "hm", "</think>", '{"ok": true}'), reasoning=QWEN3)
    payload = {**HELLO, "response_format": {"type": "json_object"}, "reasoning_effort": "medium"}
    message = client.post(CHAT, json=payload).json()["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("hm", '{"ok": true}')
    assert 'root ::= "<think>"' in loader.engines["fake-model"].requests[-1].grammar


RESPONSES_HELLO = {"model": "fake-model", "input": "Hi"}


def test_responses_output_a_reasoning_item_before_the_message(client, qwen3):
    body = client.post(RESPONSES, json={**RESPONSES_HELLO, "reasoning": {"effort": "high"}}).json()
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["summary"] == [] and reasoning["content"] == [{"type": "reasoning_text", "text": "Let me think."}]
    assert message["content"][0]["text"] == "Hello!"
    assert body["usage"]["output_tokens_details"] == {"reasoning_tokens": 4}
    assert body["reasoning"] == {"effort": "high"}


def test_responses_stream_reasoning_text_events(client, qwen3):
    events = sse_events_of(client.post(RESPONSES, json={**RESPONSES_HELLO, "stream": True}))
    kinds = [event["type"] for event in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
    ]
    done = kinds.index("response.reasoning_text.done")
    assert kinds[done : done + 4] == [
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
    ]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert deltas == events[done]["text"] == "Let me think."
    assert events[done + 3]["output_index"] == 1 and events[done + 3]["item"]["type"] == "message"
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 4}


def test_responses_accept_reasoning_items_sent_back_and_name_their_effort(client, loader, r1):
    earlier = {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "x"}]}
    payload = {"model": "fake-model", "input": [{"role": "user", "content": "Hi"}, earlier]}
    assert client.post(RESPONSES, json=payload).status_code == 200
    assert loader.engines["fake-model"].rendered[-1] == [{"role": "user", "content": "Hi"}]
    error = assert_openai_error(client.post(RESPONSES, json={**payload, "reasoning": {"effort": "none"}}), 400)
    assert error["param"] == "reasoning.effort" and "'reasoning.effort'" in error["message"]


def sse_events_of(response) -> list:
    """A Responses stream's events (`event:` and `data:` lines each)."""
    return [json.loads(data) for data in contract_sse_events(response.text)]
