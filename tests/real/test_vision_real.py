"""Images through the whole server with the official `openai` SDK: a tiny llama and a tiny MiniCPM-V projector
(random weights) from the shared real-tier server. The image decides the greedy reply (two images differ, the same
image gives the same reply, alone and beside other requests), its rows count as prompt tokens, and an image sent
again is served from the prefix cache (counters)."""

from __future__ import annotations

import base64
import io
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from PIL import Image

pytestmark = pytest.mark.real

MODEL = "tiny-vision"


def data_url(seed: int, size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> str:
    picture = Image.frombytes("RGB", size, bytes((seed * 37 + i * 11) % 256 for i in range(size[0] * size[1] * 3)))
    out = io.BytesIO()
    picture.save(out, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(out.getvalue()).decode()


def ask(api: openai.OpenAI, url: str | None, text: str = "What is in this picture?"):
    content: list[dict] = [{"type": "text", "text": text}]
    if url is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": url, "detail": "low"}})
    return api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=8, temperature=0
    )


def counter(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    found = re.search(rf'^{name}{{model="{MODEL}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_the_image_decides_the_reply_and_the_same_image_gives_the_same_reply(api):
    first, again, other = (ask(api, data_url(seed)) for seed in (1, 1, 2))
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    text_only = ask(api, None)
    assert first.usage.prompt_tokens > text_only.usage.prompt_tokens + 8  # the image's rows count


def test_replies_under_concurrent_load_are_the_replies_alone(api):
    seeds = [3, 4, 5, 3, 6, 4]
    alone = {seed: ask(api, data_url(seed)).choices[0].message.content for seed in set(seeds)}
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(lambda seed: ask(api, data_url(seed)).choices[0].message.content, seeds))
    assert together == [alone[seed] for seed in seeds]


def test_a_jpeg_and_a_png_of_other_pixels_are_told_apart_and_streaming_works(api):
    chunks = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(7, fmt="JPEG")}}]}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = list(chunks)
    assert pieces[-1].usage is not None and pieces[-1].usage.prompt_tokens > 8
    assert any(piece.choices and piece.choices[0].finish_reason for piece in pieces)


def test_an_image_sent_again_comes_from_the_prefix_cache_without_a_new_encode(api, server):
    url = data_url(9)
    ask(api, url, "Tell me about it.")
    encoded, rows, hits = (
        counter(server, name)
        for name in (
            "slm_image_chunks_encoded_total",
            "slm_image_rows_evaluated_total",
            "slm_prefix_cache_hit_tokens_total",
        )
    )
    reply = ask(api, url, "Tell me about it.")
    assert counter(server, "slm_image_chunks_encoded_total") == encoded
    assert counter(server, "slm_image_rows_evaluated_total") == rows  # every image row came from the KV cache
    assert counter(server, "slm_prefix_cache_hit_tokens_total") - hits >= reply.usage.prompt_tokens - 1
    ask(api, data_url(10), "Tell me about it.")  # another image: encoded and decoded anew
    assert counter(server, "slm_image_chunks_encoded_total") > encoded
    assert counter(server, "slm_image_rows_evaluated_total") > rows


def test_an_image_for_a_text_model_is_a_400_naming_the_model(api):
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(1)}}]}],
            max_tokens=4,
        )
    error = refused.value.body
    assert "tiny-llama" in error["message"]
    assert error["param"] == "messages[0].content[0].image_url.url"


def test_the_models_card_says_which_model_takes_images(api):
    cards = {card.id: card for card in api.models.list()}
    assert cards[MODEL].model_extra.get("capabilities") == ["vision"]
    assert "vision" not in (cards["tiny-llama"].model_extra.get("capabilities") or [])


def test_the_responses_api_takes_an_input_image(api):
    def reply(seed: int) -> openai.types.responses.Response:
        return api.responses.create(
            model=MODEL,
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": data_url(seed), "detail": "auto"},
                        {"type": "input_text", "text": "What is in this picture?"},
                    ],
                }
            ],
            max_output_tokens=8,
            temperature=0,
        )

    first, again, other = reply(11), reply(11), reply(12)
    assert first.output_text == again.output_text != other.output_text
    assert first.usage.input_tokens > 8


def test_the_anthropic_api_takes_a_base64_image_block(server):
    import anthropic

    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)

    def reply(seed: int):
        media = data_url(seed).split(",", 1)[1]
        return client.messages.create(
            model=MODEL,
            max_tokens=8,
            extra_body={"temperature": 0},  # (this SDK version sends no sampling settings of its own)
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": media}},
                        {"type": "text", "text": "What is in this picture?"},
                    ],
                }
            ],
        )

    first, again, other = reply(13), reply(13), reply(14)
    assert first.content[0].text == again.content[0].text != other.content[0].text
    assert first.usage.input_tokens > 8
