"""LangChain's ChatOpenAI and OpenAIEmbeddings pointed at the server: invoke, stream, bind_tools and
with_structured_output work as against OpenAI, at LangChain's default temperature under three seeds."""

from __future__ import annotations

import langchain_openai
import pytest
from pydantic import BaseModel, Field

from tests.real.clients import SEEDS, SMOL


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(description="the city", max_length=30)
    unit: str = Field(description="celsius or fahrenheit", pattern="^(celsius|fahrenheit)$")


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: int


def chat_model(server, seed: int) -> langchain_openai.ChatOpenAI:
    return langchain_openai.ChatOpenAI(
        base_url=server.url + "/v1", api_key="unused", model=SMOL, max_retries=0, max_tokens=200, seed=seed
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_invoke_and_stream_give_the_same_answer(server, seed):
    chat = chat_model(server, seed)
    whole = chat.invoke("Say hello in one short sentence.")
    chunks = list(chat.stream("Say hello in one short sentence."))
    assert len(chunks) > 2 and "".join(chunk.content for chunk in chunks) == whole.content != ""


@pytest.mark.parametrize("seed", SEEDS)
def test_bind_tools_with_a_forced_tool_gives_one_valid_call(server, seed):
    message = (
        chat_model(server, seed)
        .bind_tools([GetWeather], tool_choice="GetWeather")
        .invoke("What is the weather in Paris?")
    )
    [call] = message.tool_calls  # a named function is called exactly once
    assert call["name"] == "GetWeather" and call["id"]
    GetWeather.model_validate(call["args"])  # the arguments validate against the tool's schema


@pytest.mark.parametrize("seed", SEEDS)
def test_bind_tools_auto_answers_in_text_or_with_a_valid_call(server, seed):
    message = chat_model(server, seed).bind_tools([GetWeather]).invoke("What is the weather in Paris?")
    for call in message.tool_calls:
        assert call["name"] == "GetWeather"
        GetWeather.model_validate(call["args"])
    assert message.tool_calls or message.content


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_returns_the_pydantic_object(server, method, seed):
    # Both methods send the schema (response_format json_schema, or a forced tool), so the grammar enforces it.
    # (method="json_mode" sends no schema: the output is a JSON object, its fields are up to the prompt.)
    structured = chat_model(server, seed).with_structured_output(City, method=method)
    city = structured.invoke("Describe Paris as JSON with name, country and population_millions.")
    assert isinstance(city, City) and city.name


def test_embeddings(server):
    embeddings = langchain_openai.OpenAIEmbeddings(
        base_url=server.url + "/v1", api_key="unused", model="tiny-bert", check_embedding_ctx_length=False
    )
    documents = embeddings.embed_documents(["hello", "world"])
    assert len(documents) == 2 and len(documents[0]) > 0 and documents[0] != documents[1]
    assert embeddings.embed_query("hello") == pytest.approx(documents[0], abs=1e-5)
