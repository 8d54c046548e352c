"""LangChain's ChatOpenAI pointed at the server: bind_tools and with_structured_output work as against OpenAI."""

from __future__ import annotations

import langchain_openai
import pytest
from pydantic import BaseModel, Field

SMOL = "smollm2-135m-instruct"


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(description="the city", max_length=30)
    unit: str = Field(description="celsius or fahrenheit", pattern="^(celsius|fahrenheit)$")


class City(BaseModel):
    name: str
    country: str
    population_millions: int


@pytest.fixture(scope="module")
def chat(server):
    return langchain_openai.ChatOpenAI(
        base_url=server.url + "/v1", api_key="unused", model=SMOL, temperature=0, max_retries=0, max_tokens=200
    )


def test_bind_tools_with_a_forced_tool_gives_a_valid_call(chat):
    message = chat.bind_tools([GetWeather], tool_choice="GetWeather").invoke("What is the weather in Paris?")
    assert len(message.tool_calls) >= 1
    call = message.tool_calls[0]
    assert call["name"] == "GetWeather" and call["id"]
    GetWeather.model_validate(call["args"])  # the arguments validate against the tool's schema


def test_bind_tools_auto_answers_in_text_or_with_a_valid_call(chat):
    message = chat.bind_tools([GetWeather]).invoke("What is the weather in Paris?")
    for call in message.tool_calls:
        assert call["name"] == "GetWeather"
        GetWeather.model_validate(call["args"])
    assert message.tool_calls or message.content


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_returns_the_pydantic_object(chat, method):
    # Both methods send the schema (response_format json_schema, or a forced tool), so the grammar enforces it.
    # (method="json_mode" sends no schema: the output is a JSON object, its fields are up to the prompt.)
    structured = chat.with_structured_output(City, method=method)
    city = structured.invoke("Describe Paris as JSON with name, country and population_millions.")
    assert isinstance(city, City) and city.name
