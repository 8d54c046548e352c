"""Images through llama.cpp's multimodal library, below the scheduler: a tiny MiniCPM-V projector (the
`resampler` type, version 2 as MiniCPM-Llama3-V 2.5's) paired with a tiny llama model of its width; image chunks
encoded, decoded into a sequence's KV in pieces, and generation after them; and damaged projector files refused
with a reason where llama.cpp itself would abort the process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from server.config import ModelSpec, PathSource
from server.engine import GenerationRequest, SamplingParams
from server.engine.image_feed import EmbeddingBatch, ImageFeed
from server.engine.llama import LlamaCppEngine
from server.engine.native import NativeModel
from server.engine.vision import (
    ImageChunk,
    Projector,
    RGBImage,
    TextChunk,
    load_projector,
)
from server.errors import ModelUnavailableError
from tests.gguf_factory import write_tiny_llama
from tests.gguf_projector import write_tiny_minicpmv_projector, write_tiny_mlp_projector, write_vision_pair

pytestmark = pytest.mark.real

N_BATCH = 32
N_SEQ = 3
QUERIES = 8  # the tiny projector's image tokens per slice


@dataclass
class Loaded:
    native: NativeModel
    projector: Projector
    embeddings: EmbeddingBatch
    tokens: llama_cpp.llama_batch
    model_path: Path
    projector_path: Path


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> Iterator[Loaded]:
    directory = tmp_path_factory.mktemp("vision")
    model_path, projector_path = write_vision_pair(directory, kind="minicpmv")
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 1024, N_BATCH, N_BATCH, N_SEQ
    params.n_threads = params.n_threads_batch = 1
    ctx = llama_cpp.llama_init_from_model(model, params)
    native = NativeModel(model, ctx, llama_cpp.llama_model_get_vocab(model))
    projector = load_projector(projector_path, model, model_name="tiny-vision")
    embeddings = EmbeddingBatch(ctx, projector.n_embd, N_BATCH)
    tokens = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
    yield Loaded(native, projector, embeddings, tokens, model_path, projector_path)
    llama_cpp.llama_batch_free(tokens)
    embeddings.free()
    projector.free()
    native.free()


def image(seed: int, width: int = 28, height: int = 28) -> RGBImage:
    pixels = np.random.default_rng(seed).integers(0, 256, width * height * 3, dtype=np.uint8)
    return RGBImage(width, height, pixels.tobytes())


def decode_tokens(loaded: Loaded, tokens: list[int], seq_id: int, pos: int, *, logits_last: bool) -> None:
    batch = loaded.tokens
    for start in range(0, len(tokens), N_BATCH):
        piece = tokens[start : start + N_BATCH]
        for i, token in enumerate(piece):
            batch.token[i] = token
            batch.pos[i] = pos + start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits_last and start + i == len(tokens) - 1
        batch.n_tokens = len(piece)
        assert llama_cpp.llama_decode(loaded.native.ctx, batch) == 0


def last_logits_argmax(loaded: Loaded, index: int) -> int:
    pointer = llama_cpp.llama_get_logits_ith(loaded.native.ctx, index)
    return int(np.ctypeslib.as_array(pointer, shape=(loaded.native.n_vocab,)).argmax())


def greedy(loaded: Loaded, parts: list[str | RGBImage], *, seq_id: int = 0, piece: int = N_BATCH, n: int = 8):
    """Prefill a prompt of text and images into a fresh sequence (image rows `piece` at a time), then generate
    `n` tokens greedily: (tokens, prompt positions)."""
    memory = llama_cpp.llama_get_memory(loaded.native.ctx)
    llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
    prompt = loaded.projector.tokenize(parts)
    try:
        pos = 0
        assert isinstance(prompt.chunks[-1], TextChunk)
        for i, chunk in enumerate(prompt.chunks):
            if isinstance(chunk, TextChunk):
                decode_tokens(loaded, list(chunk.tokens), seq_id, pos, logits_last=i == len(prompt.chunks) - 1)
            else:
                feed = ImageFeed(loaded.projector.encode(chunk), seq_id, pos)
                while feed.remaining:
                    assert feed.step(loaded.embeddings, piece) > 0
            pos += chunk.n_tokens
        assert pos == prompt.n_tokens
        out = []
        index = len(prompt.chunks[-1].tokens) - 1
        index = index % N_BATCH
        for _ in range(n):
            token = last_logits_argmax(loaded, index)
            out.append(token)
            decode_tokens(loaded, [token], seq_id, pos, logits_last=True)
            pos, index = pos + 1, 0
        return out, prompt.n_tokens
    finally:
        prompt.close()


def test_the_tiny_minicpmv_projector_loads_as_llama3_v_2_5s_kind(loaded):
    info = loaded.projector.info
    assert (info.projector_type, info.minicpmv_version, info.query_num) == ("resampler", 2, QUERIES)
    assert loaded.projector.n_embd == 128
    assert loaded.projector.causal  # MiniCPM-V's image rows are decoded with the usual causal mask


def test_a_prompt_becomes_text_and_image_chunks_framed_as_minicpm_v_2_5_frames_them(loaded):
    native = loaded.native
    prompt = loaded.projector.tokenize(["Look: ", image(1), " What is it?"])
    try:
        text_before, picture, text_after = prompt.chunks
        assert isinstance(picture, ImageChunk) and picture.n_tokens == QUERIES and picture.image_index == 0
        assert text_before.tokens == tuple(native.tokenize("Look: <image>", add_special=False))
        assert text_after.tokens == tuple(native.tokenize("</image> What is it?", add_special=False))
        assert prompt.n_tokens == len(text_before.tokens) + QUERIES + len(text_after.tokens)
        assert picture.key == f"{image(1).digest}:0"
    finally:
        prompt.close()


def test_the_same_image_gives_the_same_embeddings_and_another_image_others(loaded):
    prompts = [loaded.projector.tokenize([image(seed)]) for seed in (1, 1, 2)]
    try:
        rows = [loaded.projector.encode(next(c for c in p.chunks if isinstance(c, ImageChunk))) for p in prompts]
        assert rows[0].shape == (QUERIES, 128) and np.isfinite(rows[0]).all()
        assert np.array_equal(rows[0], rows[1])
        assert not np.allclose(rows[0], rows[2])
    finally:
        for prompt in prompts:
            prompt.close()


def test_greedy_output_follows_the_image(loaded):
    first, n_prompt = greedy(loaded, ["Describe ", image(1), " now"])
    again, _ = greedy(loaded, ["Describe ", image(1), " now"], seq_id=1)
    other, _ = greedy(loaded, ["Describe ", image(2), " now"], seq_id=2)
    assert first == again
    assert first != other
    assert n_prompt > QUERIES


def test_decoding_an_image_in_small_pieces_beside_another_sequence_changes_nothing(loaded):
    """The scheduler interleaves image pieces with other sequences' steps: pieces of 3 rows, with a token step
    of another sequence between them, give the same greedy output as the image in one piece."""
    whole, _ = greedy(loaded, ["Describe ", image(3), " now"])
    memory = llama_cpp.llama_get_memory(loaded.native.ctx)
    llama_cpp.llama_memory_seq_rm(memory, 1, -1, -1)
    other_tokens = loaded.native.tokenize("another request", add_special=False)
    prompt = loaded.projector.tokenize(["Describe ", image(3), " now"])
    try:
        text_before, picture, text_after = prompt.chunks
        feed = ImageFeed(loaded.projector.encode(picture), 0, len(text_before.tokens))
        pos_other = 0
        llama_cpp.llama_memory_seq_rm(memory, 0, -1, -1)
        decode_tokens(loaded, list(text_before.tokens), 0, 0, logits_last=False)
        while feed.remaining:
            feed.step(loaded.embeddings, 3)
            decode_tokens(loaded, [other_tokens[pos_other % len(other_tokens)]], 1, pos_other, logits_last=True)
            pos_other += 1
        pos = len(text_before.tokens) + picture.n_tokens
        decode_tokens(loaded, list(text_after.tokens), 0, pos, logits_last=True)
        pos += len(text_after.tokens)
        out, index = [], len(text_after.tokens) - 1
        for _ in range(len(whole)):
            token = last_logits_argmax(loaded, index)
            out.append(token)
            decode_tokens(loaded, [token], 0, pos, logits_last=True)
            pos, index = pos + 1, 0
        assert out == whole
    finally:
        prompt.close()


def test_image_rows_stand_in_the_prefix_cache_as_ids_of_that_image(loaded):
    same = [loaded.projector.tokenize(["a ", image(1), " b"]) for _ in range(2)]
    other = loaded.projector.tokenize(["a ", image(2), " b"])
    try:
        cached = [p.cache_tokens() for p in (*same, other)]
        assert cached[0] == cached[1]
        head = len(same[0].chunks[0].tokens)
        assert cached[0][:head] == cached[2][:head]
        assert cached[0][head] != cached[2][head]  # different images diverge at their first row
        assert all(t < 0 for t in cached[0][head : head + QUERIES])
        assert len(cached[0]) == same[0].n_tokens
    finally:
        for prompt in (*same, other):
            prompt.close()


def test_a_large_image_is_an_overview_and_slices_each_keyed_apart(loaded):
    prompt = loaded.projector.tokenize(["x", image(5, 70, 50), "y", image(5, 70, 50)])
    try:
        pictures = [c for c in prompt.chunks if isinstance(c, ImageChunk)]
        per_image = len(pictures) // 2
        assert per_image > 1  # MiniCPM-V 2.5 slices a picture larger than its encoder's size
        assert [p.image_index for p in pictures] == [0] * per_image + [1] * per_image
        keys = [p.key for p in pictures]
        assert len(set(keys[:per_image])) == per_image  # overview and slices differ
        assert keys[:per_image] == keys[per_image:]  # the same picture twice keys the same
        assert prompt.n_images == 2
        slice_text = loaded.native.tokenize("<slice>", add_special=False)
        assert any(set(slice_text) <= set(c.tokens) for c in prompt.chunks if isinstance(c, TextChunk))
    finally:
        prompt.close()


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1, 3000), (3000, 1), (29, 28), (13, 700), (2000, 2000)])
def test_odd_image_sizes_tokenize_and_encode(loaded, width, height):
    """Sizes a client may send: a sliver, a pixel, one just over the encoder's size, a large square."""
    prompt = loaded.projector.tokenize([image(7, width, height)])
    try:
        assert prompt.n_tokens >= QUERIES
        for chunk in prompt.chunks:
            if isinstance(chunk, ImageChunk):
                rows = loaded.projector.encode(chunk)
                assert rows.shape == (chunk.n_tokens, 128) and np.isfinite(rows).all()
    finally:
        prompt.close()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        ({"omit": ("resampler.attn.q.weight",)}, "no tensor resampler.attn.q.weight"),
        ({"projector_type": "gemma3"}, "projector type 'gemma3' is not one this server loads"),
        ({"keys": {"clip.vision.image_size": ("INT32", 28)}}, "clip.vision.image_size is a int32"),
        ({"shapes": {"resampler.kv.weight": (128, 16)}}, "resampler.kv.weight is [16, 128]"),
        ({"n_embd_text": 256}, "width 256 but the model's width is 128"),
    ],
)
def test_a_damaged_projector_is_a_load_error_with_its_reason(loaded, tmp_path, damage, says):
    path = write_tiny_minicpmv_projector(tmp_path / "bad.gguf", **damage)
    with pytest.raises(ModelUnavailableError) as caught:
        load_projector(path, loaded.native.model, model_name="tiny-vision")
    assert "The projector of model `tiny-vision` cannot be loaded" in caught.value.message
    assert says in caught.value.message


def test_a_truncated_projector_is_a_load_error(loaded, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(loaded.projector_path.read_bytes()[:100_000])
    with pytest.raises(ModelUnavailableError, match="truncated"):
        load_projector(path, loaded.native.model, model_name="tiny-vision")


ABORT_SCRIPT = """
import sys
import llama_cpp
from llama_cpp import mtmd_cpp
model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), llama_cpp.llama_model_default_params())
params = mtmd_cpp.mtmd_context_params_default()
params.use_gpu = False
ctx = mtmd_cpp.mtmd_init_from_file(sys.argv[2].encode(), model, params)
print("loaded" if ctx else "refused")
"""


@pytest.mark.parametrize(
    "damage",
    [
        {"keys": {"clip.vision.patch_size": ("INT32", 14)}},
        {"shapes": {"resampler.kv.weight": (128, 16)}},
    ],
)
def test_without_the_check_llama_cpp_aborts_on_these_files(loaded, tmp_path, damage):
    """Why the check exists: handed straight to mtmd_init_from_file, these kill the process that loads them."""
    path = write_tiny_minicpmv_projector(tmp_path / "bad.gguf", **damage)
    done = subprocess.run(
        [sys.executable, "-c", ABORT_SCRIPT, str(loaded.model_path), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -signal.SIGABRT, (done.returncode, done.stdout[-500:], done.stderr[-2000:])


def test_a_projector_the_check_passes_but_llama_cpp_refuses_is_still_an_error(loaded, tmp_path, monkeypatch):
    """The last line of defence: a null context from mtmd_init_from_file is a load error, not a crash."""
    from llama_cpp import mtmd_cpp

    monkeypatch.setattr(mtmd_cpp, "mtmd_init_from_file", lambda *args: None)
    with pytest.raises(ModelUnavailableError, match=r"failed to load in llama\.cpp"):
        load_projector(loaded.projector_path, loaded.native.model, model_name="tiny-vision")


def test_another_sequence_keeps_decoding_while_an_image_is_encoded(loaded):
    """The encoder touches no llama context: it runs on another thread while the scheduler's thread decodes,
    and both give what they give alone."""
    prompt = loaded.projector.tokenize([image(11, 70, 50)])
    try:
        chunks = [c for c in prompt.chunks if isinstance(c, ImageChunk)]
        alone = [loaded.projector.encode(chunk) for chunk in chunks]
        encoded: list[np.ndarray] = []
        thread = threading.Thread(target=lambda: encoded.extend(loaded.projector.encode(c) for c in chunks))
        memory = llama_cpp.llama_get_memory(loaded.native.ctx)
        llama_cpp.llama_memory_seq_rm(memory, 2, -1, -1)
        steps = 0
        thread.start()
        while thread.is_alive() or steps < 4:
            decode_tokens(loaded, [65 + steps % 20], 2, steps, logits_last=True)
            steps += 1
        thread.join()
        assert all(np.array_equal(a, b) for a, b in zip(alone, encoded, strict=True))
    finally:
        prompt.close()


def test_an_mlp_projector_works_the_same_way(tmp_path):
    """LLaVA-1.5's kind (`mlp`): one image chunk, no framing tokens."""
    model_path, projector_path = write_vision_pair(tmp_path, kind="mlp")
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), llama_cpp.llama_model_default_params())
    projector = load_projector(projector_path, model, model_name="tiny-llava")
    try:
        prompts = [projector.tokenize(["see ", image(seed), " ok"]) for seed in (1, 1, 2)]
        pictures = [p.chunks[1] for p in prompts]
        assert all(isinstance(p, ImageChunk) and p.n_tokens == 4 for p in pictures)  # 2 x 2 patches of 14 px
        rows = [projector.encode(p) for p in pictures]
        assert rows[0].shape == (4, 64)
        assert np.array_equal(rows[0], rows[1]) and not np.allclose(rows[0], rows[2])
        for prompt in prompts:
            prompt.close()
    finally:
        projector.free()
        llama_cpp.llama_model_free(model)


def test_llama3_v_2_5s_metadata_without_a_query_count_loads_with_96_queries(loaded, tmp_path):
    """The 2024 conversion of MiniCPM-Llama3-V 2.5's projector names version 2 and no query count: llama.cpp
    takes 96 image tokens per slice, as the check says."""
    path = write_tiny_minicpmv_projector(tmp_path / "v25.gguf", query_num=None)
    projector = load_projector(path, loaded.native.model, model_name="tiny-vision")
    try:
        assert (projector.info.minicpmv_version, projector.info.query_num) == (2, 96)
        prompt = projector.tokenize([image(1)])
        try:
            [picture] = [c for c in prompt.chunks if isinstance(c, ImageChunk)]
            assert picture.n_tokens == 96
            assert projector.encode(picture).shape == (96, 128)
        finally:
            prompt.close()
    finally:
        projector.free()


def test_marker_text_from_a_client_stays_text(loaded):
    """Images are parts of their own: llama.cpp's media marker (or a NUL) in the text is tokenized as text."""
    prompt = loaded.projector.tokenize(["a <__media__> b\x00c <image>"], parse_special=False)
    try:
        [only] = prompt.chunks
        assert isinstance(only, TextChunk) and prompt.n_images == 0
        assert only.tokens == tuple(
            loaded.native.tokenize("a <__media__> b\x00c <image>", add_special=False, parse_special=False)
        )
    finally:
        prompt.close()


@pytest.mark.parametrize(("version", "queries"), [(3, 64), (5, 64), (6, 64), (100045, 64)])
def test_later_minicpm_v_versions_load_and_encode(loaded, tmp_path, version, queries):
    """The check lets through every version llama.cpp knows (2.6, 4.0, 4.5, o-4.5): each loads and encodes."""
    path = write_tiny_minicpmv_projector(tmp_path / "v.gguf", minicpmv_version=version, query_num=None)
    projector = load_projector(path, loaded.native.model, model_name="tiny-vision")
    prompt = projector.tokenize(["a", image(4, 70, 50), "b"])
    try:
        pictures = [c for c in prompt.chunks if isinstance(c, ImageChunk)]
        assert len(pictures) > 1 and all(p.n_tokens == queries for p in pictures)
        assert all(projector.encode(p).shape == (queries, 128) for p in pictures)
    finally:
        prompt.close()
        projector.free()


def _engine(model_path: Path, projector_path: Path, name: str):
    spec = ModelSpec(
        name=name,
        source=PathSource(path=str(model_path)),
        mmproj=PathSource(path=str(projector_path)),
        n_ctx=512,
        parallel=2,
        n_threads=1,
        n_batch=32,
    )
    return LlamaCppEngine.load(spec)


def test_the_scheduler_serves_an_mlp_projectors_images_too(tmp_path):
    """LLaVA's kind through the engine as served (scheduler, encoder thread, image feed): the image decides the
    greedy output, alone and beside another request."""

    engine = _engine(*write_vision_pair(tmp_path, kind="mlp"), "tiny-llava")
    marker = "<\ue000image t\ue001>"

    async def reply(seed: int) -> str:
        picture = image(seed, 40, 30)
        messages = [{"role": "user", "content": f"Describe {marker} now"}]
        tokens = await engine.tokenize_chat(messages, None, None, (picture,), marker)
        request = GenerationRequest(
            prompt_tokens=tokens, max_tokens=8, sampling=SamplingParams(temperature=0), images=(picture,)
        )
        return "".join([delta.text async for delta in engine.generate(request)])

    async def scenario() -> tuple[str, str, list[str]]:
        return await reply(1), await reply(2), list(await asyncio.gather(reply(1), reply(2)))

    try:
        first, other, together = asyncio.run(scenario())
        assert first != other
        assert together == [first, other]
        counters = asyncio.run(engine.counters())
        assert counters.image_chunks_encoded == 2  # one chunk an image; the concurrent ones reuse them
    finally:
        engine.close()


def test_a_damaged_projector_named_by_a_model_entry_is_a_load_error_not_a_crash(tmp_path):
    model_path, _ = write_vision_pair(tmp_path, kind="minicpmv")
    damaged = write_tiny_minicpmv_projector(tmp_path / "damaged.gguf", omit=("resampler.attn.q.weight",))
    with pytest.raises(ModelUnavailableError, match="projector of model `tiny-damaged`"):
        _engine(model_path, damaged, "tiny-damaged")


def test_the_scheduler_sleeps_while_an_image_is_encoded_even_with_requests_queued(tmp_path):
    """Two choices of one image prompt: the second waits for the first's prefill, which waits for the encode.
    The scheduler must sleep until the encode ends, not spin through admission meanwhile."""

    engine = _engine(*write_vision_pair(tmp_path, kind="minicpmv"), "tiny-slow-encode")
    projector = engine._projector
    real_encode = projector.encode

    def slow_encode(chunk):
        threading.Event().wait(0.3)  # a vision tower that takes its time (the work itself, not a wait for a state)
        return real_encode(chunk)

    projector.encode = slow_encode
    scheduler = engine._scheduler
    admits = 0
    real_admit = scheduler._admit

    def counted_admit():
        nonlocal admits
        admits += 1
        real_admit()

    scheduler._admit = counted_admit
    marker = "<\ue000image t\ue001>"

    async def choices() -> list[str]:
        picture = image(5, 40, 30)
        messages = [{"role": "user", "content": f"Describe {marker} now"}]
        tokens = await engine.tokenize_chat(messages, None, None, (picture,), marker)
        request = GenerationRequest(
            prompt_tokens=tokens, max_tokens=4, sampling=SamplingParams(temperature=0), images=(picture,)
        )

        async def one() -> str:
            return "".join([delta.text async for delta in engine.generate(request)])

        return list(await asyncio.gather(one(), one()))

    try:
        first, second = asyncio.run(choices())
        assert first == second
        steps = asyncio.run(engine.counters()).decode_steps
        assert admits < 4 * steps + 40, (admits, steps)  # spinning made thousands of turns during the encode
    finally:
        engine.close()


def test_a_prompt_that_begins_with_an_image_keeps_the_models_bos(tmp_path):

    model_path = write_tiny_llama(tmp_path / "bos-llama.gguf", n_embd=64, add_bos=True)
    projector_path = write_tiny_mlp_projector(tmp_path / "mlp.gguf")
    spec = ModelSpec(
        name="tiny-bare-template",
        source=PathSource(path=str(model_path)),
        mmproj=PathSource(path=str(projector_path)),
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",  # nothing before the first content
        n_ctx=256,
        parallel=1,
        n_threads=1,
    )
    engine = LlamaCppEngine.load(spec)
    marker = "<\ue000image t\ue001>"
    try:
        bos = asyncio.run(engine.tokenize("", add_special=True))
        assert bos, "the tiny llama adds a BOS (else this test proves nothing)"
        messages = [{"role": "user", "content": f"{marker} what is it"}]
        tokens = asyncio.run(engine.tokenize_chat(messages, None, None, (image(1, 40, 30),), marker))
        assert tokens[: len(bos)] == bos and tokens[len(bos)] < 0  # BOS, then the image's rows
        assert asyncio.run(engine.tokenize_chat([{"role": "user", "content": "what is it"}]))[: len(bos)] == bos
    finally:
        engine.close()
