"""The OpenAI adapter without HTTP: requests to plans, reply events to chunks and completions."""

from __future__ import annotations

import asyncio
import threading

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk as SDKChunk

from server.api.openai.assembly import ChatStreamState, ResponseMeta, chat_completion
from server.api.openai.plans import chat_plan, completion_plan, off_loop
from server.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from server.errors import InvalidRequestError, UnsupportedParameterError
from server.generation.reply import (
    ChoiceEnd,
    FinishedChoice,
    ReasoningPiece,
    TextPiece,
    ToolCall,
    ToolCallArguments,
    ToolCallStart,
    call_events,
    finished,
)

CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **fields}
    )


def test_a_chat_request_maps_every_field_onto_the_plan():
    body = chat(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": "f"}},
        parallel_tool_calls=False,
        max_completion_tokens=9,
        stop="END",
        n=2,
        logprobs=True,
        top_logprobs=3,
        logit_bias={"7": -5},
        seed=1,
        response_format={"type": "json_object"},
    )
    plan = chat_plan(body)
    assert [t.role for t in plan.turns] == ["system", "user", "assistant", "tool"]
    assert plan.turns[1].content == "ab"
    assert plan.turns[2].tool_calls[0].arguments == '{"a": 1}' and plan.turns[3].tool_call_id == "c1"
    assert plan.tools.choice == "f" and plan.tools.parallel is False
    assert plan.tools.functions[0].where == "tools[0].function.parameters"
    assert (plan.max_tokens, plan.params.max_tokens, plan.stop, plan.n, plan.logprobs) == (
        9,
        "max_completion_tokens",
        ("END",),
        2,
        3,
    )
    assert plan.sampling.logit_bias == ((7, -5.0),) and plan.sampling.seed == 1 and plan.json_schema == "{}"


@pytest.mark.parametrize(
    ("fields", "error", "param"),
    [
        ({"functions": [{"name": "f"}]}, UnsupportedParameterError, "functions"),
        ({"top_logprobs": 2}, InvalidRequestError, "top_logprobs"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, UnsupportedParameterError, "tools[0].type"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            InvalidRequestError,
            "tool_choice.function.name",
        ),
    ],
)
def test_what_a_chat_request_cannot_have_is_refused_by_name(fields, error, param):
    with pytest.raises(error) as caught:
        chat_plan(chat(**fields))
    assert caught.value.param == param


def test_legacy_completion_refusals_and_mapping():
    plan = completion_plan(CompletionRequest.model_validate({"model": "m", "prompt": "Once", "logprobs": 2}))
    assert (plan.prompt, plan.turns, plan.max_tokens, plan.logprobs, plan.params.prompt) == (
        "Once",
        (),
        16,
        2,
        "prompt",
    )
    for field, value in (("echo", True), ("best_of", 3), ("suffix", "x")):
        with pytest.raises(UnsupportedParameterError):
            completion_plan(CompletionRequest.model_validate({"model": "m", "prompt": "x", field: value}))


def test_chat_chunks_from_reply_events():
    state = ChatStreamState(ResponseMeta("m", 5, "chatcmpl"), include_usage=True, n=1)
    chunks = [
        chunk
        for event in (TextPiece(0, "Hel"), TextPiece(0, "lo"), ChoiceEnd(0, "stop", 2))
        for chunk in state.push(event)
    ]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 7


def test_tool_calls_become_one_delta_and_a_message_without_content():
    call = ToolCall("call_1", "f", '{"a": 1}')
    state = ChatStreamState(ResponseMeta("m", 5, "chatcmpl"), include_usage=False)
    chunks = [c for e in (*call_events(0, call), ChoiceEnd(0, "tool_calls", 3)) for c in state.push(e)]
    assert chunks[1].choices[0].delta.tool_calls[0] == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    assert chunks[2].choices[0].delta.tool_calls[0] == {"index": 0, "function": {"arguments": '{"a": 1}'}}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    done = chat_completion(
        ResponseMeta("m", 5, "chatcmpl"), [FinishedChoice("", (call,), ChoiceEnd(0, "tool_calls", 3), ())], False
    )
    message = done.choices[0].message
    assert message.content is None and message.tool_calls[0].id == "call_1"
    assert done.choices[0].finish_reason == "tool_calls" and done.usage.completion_tokens == 3


@pytest.mark.parametrize(
    "events",
    [
        (ReasoningPiece(0, "think"), *call_events(0, ToolCall("call_1", "f", "{}")), ChoiceEnd(0, "tool_calls", 3)),
        (ReasoningPiece(0, "think"), ChoiceEnd(0, "length", 3)),  # cut off while thinking
        (ReasoningPiece(0, "think"), TextPiece(0, "Hi"), ChoiceEnd(0, "stop", 3)),
        (*call_events(0, ToolCall("call_1", "f", "{}")), ChoiceEnd(0, "tool_calls", 3)),
        (  # two calls, their arguments in pieces
            ToolCallStart(0, "call_1", "f"),
            ToolCallArguments(0, '{"a": "x'),
            ToolCallArguments(0, '\\u00e9"}'),
            ToolCallStart(0, "call_2", "g"),
            ToolCallArguments(0, "{}"),
            ChoiceEnd(0, "tool_calls", 3),
        ),
        (ChoiceEnd(0, "stop", 0),),  # an empty reply
        (ToolCallStart(0, "call_1", "f"), ToolCallArguments(0, '{"a": '), ChoiceEnd(0, "length", 3)),  # cut short
        (ReasoningPiece(0, "t"), ToolCallStart(0, "call_1", "f"), ToolCallArguments(0, "{"), ChoiceEnd(0, "length", 3)),
    ],
)
def test_the_openai_sdk_assembles_the_stream_into_the_response_not_streamed(events):
    meta = ResponseMeta("m", 5, "chatcmpl")
    state = ChatStreamState(meta, include_usage=False)
    assembled = ChatCompletionStreamState()
    for event in events:
        for chunk in state.push(event):
            assembled.handle_chunk(SDKChunk.model_validate(chunk.model_dump(mode="json")))
    streamed = assembled.current_completion_snapshot.choices[0].message
    [choice] = asyncio.run(finished(_aiter(events), 1))
    whole = chat_completion(meta, [choice], False).choices[0].message
    assert streamed.content == whole.content
    assert getattr(streamed, "reasoning_content", None) == whole.reasoning_content

    def calls(message):
        return [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()]

    assert calls(streamed) == calls(whole)


async def _aiter(items):
    for item in items:
        yield item


def _planning_thread(plan, body) -> str:
    """Where `off_loop` maps this request body to its plan with `plan`: on the event loop's thread, or another."""
    seen: list[int] = []

    def make(request):
        seen.append(threading.get_ident())
        return plan(request)

    async def go() -> int:
        await off_loop(make, body)
        return threading.get_ident()

    loop_thread = asyncio.run(go())
    return "loop" if seen == [loop_thread] else "thread"


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({}, "loop"),
        ({"tools": [TOOL]}, "thread"),
        ({"response_format": {"type": "json_object"}}, "thread"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
            "thread",
        ),
        ({"response_format": {"type": "text"}}, "loop"),
        ({"messages": [{"role": "user", "content": "hi"}] * 64}, "loop"),
        ({"messages": [{"role": "user", "content": "hi"}] * 65}, "thread"),  # mapped in proportion: off the loop
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}] * 64}]}, "thread"),
        ({"messages": [{"role": "assistant", "tool_calls": [CALL] * 64}]}, "thread"),
    ],
)
def test_a_plan_is_made_off_the_loop_only_when_its_tools_or_constraint_cost_in_proportion_to_their_size(extra, where):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    assert _planning_thread(chat_plan, ChatCompletionRequest.model_validate(body)) == where


@pytest.mark.parametrize(("extra", "where"), [({}, "loop"), ({"grammar": 'root ::= "a"'}, "thread")])
def test_a_completion_plan_is_made_off_the_loop_only_for_a_constraint(extra, where):
    body = CompletionRequest.model_validate({"model": "m", "prompt": "hi", **extra})
    assert _planning_thread(completion_plan, body) == where
