"""LlamaIndex's OpenAILike against a server, run in LlamaIndex's own environment (it needs openai < 3, the rest of
the suite runs on openai 3): `python llamaindex_client.py BASE_URL SEED` prints one JSON object of what it saw.
tests/real/clients/test_llamaindex_real.py runs it and checks the results."""

from __future__ import annotations

import json
import sys

from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.llms.openai_like import OpenAILike
from pydantic import BaseModel, Field


class City(BaseModel):
    """A city."""

    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: int


def main(base_url: str, seed: int) -> dict:
    llm = OpenAILike(
        model="smollm2-135m-instruct",
        api_base=base_url + "/v1",
        api_key="unused",
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=1024,
        max_tokens=200,
        max_retries=0,
        additional_kwargs={"seed": seed},
    )
    question = [ChatMessage(role="user", content="Say hello in one short sentence.")]
    whole = llm.chat(question).message.content
    deltas = [chunk.delta for chunk in llm.stream_chat(question)]
    city = llm.structured_predict(City, PromptTemplate("Describe the city of {city} as JSON."), city="Paris")
    return {"chat": whole, "stream_deltas": deltas, "structured": city.model_dump(), "type": type(city).__name__}


if __name__ == "__main__":
    json.dump(main(sys.argv[1], int(sys.argv[2])), sys.stdout)
