"""The schema check itself can fail: bodies that break OpenAI's schema are reported."""

from tests.openai_schema import check_body, check_sse

GOOD_CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def test_a_valid_chat_completion_passes():
    assert check_body("/v1/chat/completions", GOOD_CHAT) == []


def test_missing_required_fields_wrong_types_and_forbidden_nulls_are_reported():
    broken = {**GOOD_CHAT, "system_fingerprint": None, "created": "yesterday"}
    del broken["id"]
    broken["choices"] = [{**GOOD_CHAT["choices"][0], "finish_reason": None}]
    problems = check_body("/v1/chat/completions", broken)
    assert any("$.id is missing" in p for p in problems)
    assert any("$.created is not a integer" in p for p in problems)
    assert any("$.system_fingerprint is null" in p for p in problems)
    assert any("finish_reason is null" in p for p in problems)


def test_stream_events_and_errors_are_checked():
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0}]}
    problems = check_sse("/v1/chat/completions", f"data: {__import__('json').dumps(chunk)}\n\ndata: [DONE]\n\n")
    assert any("delta is missing" in p for p in problems)
    assert check_body("/v1/models", {"error": {"message": "x", "type": "t", "param": None}}) == [
        "/v1/models: $.error.code is missing (required)"
    ]
