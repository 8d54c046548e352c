"""Images through the generation pipeline, with a fake vision engine: refused for a model without a projector
before it loads, decoded, put in their places of the prompt, and handed to the engine with the prompt's tokens."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from server.config import ModelSpec, PathSource
from server.errors import InvalidRequestError, OverloadedError
from server.generation.image_markers import SHOWN_IMAGE_MARKER, images_of, with_image_markers
from server.generation.images import ImageMemory
from server.generation.pipeline import GenerationPipeline
from server.generation.plan import GenerationPlan, ImageInput, Turn
from server.metrics import RequestRecord
from server.models.registry import ModelRegistry
from tests.conftest import FakeLoader
from tests.fakes import IMAGE_TOKENS, FakeScript, fake_spec


def png(color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


RED, BLUE = png((255, 0, 0)), png((0, 0, 255))


def record() -> RequestRecord:
    return RequestRecord(request_id="t", method="POST", path="/")


def vision_spec(name: str) -> ModelSpec:
    return ModelSpec(
        name=name, source=PathSource(path="/nonexistent.gguf"), mmproj=PathSource(path="/nonexistent-mmproj.gguf")
    )


@pytest.fixture
def loader() -> FakeLoader:
    loader = FakeLoader()
    loader.scripts["v"] = FakeScript(vision=True, n_ctx=4096)
    return loader


@pytest.fixture
def pipeline(loader) -> GenerationPipeline:
    return GenerationPipeline(ModelRegistry([fake_spec("text", n_ctx=4096), vision_spec("v")], loader))


def image_turn(*placed: tuple[int, str], content: str = "What is this? And this?") -> Turn:
    images = tuple(
        (offset, ImageInput(url, where=f"messages[0].content[{i}].image_url.url"))
        for i, (offset, url) in enumerate(placed)
    )
    return Turn("user", content, images=images)


def start(pipeline: GenerationPipeline, plan: GenerationPlan):
    async def go():
        generation = await pipeline.start(plan, record())
        await generation.events.aclose()
        return generation

    return asyncio.run(go())


def test_an_image_for_a_model_without_a_projector_is_a_400_naming_it_before_the_model_loads(pipeline, loader):
    plan = GenerationPlan(model="text", turns=(image_turn((0, RED)),))
    with pytest.raises(InvalidRequestError) as refused:
        start(pipeline, plan)
    assert refused.value.param == "messages[0].content[0].image_url.url"
    assert "`text`" in refused.value.message and "image" in refused.value.message
    assert "text" not in loader.engines  # refused before any load


def test_images_reach_the_engine_decoded_and_in_their_places(pipeline, loader):
    plan = GenerationPlan(model="v", turns=(image_turn((0, RED), (13, BLUE)),))
    generation = start(pipeline, plan)
    engine = loader.engines["v"]
    [request] = engine.requests
    assert [(image.width, image.height) for image in request.images] == [(6, 4), (6, 4)]
    assert request.images[0].pixels[:3] == b"\xff\x00\x00" and request.images[1].pixels[:3] == b"\x00\x00\xff"
    # each image's pseudo ids stand where its marker was, and count in the prompt's tokens
    tokens = list(request.prompt_tokens)
    assert sum(token < 0 for token in tokens) == 2 * IMAGE_TOKENS
    assert generation.prompt_tokens == len(tokens)
    text = "".join(chr(t) if t >= 0 else "#" for t in tokens)
    assert text == "<user>" + "#" * IMAGE_TOKENS + "What is this?" + "#" * IMAGE_TOKENS + " And this?\n<assistant>"


def test_the_same_image_gives_the_same_ids_and_another_image_others(pipeline, loader):
    for url in (RED, RED, BLUE):
        start(pipeline, GenerationPlan(model="v", turns=(image_turn((0, url)),)))
    first, again, other = (list(request.prompt_tokens) for request in loader.engines["v"].requests)
    assert first == again
    assert first != other


def test_the_marker_of_a_request_is_not_text_a_client_could_send(pipeline, loader):
    plan = GenerationPlan(model="v", turns=(Turn("user", SHOWN_IMAGE_MARKER + " <__media__>"),))
    start(pipeline, plan)
    assert all(token >= 0 for token in loader.engines["v"].requests[0].prompt_tokens)
    assert loader.engines["v"].requests[0].images == ()


def test_a_rendered_prompt_shows_llama_cpps_media_marker_in_an_images_place(pipeline, loader):
    plan = GenerationPlan(model="v", turns=(image_turn((0, RED), content="Look"),))
    assert asyncio.run(pipeline.render(plan, record())) == f"<user>{SHOWN_IMAGE_MARKER}Look\n<assistant>"


def test_images_are_placed_at_their_offsets_in_order():
    red, blue = ImageInput(RED, "a"), ImageInput(BLUE, "b")
    turns = (Turn("system", "S"), Turn("user", "abcd", images=((2, blue), (0, red), (2, red))))
    assert [turn.content for turn in with_image_markers(turns, "|")] == ["S", "|ab||cd"]
    assert images_of(GenerationPlan(model="v", turns=turns)) == [red, blue, red]


def memory_pipeline(loader, max_bytes: int = 10**9) -> tuple[GenerationPipeline, ImageMemory]:
    memory = ImageMemory(max_bytes)
    registry = ModelRegistry([vision_spec("v")], loader)
    return GenerationPipeline(registry, image_memory=memory), memory


def test_a_generations_images_hold_their_memory_until_it_ends(loader):
    pipeline, memory = memory_pipeline(loader)

    async def go():
        generation = await pipeline.start(GenerationPlan(model="v", turns=(image_turn((0, RED)),)), record())
        held = memory.held
        async for _ in generation.events:
            pass
        return held

    assert asyncio.run(go()) == 6 * 4 * 3  # the decoded pixels, while the generation runs
    assert memory.held == 0


def test_a_generation_closed_early_or_refused_gives_its_images_memory_back(loader):
    pipeline, memory = memory_pipeline(loader)
    start(pipeline, GenerationPlan(model="v", turns=(image_turn((0, RED)),)))  # closed before reading
    assert memory.held == 0
    with pytest.raises(InvalidRequestError):  # refused after decoding: more tokens than the model's context
        start(pipeline, GenerationPlan(model="v", turns=(image_turn((0, RED)),), max_tokens=10**6))
    assert memory.held == 0


def test_images_past_the_image_memory_are_a_429(loader):
    pipeline, memory = memory_pipeline(loader, max_bytes=1024)
    with pytest.raises(OverloadedError):
        start(pipeline, GenerationPlan(model="v", turns=(image_turn((0, RED)),)))
    assert memory.held == 0 and "v" not in loader.engines
