"""The OpenAI Agents SDK against the embedded model: an agent with a function tool on both of the SDK's OpenAI
models (Responses and Chat Completions), run to its end and streamed, with tracing off (it would reach the
network) and the SDK's default temperature, under three seeds."""

from __future__ import annotations

import asyncio

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from tests.real.clients import SEEDS, SMOL

QUESTION = "What is the weather in Paris? Use the tool."


@pytest.fixture(scope="module", autouse=True)
def no_tracing():
    set_tracing_disabled(True)
    yield
    set_tracing_disabled(False)


def agent_on(kind: str, server_url: str, seed: int, calls: list[str]) -> Agent:
    client = openai.AsyncOpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    model = (OpenAIResponsesModel if kind == "responses" else OpenAIChatCompletionsModel)(
        model=SMOL, openai_client=client
    )

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    # "required" allows several calls in one reply (a small model repeats the call); one is what this agent wants.
    settings = ModelSettings(
        tool_choice="required", parallel_tool_calls=False, max_tokens=120, extra_body={"seed": seed}
    )
    return Agent(
        name="weather",
        instructions="You answer questions about the weather.",
        model=model,
        model_settings=settings,
        tools=[get_weather],
        # The tool's answer is the agent's: a 135M model's free-text turn after it at temperature 1 may run to
        # the token limit, which the SDK's Responses model raises as an error.
        tool_use_behavior="stop_on_first_tool",
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["responses", "chat_completions"])
def test_run_calls_the_tool_and_answers(server, kind, seed):
    calls: list[str] = []
    result = asyncio.run(Runner.run(agent_on(kind, server.url, seed, calls), QUESTION))
    assert len(calls) == 1 and result.final_output == f"It is sunny in {calls[0]}."
    assert [item.type for item in result.new_items] == ["tool_call_item", "tool_call_output_item"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["responses", "chat_completions"])
def test_run_streamed_calls_the_tool_and_streams_events(server, kind, seed):
    calls: list[str] = []
    agent = agent_on(kind, server.url, seed, calls)

    async def run() -> tuple[list[str], object]:
        result = Runner.run_streamed(agent, QUESTION)
        kinds = [event.type async for event in result.stream_events()]
        return kinds, result.final_output

    kinds, final_output = asyncio.run(run())
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert len(calls) == 1 and final_output == f"It is sunny in {calls[0]}."
