"""llama.cpp server's /tokenize, /detokenize and /apply-template, with its field names and answers."""

from __future__ import annotations

import pytest


def test_tokenize_and_back(client):
    tokens = client.post("/tokenize", json={"content": "Hi!"}).json()["tokens"]
    assert tokens == [ord("H"), ord("i"), ord("!")]  # the fake engine: a token per character
    assert client.post("/detokenize", json={"tokens": tokens}).json() == {"content": "Hi!"}


def test_with_pieces_pairs_each_id_with_its_text(client):
    reply = client.post("/tokenize", json={"content": "ab", "with_pieces": True, "model": "other-model"}).json()
    assert reply == {"tokens": [{"id": 97, "piece": "a"}, {"id": 98, "piece": "b"}]}


def test_apply_template_renders_the_chat(client):
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
    assert client.post("/apply-template", json=body).json() == {"prompt": "<user>Hi\n<assistant>"}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {"content": 5}, "content"),
        ("/tokenize", {"content": "x", "with_pieces": "yes"}, "with_pieces"),
        ("/tokenize", {"content": "x", "model": "nope"}, "model"),
        ("/detokenize", {"tokens": "1 2"}, "tokens"),
        ("/detokenize", {"tokens": [-1]}, "tokens[0]"),
        ("/detokenize", {"tokens": [10**6]}, "tokens"),  # past the model's vocabulary (1000 for the fake)
        ("/detokenize", {"tokens": [1] * 100_001}, "tokens"),
    ],
)
def test_wrong_input_is_a_400_naming_the_field(client, path, body, param):
    reply = client.post(path, json=body)
    assert reply.status_code in (400, 404), reply.text
    assert reply.json()["error"]["param"] == param
    assert client.post("/tokenize", json={"content": "ok"}).status_code == 200
