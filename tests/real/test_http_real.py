"""Real models through llama.cpp, over HTTP, with the official openai client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

SMOL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers_with_real_usage(api: openai.OpenAI):
    reply = api.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    # SmolLM2's template adds its default system prompt: 37 tokens for this question.
    assert reply.usage.prompt_tokens == 37
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_stream_matches_non_stream_and_ends_with_usage(api: openai.OpenAI):
    whole = api.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=16, temperature=0)
    chunks = list(
        api.chat.completions.create(
            model=SMOL,
            messages=QUESTION,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_length_limit_is_exact(api: openai.OpenAI):
    reply = api.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_completion_tokens=5,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_seed_reproduces_sampled_text(api: openai.OpenAI):
    def sample() -> str:
        return (
            api.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=16, temperature=0.9, seed=1234)
            .choices[0]
            .message.content
        )

    assert sample() == sample()


def test_stop_sequence_is_not_returned(api: openai.OpenAI):
    free = api.completions.create(model=SMOL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0).choices[0].text
    assert len(free) > 3
    stop = free[2:4]
    stopped = api.completions.create(model=SMOL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[stop])
    assert stopped.choices[0].text == free[: free.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_completions_plain_and_streamed(api: openai.OpenAI):
    plain = api.completions.create(model=SMOL, prompt="The sky is", max_tokens=8, temperature=0)
    assert plain.choices[0].text and plain.usage.prompt_tokens == 3
    chunks = list(
        api.completions.create(
            model=SMOL,
            prompt="The sky is",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_curl_style_request(server):
    body = '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}'
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]


def test_alias_and_model_listing(api: openai.OpenAI):
    assert [m.id for m in api.models.list()] == [SMOL, "tiny-llama", "tiny-bert", "tiny-vision"]
    reply = api.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=4)
    assert reply.model == "gpt-4o-mini"


def test_generated_tiny_model_loads_from_the_registry_and_answers(api: openai.OpenAI):
    reply = api.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    # ChatML rendered by the GGUF's own template, tokenized by its byte-level BPE vocabulary:
    # <|im_start|> u s er \n H i <|im_end|> \n <|im_start|> a s s i s t a n t \n  -> 20 tokens
    assert reply.usage.prompt_tokens == 20
    assert reply.usage.completion_tokens >= 1
    assert reply.choices[0].finish_reason in ("stop", "length")
    streamed = api.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == reply.choices[0].message.content


def test_bad_input_over_real_http_then_still_serving(api: openai.OpenAI, server):
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="gpt-5", messages=QUESTION)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        api.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=5000)
    assert too_long.value.code == "context_length_exceeded"
    response = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert response.status_code == 400 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert api.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=2).choices[0].message.content


def test_n_choices_share_the_prompt(api: openai.OpenAI, server):
    greedy = api.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=8, temperature=0, n=3)
    assert [c.index for c in greedy.choices] == [0, 1, 2]
    assert len({c.message.content for c in greedy.choices}) == 1  # greedy: the same text three times
    assert greedy.usage.completion_tokens % 3 == 0  # three equal completions, counted once each
    sampled = api.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=16, temperature=1.0, seed=5, n=3)
    again = api.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=16, temperature=1.0, seed=5, n=3)
    assert [c.message.content for c in sampled.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in sampled.choices}) > 1  # each choice has its own seed
    chunks = list(
        api.chat.completions.create(
            model=SMOL,
            messages=QUESTION,
            max_tokens=8,
            temperature=0,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in (0, 1)
    ]
    assert texts == [greedy.choices[0].message.content] * 2
    assert chunks[-1].usage.completion_tokens == 2 * (greedy.usage.completion_tokens // 3)


def test_logprobs_are_the_models_own(api: openai.OpenAI):
    reply = api.chat.completions.create(
        model=SMOL, messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    tokens = reply.choices[0].logprobs.content
    assert len(tokens) == reply.usage.completion_tokens
    assert "".join(t.token for t in tokens) == reply.choices[0].message.content
    for token in tokens:
        assert token.logprob <= 0
        alternatives = [alt.logprob for alt in token.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        # Greedy decoding picks the most likely token: it is the first alternative.
        assert token.top_logprobs[0].token == token.token
        assert abs(token.top_logprobs[0].logprob - token.logprob) < 1e-6
    legacy = api.completions.create(model=SMOL, prompt="The sky is", max_tokens=4, temperature=0, logprobs=2)
    assert len(legacy.choices[0].logprobs.tokens) == 4
    assert all(len(top) == 2 for top in legacy.choices[0].logprobs.top_logprobs)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer"},
        "colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
    },
    "required": ["name", "age", "colors"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_json_schema_output_always_parses_and_validates(api: openai.OpenAI, temperature):
    reply = api.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Describe a person."}],
        max_tokens=120,
        temperature=temperature,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    )
    assert reply.choices[0].finish_reason == "stop"
    person = json.loads(reply.choices[0].message.content)
    assert set(person) == {"name", "age", "colors"}
    assert isinstance(person["name"], str) and len(person["name"]) <= 20
    assert isinstance(person["age"], int)
    assert set(person["colors"]) <= {"red", "green", "blue"} and len(person["colors"]) <= 3


def test_json_object_output_is_an_object(api: openai.OpenAI):
    reply = api.chat.completions.create(
        model=SMOL, messages=QUESTION, max_tokens=80, temperature=0, response_format={"type": "json_object"}
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # cut by max_tokens: still the start of an object
        assert reply.choices[0].message.content.lstrip().startswith("{")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def assert_valid_weather_call(call) -> None:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
    assert isinstance(arguments["city"], str) and len(arguments["city"]) <= 30


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call_is_always_valid(api: openai.OpenAI, tool_choice):
    for temperature in (0, 1.0):
        reply = api.chat.completions.create(
            model=SMOL,
            messages=WEATHER_QUESTION,
            tools=[WEATHER_TOOL],
            tool_choice=tool_choice,
            max_tokens=400,
            temperature=temperature,
            seed=11,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert len(choice.message.tool_calls) >= 1
        for call in choice.message.tool_calls:
            assert_valid_weather_call(call)


def test_parallel_tool_calls_false_means_one_call(api: openai.OpenAI):
    reply = api.chat.completions.create(
        model=SMOL,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
        temperature=1.0,
        seed=11,
    )
    assert len(reply.choices[0].message.tool_calls) == 1
    assert_valid_weather_call(reply.choices[0].message.tool_calls[0])


def test_streamed_tool_call_assembles_in_the_sdk(api: openai.OpenAI):
    stream = api.chat.completions.create(
        model=SMOL,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    names = [d.function.name for d in deltas if d.function and d.function.name]
    assert names and all(name == "get_weather" for name in names)  # a name is sent once per call, not repeated
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_tools_answer_in_text_or_with_a_valid_call(api: openai.OpenAI):
    reply = api.chat.completions.create(
        model=SMOL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], max_tokens=60, temperature=0
    )
    choice = reply.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            assert call.function.name == "get_weather"
            json.loads(call.function.arguments)
    else:
        assert choice.message.content


def test_responses_api_text_and_stream(api: openai.OpenAI):
    response = api.responses.create(
        model=SMOL,
        input="What is the capital of France?",
        instructions="Answer briefly.",
        max_output_tokens=12,
        temperature=0,
    )
    assert response.status in ("completed", "incomplete") and response.output_text
    events = list(
        api.responses.create(
            model=SMOL,
            input="What is the capital of France?",
            instructions="Answer briefly.",
            max_output_tokens=12,
            temperature=0,
            stream=True,
        )
    )
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == response.output_text
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert events[-1].response.usage.output_tokens == response.usage.output_tokens


def test_sdk_parse_with_a_pydantic_model(api: openai.OpenAI):
    from pydantic import BaseModel as PydanticModel

    class City(PydanticModel):
        name: str
        country: str
        population_millions: int

    completion = api.chat.completions.parse(
        model=SMOL,
        messages=[{"role": "user", "content": "Describe Paris."}],
        response_format=City,
        max_tokens=120,
        temperature=0,
    )
    city = completion.choices[0].message.parsed
    assert isinstance(city, City) and city.name


def test_embeddings_from_a_generated_bert_model(api: openai.OpenAI):
    texts = ["the cat sat on the mat", "the cat sat on the mat", "a red car runs fast"]
    result = api.embeddings.create(model="tiny-bert", input=texts)
    vectors = [d.embedding for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2] and all(len(v) == 32 for v in vectors)
    for vector in vectors:
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-5  # mean-pooled, then normalised
    assert vectors[0] == vectors[1] and vectors[0] != vectors[2]
    assert result.usage.prompt_tokens == 8 + 8 + 7  # [CLS] words [SEP], WordPiece
    single = api.embeddings.create(model="tiny-bert", input="the cat sat on the mat")
    assert max(abs(a - b) for a, b in zip(single.data[0].embedding, vectors[0], strict=True)) < 1e-5
    packed = api.embeddings.create(model="tiny-bert", input="a red car runs fast", encoding_format="base64")
    import base64
    import struct

    decoded = struct.unpack("<32f", base64.b64decode(packed.data[0].embedding))
    assert max(abs(a - b) for a, b in zip(decoded, vectors[2], strict=True)) < 1e-5
    with pytest.raises(openai.BadRequestError):
        api.embeddings.create(model=SMOL, input="x")  # a chat model is not an embedding model
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="tiny-bert", messages=QUESTION)


def test_sdk_stream_helper_assembles_tool_calls(api: openai.OpenAI):
    with api.chat.completions.stream(
        model=SMOL,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100,
        temperature=0,
    ) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    [call] = final.choices[0].message.tool_calls
    assert_valid_weather_call(call)
    assert final.choices[0].finish_reason == "tool_calls"
