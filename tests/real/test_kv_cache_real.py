"""Quantized KV caches (`cache_type_k` / `cache_type_v`): llama.cpp gets them, allocates the size
server/engine/kv_cache.py computes, generates with them, and a sequence's output still ignores its company."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from server.config import ModelSpec, PathSource
from server.engine import GenerationRequest, SamplingParams
from server.engine.kv_cache import cache_cells, kv_cache_bytes, kv_shape, spec_kv_cache_bytes, type_bytes
from server.engine.llama import LlamaCppEngine
from server.errors import ModelUnavailableError
from tests.gguf_factory import write_tiny_llama

pytestmark = pytest.mark.real

# llama_kv_cache: size =    8.00 MiB (  2048 cells,   4 layers,  4/4 seqs), K (f16):    4.00 MiB, V (f16):    4.00 MiB
KV_LINE = re.compile(
    r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/\d+ seqs\), "
    r"K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB"
)
MIB = 1024 * 1024
GREEDY = SamplingParams(temperature=0, ignore_eos=True)
PROMPTS = ("Tell me a story.", "List three colors.", "Why is the sky blue?", "Name a famous painter.")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    # Heads of 32 (a quantized cache's block size must divide the head size); Q4_1 matrices, whose row-wise
    # kernels keep a sequence's logits independent of the batch (see write_tiny_llama).
    path = tmp_path_factory.mktemp("kv") / "tiny.gguf"
    return write_tiny_llama(path, n_embd=128, n_head=4, n_head_kv=2, n_layer=4, quant="Q4_1")


def tiny_spec(path: Path, cache_type_k: str, cache_type_v: str, **settings) -> ModelSpec:
    return ModelSpec(
        name="tiny",
        source=PathSource(path=path),
        n_threads=1,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        **settings,
    )


def request(engine: LlamaCppEngine, text: str, max_tokens: int = 24) -> GenerationRequest:
    async def tokens() -> list[int]:
        return await engine.tokenize(await engine.render_chat([{"role": "user", "content": text}]))

    return GenerationRequest(asyncio.run(tokens()), max_tokens, GREEDY, logprobs=0)


async def generated(engine: LlamaCppEngine, req: GenerationRequest) -> list[tuple[bytes, float]]:
    return [(t.piece, t.logprob) async for delta in engine.generate(req) for t in delta.logprobs]


@pytest.mark.parametrize(("type_k", "type_v"), [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "f16")])
def test_llama_cpp_allocates_the_computed_kv_cache_and_generates(tiny_path, caplog, type_k, type_v):
    # 2000 tokens per sequence: llama.cpp pads it to 2048, which the computed size must account for.
    spec = tiny_spec(tiny_path, type_k, type_v, n_ctx=2000, parallel=4)
    with caplog.at_level(logging.DEBUG, logger="server.engine.llama"):  # and its .native child
        engine = LlamaCppEngine.load(spec)
    try:
        found = KV_LINE.search(caplog.text)
        assert found, "llama.cpp logged no KV cache size"
        total, cells, layers, seqs, logged_k, k_mib, logged_v, v_mib = found.groups()
        assert (logged_k, logged_v, int(layers)) == (type_k, type_v, 4)
        assert int(cells) * int(seqs) == cache_cells(spec.n_ctx, spec.parallel) == 2048 * 4
        assert spec_kv_cache_bytes(spec, tiny_path) == pytest.approx(float(total) * MIB, rel=0.01)
        shape, cells_total = kv_shape(tiny_path), cache_cells(spec.n_ctx, spec.parallel)
        assert cells_total * type_bytes(shape.k_elements, type_k) == pytest.approx(float(k_mib) * MIB, rel=0.01)
        assert cells_total * type_bytes(shape.v_elements, type_v) == pytest.approx(float(v_mib) * MIB, rel=0.01)
        assert f"kv cache K {type_k} V {type_v}" in caplog.text
        out = asyncio.run(generated(engine, request(engine, "Hi", max_tokens=16)))
        assert len(out) == 16
    finally:
        engine.close()


def test_quantized_caches_save_what_their_block_layout_says(tiny_path):
    shape = kv_shape(tiny_path)
    assert (shape.k_elements, shape.v_elements) == (4 * 2 * 32, 4 * 2 * 32)  # layers x kv heads x head size
    f16 = kv_cache_bytes(shape, 1024, "f16", "f16")
    assert kv_cache_bytes(shape, 1024, "q8_0", "q8_0") * 32 == f16 * 17
    assert kv_cache_bytes(shape, 1024, "q4_0", "q4_0") * 32 == f16 * 9


@pytest.mark.parametrize("cache_type", ["q8_0", "q4_0"])
def test_greedy_output_with_a_quantized_cache_is_the_same_alone_and_beside_others(tiny_path, cache_type):
    engine = LlamaCppEngine.load(tiny_spec(tiny_path, cache_type, cache_type, n_ctx=512, parallel=4))
    try:
        target = request(engine, PROMPTS[0], max_tokens=32)
        others = [request(engine, text, max_tokens=32) for text in PROMPTS[1:]]
        alone = asyncio.run(generated(engine, target))

        async def together() -> list[list[tuple[bytes, float]]]:
            return list(await asyncio.gather(*(generated(engine, r) for r in [others[0], target, *others[1:]])))

        before = asyncio.run(engine.counters())
        beside = asyncio.run(together())[1]
        after = asyncio.run(engine.counters())
        assert len(alone) == 32
        assert [piece for piece, _ in beside] == [piece for piece, _ in alone]
        assert [logprob for _, logprob in beside] == [logprob for _, logprob in alone]
        steps = after.decode_steps - before.decode_steps
        assert (after.batch_tokens_total - before.batch_tokens_total) / steps > 2  # they really shared steps
    finally:
        engine.close()


def test_a_quantized_cache_the_head_size_cannot_hold_is_refused_with_the_reason_logged(tmp_path, caplog):
    path = write_tiny_llama(tmp_path / "heads16.gguf", quant="Q4_1")  # heads of 16: not a whole q8_0 block
    with caplog.at_level(logging.ERROR, logger="server.engine.llama"), pytest.raises(ModelUnavailableError):
        LlamaCppEngine.load(tiny_spec(path, "q8_0", "f16", n_ctx=256, parallel=1))
    assert "K cache type q8_0 with block size 32 does not divide n_embd_head_k=16" in caplog.text
