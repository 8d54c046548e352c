"""LiteLLM's `openai/` provider pointed at the server with `api_base`, as its users configure a self-hosted
OpenAI-compatible endpoint: completion, streaming, async, tools and embeddings, at its default temperature under
three seeds."""

from __future__ import annotations

import asyncio
import importlib
import json

import pytest

from tests.real.clients import SEEDS, SMOL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
        },
    },
}
HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


@pytest.fixture(scope="module")
def litellm():
    with pytest.MonkeyPatch.context() as patch:
        # Read when LiteLLM is imported: otherwise it fetches its model cost map from the network.
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        module = importlib.import_module("litellm")
    module.telemetry = False
    return module


@pytest.fixture(scope="module")
def endpoint(server):
    return {"api_base": server.url + "/v1", "api_key": "unused"}


@pytest.mark.parametrize("seed", SEEDS)
def test_completion(litellm, endpoint, seed):
    response = litellm.completion(model=f"openai/{SMOL}", messages=HELLO, max_tokens=40, seed=seed, **endpoint)
    assert response.choices[0].message.content
    assert response.usage.completion_tokens > 0 and response.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("seed", SEEDS)
def test_streaming_gives_the_same_text_as_the_whole(litellm, endpoint, seed):
    whole = litellm.completion(model=f"openai/{SMOL}", messages=HELLO, max_tokens=40, seed=seed, **endpoint)
    chunks = list(
        litellm.completion(model=f"openai/{SMOL}", messages=HELLO, max_tokens=40, seed=seed, stream=True, **endpoint)
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert len(chunks) > 2 and streamed == whole.choices[0].message.content


@pytest.mark.parametrize("seed", SEEDS)
def test_acompletion(litellm, endpoint, seed):
    async def two_at_once():
        return await asyncio.gather(
            *(
                litellm.acompletion(model=f"openai/{SMOL}", messages=HELLO, max_tokens=40, seed=seed, **endpoint)
                for _ in range(2)
            )
        )

    first, second = asyncio.run(two_at_once())
    assert first.choices[0].message.content == second.choices[0].message.content  # same seed, same answer


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tools(litellm, endpoint, seed, tool_choice):
    response = litellm.completion(
        model=f"openai/{SMOL}",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice=tool_choice,
        max_tokens=200,
        seed=seed,
        **endpoint,
    )
    calls = response.choices[0].message.tool_calls
    assert response.choices[0].finish_reason == "tool_calls"
    if isinstance(tool_choice, dict):
        assert len(calls) == 1  # a named function is called exactly once
    for call in calls:
        assert call.function.name == "get_weather" and call.id
        assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_embedding(litellm, endpoint):
    response = litellm.embedding(model="openai/tiny-bert", input=["hello", "world"], **endpoint)
    vectors = [item["embedding"] for item in response.data]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0 and vectors[0] != vectors[1]
    assert response.usage.prompt_tokens > 0
