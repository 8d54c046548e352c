"""Anthropic image blocks: a base64 source becomes a data URL, a url source the URL, each an ImageInput of its user
turn at the offset where the text before it ends; every image field sent wrong is a 400 naming its path; images in
tool results and documents stay refused by name."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from server.api.anthropic.adapter import to_plan
from server.api.anthropic.schemas import MAX_IMAGE_CHARS, CountTokensRequest, MessagesRequest
from server.errors import APIError, UnsupportedParameterError, from_validation_errors
from server.generation.plan import ImageInput, Turn

URL = "https://example.com/cat.png"
BASE64 = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
REMOTE = {"type": "image", "source": {"type": "url", "url": URL}}
USE = {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}}


def request(*messages: dict, model=MessagesRequest):
    return {
        "model": "fake-model",
        "messages": list(messages),
        **({"max_tokens": 16} if model is MessagesRequest else {}),
    }


def user(*blocks: dict) -> dict:
    return {"role": "user", "content": list(blocks)}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def source(**fields) -> dict:
    return {"type": "image", "source": fields}


def plan_of(body: dict, model=MessagesRequest):
    return to_plan(model.model_validate_json(json.dumps(body)))


def refusal(body: dict) -> APIError:
    try:
        plan_of(body)
    except ValidationError as exc:
        return from_validation_errors(exc.errors())
    except APIError as error:
        return error
    raise AssertionError("the request was accepted")


@pytest.mark.parametrize("model", [MessagesRequest, CountTokensRequest])
def test_image_blocks_become_images_of_the_user_turn(model):
    body = request(user(text("Look:"), BASE64, text("and"), REMOTE, text("What?")), model=model)
    [turn] = plan_of(body, model).turns
    assert turn == Turn(
        role="user",
        content="Look:\nand\nWhat?",
        images=(
            (5, ImageInput("data:image/png;base64,iVBORw0KGgo=", "messages[0].content[1].source.data")),
            (9, ImageInput(URL, "messages[0].content[3].source.url")),
        ),
    )


def test_images_around_tool_results_stay_in_their_user_turns():
    body = request(
        user(text("Call it.")),
        {"role": "assistant", "content": [USE]},
        user(BASE64, {"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"}, REMOTE, text("Now?")),
    )
    turns = plan_of(body).turns
    assert [turn.role for turn in turns] == ["user", "assistant", "user", "tool", "user"]
    assert turns[2] == Turn(
        role="user",
        content="",
        images=((0, ImageInput("data:image/png;base64,iVBORw0KGgo=", "messages[2].content[0].source.data")),),
    )
    assert turns[4] == Turn(
        role="user", content="Now?", images=((0, ImageInput(URL, "messages[2].content[2].source.url")),)
    )


def test_an_image_alone_is_a_user_turn_with_no_text():
    assert plan_of(request(user(REMOTE))).turns == (
        Turn(role="user", content="", images=((0, ImageInput(URL, "messages[0].content[0].source.url")),)),
    )


@pytest.mark.parametrize(
    ("block", "param"),
    [
        ({"type": "image"}, "messages[0].content[0].source"),
        ({"type": "image", "source": "iVBOR"}, "messages[0].content[0].source"),
        (source(), "messages[0].content[0].source.type"),
        (source(type="file", file_id="file_1"), "messages[0].content[0].source.type"),
        (source(type="base64", data="iVBOR"), "messages[0].content[0].source.media_type"),
        (source(type="base64", media_type="image/bmp", data="Qk0="), "messages[0].content[0].source.media_type"),
        (source(type="base64", media_type="image/png"), "messages[0].content[0].source.data"),
        (source(type="base64", media_type="image/png", data=5), "messages[0].content[0].source.data"),
        (source(type="base64", media_type="image/png", data=""), "messages[0].content[0].source.data"),
        (source(type="url"), "messages[0].content[0].source.url"),
        (source(type="url", url=["x"]), "messages[0].content[0].source.url"),
        (source(type="url", url="x" * (MAX_IMAGE_CHARS + 1)), "messages[0].content[0].source.url"),
    ],
)
def test_a_wrong_image_block_is_a_400_naming_the_path(block, param):
    error = refusal(request(user(block)))
    assert error.status_code == 400
    assert error.param == param


def test_an_image_in_an_assistant_message_is_a_400_naming_its_type():
    error = refusal(request(user(text("Hi")), {"role": "assistant", "content": [BASE64]}))
    assert error.param == "messages[1].content[0].type"


def test_images_in_tool_results_and_documents_stay_refused_by_name():
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [text("x"), BASE64]}
    error = refusal(request(user(text("Hi")), {"role": "assistant", "content": [USE]}, user(result)))
    assert isinstance(error, UnsupportedParameterError)
    assert error.param == "messages[2].content[0].content[1].type"
    assert "not supported" in error.message and "image block of the user message" in error.message
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    error = refusal(request(user(text("Read:"), document)))
    assert isinstance(error, UnsupportedParameterError)
    assert error.param == "messages[0].content[1].type" and "document blocks are not supported" in error.message


def test_an_image_for_a_model_without_a_projector_is_an_anthropic_400_naming_it(client):
    response = client.post("/v1/messages", json=request(user(text("What is it?"), BASE64)))
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "messages[0].content[1].source.data" in body["error"]["message"]
