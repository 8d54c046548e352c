"""The HTTP contract, driven through the real app with fake engines."""

from __future__ import annotations

import json

import openai
import pytest

from server.errors import GENERIC_500_MESSAGE
from server.generation.json_schema_grammar import output_grammar
from tests.fakes import FakeScript

CHAT = "/v1/chat/completions"
HELLO = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}


def sse_events(response) -> list:
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in response.text.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames), frames
    payloads = [f[len("data: ") :] for f in frames]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def assert_openai_error(response, status: int, *, code=None, param=None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def assert_still_serving(client) -> None:
    response = client.post(CHAT, json=HELLO)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Hello, world!"


def test_health(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_models_list_and_get(client):
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["fake-model", "other-model"]
    for card in listing["data"]:
        assert set(card) == {"id", "object", "created", "owned_by", "available", "loaded", "memory", "capabilities"}
        assert card["object"] == "model" and card["available"] is True and card["loaded"] is False
        assert card["capabilities"] == []  # no projector: no images
    client.post(CHAT, json=HELLO)
    assert [m["loaded"] for m in client.get("/v1/models").json()["data"]] == [True, False]
    assert client.get("/v1/models/gpt-4o-mini").json()["id"] == "gpt-4o-mini"
    assert_openai_error(client.get("/v1/models/nope"), 404, code="model_not_found", param="model")


def test_chat_completion_shape(client, loader):
    response = client.post(CHAT, json=HELLO)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "fake-model"
    choice = body["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "Hello, world!", "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    prompt = "<user>Hi\n<assistant>"
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 4, "total_tokens": len(prompt) + 4}
    assert loader.engines["fake-model"].rendered == [[{"role": "user", "content": "Hi"}]]


def test_alias_is_served_by_its_model_and_echoed(client, loader):
    body = client.post(CHAT, json={**HELLO, "model": "gpt-4o-mini"}).json()
    assert body["model"] == "gpt-4o-mini"
    assert loader.loads == ["fake-model"]


def test_parameters_reach_the_engine(client, loader):
    client.post(
        CHAT,
        json={
            **HELLO,
            "temperature": 0,
            "top_p": 0.5,
            "max_completion_tokens": 7,
            "max_tokens": 99,
            "seed": 42,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "stop": "\n",
        },
    )
    request = loader.engines["fake-model"].requests[0]
    assert request.max_tokens == 7  # max_completion_tokens wins over the deprecated max_tokens
    assert request.stop == ["\n"]
    s = request.sampling
    assert (s.temperature, s.top_p, s.seed, s.presence_penalty, s.frequency_penalty) == (0, 0.5, 42, 0.5, -0.5)


def test_default_max_tokens_fills_the_context(client, loader):
    client.post(CHAT, json=HELLO)
    request = loader.engines["fake-model"].requests[0]
    assert request.max_tokens == 256 - len(request.prompt_tokens)


def test_stop_and_length_finish_reasons(client):
    body = client.post(CHAT, json={**HELLO, "stop": [", w", "zzz"]}).json()
    assert body["choices"][0]["message"]["content"] == "Hello"
    assert body["choices"][0]["finish_reason"] == "stop"
    body = client.post(CHAT, json={**HELLO, "max_tokens": 2}).json()
    assert body["choices"][0]["message"]["content"] == "Hello,"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_chat_stream_framing_and_shapes(client):
    body = {**HELLO, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", CHAT, json=body) as response:
        response.read()
    events = sse_events(response)
    assert len({e["id"] for e in events}) == 1
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert all("role" not in d for d in deltas[1:])
    assert "".join(d.get("content", "") for d in deltas) == "Hello, world!"
    for event in events:
        for choice in event["choices"]:
            assert None not in choice["delta"].values()
    finishing = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finishing) == 1 and finishing[0]["choices"][0]["delta"] == {}
    assert finishing[0]["choices"][0]["finish_reason"] == "stop"
    last = events[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4
    assert all("usage" not in e for e in events[:-1])


def test_stream_without_usage_has_no_usage_chunk(client):
    with client.stream("POST", CHAT, json={**HELLO, "stream": True}) as response:
        response.read()
    events = sse_events(response)
    assert all(e["choices"] for e in events)
    assert all("usage" not in e for e in events)


def test_completions_plain_and_streamed(client):
    body = {"model": "fake-model", "prompt": "Once"}
    plain = client.post("/v1/completions", json=body).json()
    assert plain["object"] == "text_completion"
    assert plain["choices"] == [{"index": 0, "text": "Hello, world!", "logprobs": None, "finish_reason": "stop"}]
    assert plain["usage"]["prompt_tokens"] == 4
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=stream_body) as response:
        response.read()
    events = sse_events(response)
    assert "".join(c["text"] for e in events for c in e["choices"]) == "Hello, world!"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 8


def test_completions_default_max_tokens_is_16(client, loader):
    client.post("/v1/completions", json={"model": "fake-model", "prompt": "x"})
    assert loader.engines["fake-model"].requests[0].max_tokens == 16


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"model": "fake-model"}, "messages"),
        ({"model": "fake-model", "messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "model"),
        ({**HELLO, "max_tokens": 0}, "max_tokens"),
        ({**HELLO, "max_tokens": -5}, "max_tokens"),
        ({**HELLO, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({**HELLO, "temperature": "hot"}, "temperature"),
        ({**HELLO, "temperature": 2.5}, "temperature"),
        ({**HELLO, "top_p": 1.5}, "top_p"),
        ({**HELLO, "presence_penalty": 3}, "presence_penalty"),
        ({**HELLO, "frequency_penalty": -3}, "frequency_penalty"),
        ({**HELLO, "max_tokens": "10"}, "max_tokens"),
        ({**HELLO, "seed": 1.5}, "seed"),
        ({**HELLO, "stream": "yes"}, "stream"),
        ({**HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**HELLO, "stop": 7}, "stop"),
        ({"model": "fake-model", "messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role"),
        ({"model": "fake-model", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "fake-model", "messages": "Hi"}, "messages"),
        ({**HELLO, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({**HELLO, "n": 9}, "n"),
        ({**HELLO, "n": 0}, "n"),
        ({**HELLO, "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({**HELLO, "tool_choice": "required"}, "tool_choice"),
        (
            {**HELLO, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"},
            "tool_choice",
        ),
        ({**HELLO, "response_format": {"type": "xml"}}, "response_format.type"),
        ({**HELLO, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({**HELLO, "top_logprobs": 2}, "top_logprobs"),
        ({**HELLO, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({**HELLO, "top_k": -1}, "top_k"),
    ],
)
def test_bad_chat_input_is_a_400_naming_the_parameter(client, payload, param):
    error = assert_openai_error(client.post(CHAT, json=payload), 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert_still_serving(client)


def test_malformed_json_is_a_400(client):
    response = client.post(
        CHAT, content=b'{"model": "fake-model", "messages": [', headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 400)
    response = client.post(CHAT, content=b"[1, 2]", headers={"content-type": "application/json"})
    assert_openai_error(response, 400)
    assert_still_serving(client)


def test_unknown_model_is_a_404_never_a_fallback(client, loader):
    error = assert_openai_error(
        client.post(CHAT, json={**HELLO, "model": "gpt-5"}), 404, code="model_not_found", param="model"
    )
    assert "gpt-5" in error["message"]
    assert loader.loads == []
    assert_still_serving(client)


def test_context_length_exceeded(client):
    too_long = {**HELLO, "messages": [{"role": "user", "content": "x" * 300}]}
    assert_openai_error(client.post(CHAT, json=too_long), 400, code="context_length_exceeded", param="messages")
    fits_alone = {**HELLO, "max_tokens": 250}
    assert_openai_error(client.post(CHAT, json=fits_alone), 400, code="context_length_exceeded")
    prompt = {"model": "fake-model", "prompt": "y" * 250, "max_tokens": 10}
    assert_openai_error(
        client.post("/v1/completions", json=prompt), 400, code="context_length_exceeded", param="prompt"
    )
    assert_still_serving(client)


def test_unexpected_failure_is_a_generic_500(client, loader):
    loader.scripts["fake-model"] = FakeScript(fail_after=0)
    error = assert_openai_error(client.post(CHAT, json=HELLO), 500)
    assert error["message"] == GENERIC_500_MESSAGE
    assert error["type"] == "server_error"
    assert "secret" not in json.dumps(error)
    loader.scripts.clear()
    assert client.post(CHAT, json={**HELLO, "model": "other-model"}).status_code == 200


def test_failure_mid_stream_is_an_error_event_then_done(client, loader):
    loader.scripts["fake-model"] = FakeScript(fail_after=2)
    with client.stream("POST", CHAT, json={**HELLO, "stream": True}) as response:
        assert response.status_code == 200
        response.read()
    events = sse_events(response)
    assert events[-1] == {
        "error": {"message": GENERIC_500_MESSAGE, "type": "server_error", "param": None, "code": None}
    }
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Hello,"


def test_overload_is_a_429_with_retry_after_before_streaming(client, loader):
    loader.scripts["fake-model"] = FakeScript(overloaded=True)
    response = client.post(CHAT, json={**HELLO, "stream": True})
    assert_openai_error(response, 429, code="overloaded")
    assert response.headers["retry-after"] == "2"


def test_unknown_route_and_method_use_openai_bodies(client):
    assert_openai_error(client.post("/v1/nothing", json={}), 404)
    assert_openai_error(client.get(CHAT), 405)


def test_unknown_fields_are_accepted(client):
    assert client.post(CHAT, json={**HELLO, "some_future_parameter": {"x": 1}, "user": "u1"}).status_code == 200


def test_openai_client_against_the_app(client):
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    reply = api.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message.content == "Hello, world!"
    stream = api.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world!"
    assert chunks[-1].usage.completion_tokens == 4
    with pytest.raises(openai.NotFoundError) as info:
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=0)
    assert bad.value.param == "max_tokens"


def test_json_body_is_read_whatever_the_content_type(client):
    # `curl -d '{...}'` sends application/x-www-form-urlencoded; OpenAI-style servers read it as JSON anyway.
    response = client.post(
        CHAT, content=json.dumps(HELLO).encode(), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200


def test_logit_bias_and_llama_extensions_reach_the_engine(client, loader):
    body = {**HELLO, "logit_bias": {"5": -100, "17": 2.5}, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}
    assert client.post(CHAT, json={**body, "ignore_eos": True}).status_code == 200
    sampling = loader.engines["fake-model"].requests[0].sampling
    assert sampling.logit_bias == ((5, -100), (17, 2.5))
    assert (sampling.top_k, sampling.min_p, sampling.repeat_penalty, sampling.ignore_eos) == (40, 0.05, 1.1, True)


@pytest.mark.parametrize("bias", [{"abc": 1}, {"1000": 1}, {"-1": 1}, {"5": 101}])
def test_bad_logit_bias_is_a_400(client, bias):
    error = assert_openai_error(client.post(CHAT, json={**HELLO, "logit_bias": bias}), 400)
    assert error["param"].startswith("logit_bias")


def test_n_choices_plain(client, loader):
    body = client.post(CHAT, json={**HELLO, "n": 3, "seed": 10}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "Hello, world!" for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["prompt_tokens"] == len("<user>Hi\n<assistant>")
    assert [r.sampling.seed for r in loader.engines["fake-model"].requests] == [10, 11, 12]


def test_n_choices_streamed(client):
    stream_body = {**HELLO, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", CHAT, json=stream_body) as response:
        response.read()
    events = sse_events(response)
    for index in (0, 1):
        deltas = [e["choices"][0]["delta"] for e in events if e["choices"] and e["choices"][0]["index"] == index]
        assert deltas[0] == {"role": "assistant", "content": ""}
        assert "".join(d.get("content", "") for d in deltas) == "Hello, world!"
    assert len([e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]) == 2
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 8
    assert all("usage" not in e for e in events[:-1])


def test_n_choices_all_or_none_admitted(client, loader):
    client.post(CHAT, json=HELLO)
    engine = loader.engines["fake-model"]
    calls = []
    original = engine.generate

    def second_fails(request):
        calls.append(request)
        if len(calls) == 2:
            from server.errors import OverloadedError

            raise OverloadedError("full")
        return original(request)

    engine.generate = second_fails
    assert_openai_error(client.post(CHAT, json={**HELLO, "n": 3}), 429)
    assert engine.closed_early == 0  # the first choice, never started, was closed without running


def test_chat_logprobs_plain_and_streamed(client):
    body = client.post(CHAT, json={**HELLO, "logprobs": True, "top_logprobs": 2}).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["Hello", ",", " world", "!"]
    assert content[0] == {
        "token": "Hello",
        "logprob": -0.5,
        "bytes": list(b"Hello"),
        "top_logprobs": [
            {"token": "Hello~0", "logprob": -0.5, "bytes": list(b"Hello~0")},
            {"token": "Hello~1", "logprob": -1.5, "bytes": list(b"Hello~1")},
        ],
    }
    assert client.post(CHAT, json=HELLO).json()["choices"][0]["logprobs"] is None
    with client.stream("POST", CHAT, json={**HELLO, "logprobs": True, "stream": True}) as response:
        response.read()
    events = sse_events(response)
    streamed = [t for e in events for c in e["choices"] if c["logprobs"] for t in c["logprobs"]["content"]]
    assert [t["token"] for t in streamed] == ["Hello", ",", " world", "!"]
    assert all(t["top_logprobs"] == [] for t in streamed)


def test_completion_logprobs(client):
    body = client.post("/v1/completions", json={"model": "fake-model", "prompt": "x", "logprobs": 1}).json()
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["Hello", ",", " world", "!"]
    assert logprobs["token_logprobs"] == [-0.5] * 4
    assert logprobs["top_logprobs"][0] == {"Hello~0": -0.5}
    assert logprobs["text_offset"] == [0, 5, 6, 12]
    assert_openai_error(
        client.post("/v1/completions", json={"model": "fake-model", "prompt": "x", "logprobs": 6}),
        400,
        param="logprobs",
    )


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name"],
    "additionalProperties": False,
}


def test_response_format_reaches_the_engine_as_a_schema(client, loader):
    client.post(CHAT, json={**HELLO, "response_format": {"type": "json_object"}})
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    client.post(CHAT, json={**HELLO, "response_format": fmt})
    client.post(CHAT, json={**HELLO, "response_format": {"type": "text"}})
    engine = loader.engines["fake-model"]
    sent = [r.grammar for r in engine.requests]
    assert sent[0] == output_grammar("{}") and sent[1] == output_grammar(json.dumps(SCHEMA)) and sent[2] is None
    assert engine.grammars == sent[:2]  # each compiled in the worker before it was admitted


@pytest.mark.parametrize(
    ("schema", "param"),
    [
        ({"type": "object", "not": {"type": "string"}}, "response_format.json_schema.schema.not"),
        ({"type": "integer", "minimum": 3}, "response_format.json_schema.schema.minimum"),
        (
            {"type": "object", "properties": {"a": {"type": "string", "format": "email"}}},
            "response_format.json_schema.schema.properties.a.format",
        ),
        ({"type": "string", "pattern": "[a-z]+"}, "response_format.json_schema.schema.pattern"),
        ({"type": "tuple"}, "response_format.json_schema.schema.type"),
    ],
)
def test_unsupported_schema_features_are_a_400_naming_them(client, loader, schema, param):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    error = assert_openai_error(client.post(CHAT, json={**HELLO, "response_format": fmt}), 400, param=param)
    assert param.rsplit(".", 1)[-1] in error["message"] or "type" in error["message"]
    assert loader.loads == []  # refused before the model was even loaded


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL_PIECES = ('{"tool_calls": [{"name": "get_weather", ', '"arguments": {"city": "Paris"}}]}')


@pytest.fixture
def roomy(loader):
    """The tool instructions are long for the fake engine's one-token-per-character count."""
    loader.scripts["fake-model"] = FakeScript(n_ctx=4096)
    return loader


def test_tool_call_plain(client, roomy):
    loader = roomy
    loader.scripts["fake-model"] = FakeScript(pieces=CALL_PIECES, n_ctx=4096)
    body = client.post(CHAT, json={**HELLO, "tools": [WEATHER]}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    rendered = loader.engines["fake-model"].rendered[-1]
    assert rendered[0]["role"] == "system" and "get_weather" in rendered[0]["content"]
    assert loader.engines["fake-model"].requests[-1].grammar is None  # auto: no grammar


def test_tool_choice_required_or_named_constrains_the_output(client, roomy):
    loader = roomy
    client.post(CHAT, json={**HELLO, "tools": [WEATHER], "tool_choice": "required"})
    named = {"type": "function", "function": {"name": "get_weather"}}
    client.post(CHAT, json={**HELLO, "tools": [WEATHER], "tool_choice": named})
    for request in loader.engines["fake-model"].requests:
        # A call of get_weather with a city is the only JSON the grammar admits.
        assert '"\\"get_weather\\""' in request.grammar and '"\\"city\\""' in request.grammar
    unknown = {"type": "function", "function": {"name": "nope"}}
    assert_openai_error(client.post(CHAT, json={**HELLO, "tools": [WEATHER], "tool_choice": unknown}), 400)


def test_auto_tools_with_a_text_reply_stream_as_text(client, roomy):
    with client.stream("POST", CHAT, json={**HELLO, "tools": [WEATHER], "stream": True}) as response:
        response.read()
    events = sse_events(response)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "Hello, world!"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_tool_call_streamed_in_openai_delta_format(client, loader):
    loader.scripts["fake-model"] = FakeScript(pieces=CALL_PIECES, n_ctx=4096)
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    stream = api.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], stream=True
    )
    chunks = list(stream)
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    # The call's id, type and name first, then its arguments as they came.
    assert (calls[0].function.name, calls[0].type, calls[0].function.arguments) == ("get_weather", "function", "")
    assert calls[0].id and all(c.id is None and c.function.name is None and c.index == 0 for c in calls[1:])
    assert "".join(c.function.arguments for c in calls) == '{"city": "Paris"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert all(not c.choices[0].delta.content for c in chunks)


def test_tool_results_in_the_history_reach_the_template(client, roomy):
    loader = roomy
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    ]
    assert client.post(CHAT, json={"model": "fake-model", "messages": messages, "tools": [WEATHER]}).status_code == 200
    rendered = loader.engines["fake-model"].rendered[-1]
    assert json.loads(rendered[2]["content"]) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    }
    assert rendered[3] == {"role": "tool", "content": "18C and sunny"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
    ],
)
def test_openai_parameters_that_cannot_be_honoured_are_refused_by_name(client, extra, param):
    response = client.post(CHAT, json={**HELLO, **extra})
    assert_openai_error(response, 400, code="unsupported_parameter", param=param)
    assert client.post(CHAT, json={**HELLO, "modalities": ["text"], "store": False}).status_code == 200
