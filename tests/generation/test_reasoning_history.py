"""An earlier turn's thinking sent back (chat `reasoning_content`, Responses `reasoning` items, Anthropic
`thinking` blocks) reaches the chat template as that turn's `reasoning_content`: Qwen3's template shows it for the
turns after the last user message (an agent's tool-calling steps), other templates leave it out."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.api.anthropic import adapter as anthropic_adapter
from server.api.anthropic.schemas import MessagesRequest
from server.api.openai import responses as responses_api
from server.api.openai.plans import chat_plan
from server.api.openai.responses import ResponsesRequest
from server.api.openai.schemas import ChatCompletionRequest
from server.engine.template import ChatTemplate
from server.errors import InvalidRequestError, from_validation_errors
from server.generation.limits import RequestLimits, check_plan
from server.generation.prompt import conversation
from tests.seed_models import QWEN3_TEMPLATE

CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL], "reasoning_content": "I should call weather."},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


def rendered(turns) -> str:
    messages, _ = conversation(turns, None)
    return ChatTemplate(QWEN3_TEMPLATE).render(messages)


def test_chat_reasoning_content_reaches_qwen3s_template_for_an_agents_step():
    plan = chat_plan(ChatCompletionRequest.model_validate({"model": "m", "messages": CHAT}))
    assert plan.turns[1].reasoning == "I should call weather."
    prompt = rendered(plan.turns)
    assert "<think>\nI should call weather.\n</think>" in prompt
    without = [dict(m) for m in CHAT]
    del without[1]["reasoning_content"]
    plain = chat_plan(ChatCompletionRequest.model_validate({"model": "m", "messages": without}))
    assert "I should call weather." not in rendered(plain.turns)


def test_chat_reasoning_content_sent_wrong_is_a_400_naming_it():
    messages = [*CHAT[:1], {**CHAT[1], "reasoning_content": 7}]
    with pytest.raises(ValidationError) as invalid:
        ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    assert from_validation_errors(invalid.value.errors()).param == "messages[1].reasoning_content"


def test_a_responses_reasoning_item_goes_with_the_assistant_item_after_it():
    body = ResponsesRequest.model_validate(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "type": "reasoning",
                    "id": "rs_1",
                    "summary": [],
                    "content": [{"type": "reasoning_text", "text": "Call it."}],
                },
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ],
        }
    )
    turns = responses_api.to_plan(body).turns
    assert [(t.role, t.reasoning) for t in turns] == [("user", ""), ("assistant", "Call it."), ("tool", "")]


def test_an_anthropic_thinking_block_is_the_turns_reasoning():
    body = MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 10,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Call it.", "signature": "s"},
                        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
                    ],
                },
            ],
        }
    )
    assert anthropic_adapter.to_plan(body).turns[-1].reasoning == "Call it."


def test_reasoning_content_counts_toward_the_prompt_bound():
    plan = chat_plan(ChatCompletionRequest.model_validate({"model": "m", "messages": CHAT}))
    check_plan(plan, RequestLimits(max_prompt_chars=80))  # with its short thinking, within the bound
    long = [*CHAT[:1], {**CHAT[1], "reasoning_content": "x" * 100}, CHAT[2]]
    with pytest.raises(InvalidRequestError) as refused:
        check_plan(
            chat_plan(ChatCompletionRequest.model_validate({"model": "m", "messages": long})),
            RequestLimits(max_prompt_chars=80),
        )
    assert refused.value.param == "messages"
