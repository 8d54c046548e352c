"""Image parts of chat and Responses requests: each becomes an ImageInput of its user turn, at the offset of the text
before it, named by its request path; every image field sent wrong is a 400 naming its path."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from pydantic import ValidationError

from server.api.openai import responses as responses_api
from server.api.openai.plans import chat_plan
from server.api.openai.request_parts import MAX_IMAGE_URL_CHARS
from server.api.openai.responses_request import ResponsesRequest
from server.api.openai.schemas import ChatCompletionRequest
from server.errors import APIError, UnsupportedParameterError, from_validation_errors
from server.generation.plan import ImageInput, Turn
from tests.api.openai.test_routes import CHAT, assert_openai_error, assert_still_serving

RESPONSES = "/v1/responses"
URL = "https://example.com/cat.png"


def png_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (2, 2), (255, 0, 0)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image(url: str = URL, **fields) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **fields}}


def chat(*messages: dict) -> dict:
    return {"model": "fake-model", "messages": list(messages)}


def user(*parts: dict) -> dict:
    return {"role": "user", "content": list(parts)}


def input_image(url: str | None = URL, **fields) -> dict:
    return {"type": "input_image", **({"image_url": url} if url is not None else {}), **fields}


def responses(*items: dict, **fields) -> dict:
    return {"model": "fake-model", "input": list(items), **fields}


def refusal(make, body: dict) -> APIError:
    """The 400 a body gets from the typed parse or from the mapping to a plan."""
    try:
        make(body)
    except ValidationError as exc:
        return from_validation_errors(exc.errors())
    except APIError as error:
        return error
    raise AssertionError("the request was accepted")


def chat_plan_of(body: dict):
    return chat_plan(ChatCompletionRequest.model_validate(body))


def responses_plan_of(body: dict):
    return responses_api.to_plan(ResponsesRequest.model_validate(body))


def test_chat_image_parts_become_images_of_the_user_turn_at_their_offsets():
    body = chat(
        {"role": "system", "content": "Be brief."},
        user(text("Look: "), image(detail="high"), text("and"), image("data:image/png;base64,AAAA")),
        {"role": "assistant", "content": "A cat."},
        user(image(detail="low")),
    )
    turns = chat_plan_of(body).turns
    assert turns[1] == Turn(
        role="user",
        content="Look: and",
        images=(
            (6, ImageInput(URL, "messages[1].content[1].image_url.url", "high")),
            (9, ImageInput("data:image/png;base64,AAAA", "messages[1].content[3].image_url.url")),
        ),
    )
    assert turns[3] == Turn(
        role="user", content="", images=((0, ImageInput(URL, "messages[3].content[0].image_url.url", "low")),)
    )
    assert turns[0].images == turns[2].images == ()


def test_chat_text_only_content_is_unchanged():
    turns = chat_plan_of(chat(user(text("a"), text("b")), {"role": "user", "content": "c"})).turns
    assert turns == (Turn(role="user", content="ab"), Turn(role="user", content="c"))


def test_a_chat_url_past_its_bound_is_refused_by_the_typed_parse():
    error = refusal(chat_plan_of, chat(user(image("data:," + "A" * MAX_IMAGE_URL_CHARS))))
    assert error.param == "messages[0].content[0].image_url.url"


CHAT_CASES = [
    (chat(user({"type": "image_url", "image_url": URL})), "messages[0].content[0].image_url"),
    (chat(user({"type": "image_url"})), "messages[0].content[0].image_url"),
    (chat(user({"type": "image_url", "image_url": {}})), "messages[0].content[0].image_url.url"),
    (chat(user({"type": "image_url", "image_url": {"url": 5}})), "messages[0].content[0].image_url.url"),
    (chat(user(image(""))), "messages[0].content[0].image_url.url"),
    (chat(user(image(detail="ultra"))), "messages[0].content[0].image_url.detail"),
    (chat(user(image(detail=1))), "messages[0].content[0].image_url.detail"),
    (chat(user({"type": "input_audio", "input_audio": {}})), "messages[0].content[0].type"),
    (chat({"role": "system", "content": [image()]}, user(text("Hi"))), "messages[0].content[0].type"),
    (chat({"role": "developer", "content": [image()]}, user(text("Hi"))), "messages[0].content[0].type"),
    (chat(user(text("Hi")), {"role": "assistant", "content": [image()]}), "messages[1].content[0].type"),
    (
        chat(
            user(text("Hi")),
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                   "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": [image()]},
        ),
        "messages[2].content[0].type",
    ),
    # an image the fake model (no projector) cannot take: the pipeline names it
    (chat(user(text("What is it?"), image(png_url()))), "messages[0].content[1].image_url.url"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param"), CHAT_CASES)
def test_a_wrong_chat_image_is_a_400_naming_the_path(client, body, param):
    error = assert_openai_error(client.post(CHAT, json=body), 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert_still_serving(client)


def test_responses_input_images_become_images_named_at_their_own_paths():
    body = responses(
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "done"},
        {"role": "user", "content": [{"type": "input_text", "text": "Compare "}, input_image(detail="original"),
                                     {"type": "input_text", "text": "with"}, input_image("data:image/png;base64,AA")]},
        instructions="Be brief.",  # a system message first in the chat request: its indices are not these
    )  # fmt: skip
    turns = responses_plan_of(body).turns
    assert [turn.role for turn in turns] == ["system", "assistant", "tool", "user"]
    assert turns[3] == Turn(
        role="user",
        content="Compare with",
        images=(
            (8, ImageInput(URL, "input[2].content[1].image_url", "original")),
            (12, ImageInput("data:image/png;base64,AA", "input[2].content[3].image_url")),
        ),
    )


def test_responses_text_only_messages_are_unchanged():
    body = responses({"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}, instructions="Sys")
    assert responses_plan_of(body).turns == (Turn(role="system", content="Sys"), Turn(role="user", content="Hi"))


def test_a_responses_file_id_is_refused_asking_for_image_url():
    error = refusal(responses_plan_of, responses({"role": "user", "content": [input_image(None, file_id="file-1")]}))
    assert isinstance(error, UnsupportedParameterError)
    assert error.param == "input[0].content[0].file_id"
    assert "image_url" in error.message


def user_item(*parts: dict, role: str = "user") -> dict:
    return {"role": role, "content": list(parts)}


RESPONSES_CASES = [
    (responses(user_item(input_image(None))), "input[0].content[0].image_url"),
    (responses(user_item(input_image(None, file_id="file-1"))), "input[0].content[0].file_id"),
    (responses(user_item(input_image(URL, file_id="file-1"))), "input[0].content[0].file_id"),
    (responses(user_item(input_image(5))), "input[0].content[0].image_url"),
    (responses(user_item(input_image(""))), "input[0].content[0].image_url"),
    (responses(user_item(input_image(detail="ultra"))), "input[0].content[0].detail"),
    (responses(user_item(input_image(file_id=7))), "input[0].content[0].file_id"),
    (responses(user_item(input_image(), role="system"), user_item()), "input[0].content[0].type"),
    (responses(user_item(input_image(), role="developer")), "input[0].content[0].type"),
    (responses(user_item(), user_item(input_image(), role="assistant")), "input[1].content[0].type"),
    (responses(user_item({"type": "input_file", "file_id": "f"})), "input[0].content[0].type"),
    (responses(user_item({"type": "input_text", "text": "Hi"}, input_image(png_url()))),
     "input[0].content[1].image_url"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param"), RESPONSES_CASES)
def test_a_wrong_responses_image_is_a_400_naming_the_path(client, body, param):
    assert_openai_error(client.post(RESPONSES, json=body), 400, param=param)
    assert_still_serving(client)
