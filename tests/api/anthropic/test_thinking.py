"""A reasoning model through Anthropic's Messages API, with the fake engine: `thinking` blocks and `thinking_delta`
events (checked against the anthropic SDK's types), and the request's `thinking` mapped onto the template's switch
and the thinking budget."""

from __future__ import annotations

import pytest

from server.engine.base import ReasoningFormat
from tests.contracts.anthropic_contract import assert_error, assert_message, assert_stream, final_message, parse_sse
from tests.fakes import FakeScript

MESSAGES = "/v1/messages"
HELLO = {"model": "fake-model", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
QWEN3 = ReasoningFormat("<think>", "</think>", 64, "enable_thinking")
R1 = ReasoningFormat("<think>", "</think>", 64, None)
THOUGHT = ("<think>", "\nLet me ", "think.\n</", "think>", "\n\nHello", "!")


@pytest.fixture
def qwen3(loader):
    loader.scripts["fake-model"] = FakeScript(pieces=THOUGHT, n_ctx=4096, reasoning=QWEN3)


def test_the_message_has_a_thinking_block_first(client, qwen3):
    body = client.post(MESSAGES, json=HELLO).json()
    assert_message(body)
    assert body["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": ""},
        {"type": "text", "text": "Hello!"},
    ]


def test_the_stream_has_a_thinking_block_then_the_text(client, qwen3):
    events = parse_sse(client.post(MESSAGES, json={**HELLO, "stream": True}).text)
    assert_stream(events)
    deltas = [data["delta"]["type"] for name, data in events if name == "content_block_delta"]
    assert deltas[0] == "thinking_delta" and deltas[-1] == "text_delta"
    assert final_message(events)["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": ""},
        {"type": "text", "text": "Hello!"},
    ]


def test_omitted_thinking_leaves_the_blocks_empty(client, qwen3):
    thinking = {"type": "enabled", "budget_tokens": 32, "display": "omitted"}
    body = client.post(MESSAGES, json={**HELLO, "thinking": thinking}).json()
    assert body["content"][0] == {"type": "thinking", "thinking": "", "signature": ""}
    events = parse_sse(client.post(MESSAGES, json={**HELLO, "thinking": thinking, "stream": True}).text)
    assert_stream(events)
    assert final_message(events)["content"][0]["thinking"] == ""


def test_thinking_maps_to_the_switch_and_the_budget(client, loader, qwen3):
    enabled = {**HELLO, "thinking": {"type": "enabled", "budget_tokens": 20}}
    assert client.post(MESSAGES, json=enabled).status_code == 200
    engine = loader.engines["fake-model"]
    assert engine.template_vars[-1] == {"enable_thinking": True} and engine.requests[-1].thinking.tokens == 20
    assert client.post(MESSAGES, json={**HELLO, "thinking": {"type": "adaptive"}}).status_code == 200
    assert engine.requests[-1].thinking.tokens == 64
    body = client.post(MESSAGES, json={**HELLO, "thinking": {"type": "disabled"}}).json()
    assert engine.template_vars[-1] == {"enable_thinking": False}
    assert [block["type"] for block in body["content"]] == ["text"]


def test_earlier_thinking_blocks_go_to_the_template_as_reasoning_content(client, loader, qwen3):
    history = [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "abc"},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "text", "text": "Hello!"},
            ],
        },
        {"role": "user", "content": "Again"},
    ]
    assert client.post(MESSAGES, json={**HELLO, "messages": history}).status_code == 200
    assert loader.engines["fake-model"].rendered[-1][1] == {
        "role": "assistant",
        "content": "Hello!",
        "reasoning_content": "hm",  # the redacted block is left out
    }


@pytest.mark.parametrize(
    ("thinking", "where"),
    [
        ({"type": "enabled"}, "thinking.budget_tokens"),
        ({"type": "enabled", "budget_tokens": "many"}, "thinking.budget_tokens"),
        ({"type": "enabled", "budget_tokens": 0}, "thinking.budget_tokens"),
        ({"type": "enabled", "budget_tokens": 64}, "thinking.budget_tokens"),  # not below max_tokens
        ({"type": "enabled", "budget_tokens": 8, "display": "full"}, "thinking.display"),
        ({"type": "sometimes"}, "thinking.type"),
        ("on", "thinking"),
    ],
)
def test_a_wrong_thinking_is_a_400_naming_it(client, qwen3, thinking, where):
    response = client.post(MESSAGES, json={**HELLO, "thinking": thinking})
    assert response.status_code == 400
    assert_error(response.json(), 400)
    assert response.json()["error"]["message"].startswith(where) or f"'{where}'" in response.json()["error"]["message"]


def test_disabled_on_a_model_that_always_thinks_is_a_400(client, loader):
    loader.scripts["fake-model"] = FakeScript(reasoning=R1, opens_thinking=True)
    response = client.post(MESSAGES, json={**HELLO, "thinking": {"type": "disabled"}})
    assert response.status_code == 400
    assert "always thinks" in response.json()["error"]["message"]
