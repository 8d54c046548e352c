"""The prompt cache that survives restarts, with a real llama.cpp engine: a long prompt's KV is saved when the
engine closes and restored when it loads, the next request with the same prefix reuses it and generates exactly
what a cold engine generates; another key restores nothing; a bad file is removed; the cap evicts the oldest."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.config import ModelSpec, PathSource
from server.engine import EngineCounters, GenerationRequest, SamplingParams
from server.engine.llama import LlamaCppEngine
from server.engine.prefix import common_prefix
from server.engine.process import ProcessEngine
from server.engine.prompt_store import SUFFIX, PromptCacheConfig, read_entry, write_entry
from tests.gguf_factory import write_tiny_llama

pytestmark = pytest.mark.real

GREEDY = SamplingParams(temperature=0, ignore_eos=True)
SYSTEM = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly and politely." for i in range(12))
OTHER_SYSTEM = "You are a poet. " + " ".join(f"Verse {i}: write about the sea and the sky." for i in range(12))
MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    # Q4_1: llama.cpp's row-wise kernels make a token's KV and logits independent of what shares its batch.
    return write_tiny_llama(tmp_path_factory.mktemp("prompt-cache") / "tiny.gguf", quant="Q4_1")


def spec(path: Path, **settings) -> ModelSpec:
    values = {"n_ctx": 1024, "parallel": 2, "n_threads": 1, **settings}
    return ModelSpec(name="tiny", source=PathSource(path=path), **values)


def cache_config(tmp_path: Path, max_bytes: int = 256 * MIB) -> PromptCacheConfig:
    return PromptCacheConfig(directory=tmp_path / "prompt-cache", max_bytes=max_bytes)


def saved(config: PromptCacheConfig) -> list[Path]:
    return sorted(config.directory.glob(f"*{SUFFIX}")) if config.directory.is_dir() else []


def chat(engine: LlamaCppEngine, system: str, question: str, max_tokens: int = 12) -> GenerationRequest:
    async def tokens() -> list[int]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return await engine.tokenize(await engine.render_chat(messages))

    return GenerationRequest(asyncio.run(tokens()), max_tokens, GREEDY, logprobs=0)


def run(engine: LlamaCppEngine, request: GenerationRequest) -> tuple[list[tuple[bytes, float]], EngineCounters]:
    """The request's tokens with their log-probabilities, and what the engine's counters moved by."""

    async def go() -> tuple[list[tuple[bytes, float]], EngineCounters]:
        before = await engine.counters()
        out = [(t.piece, t.logprob) async for delta in engine.generate(request) for t in delta.logprobs]
        after = await engine.counters()
        moved = EngineCounters(
            prompt_tokens_evaluated=after.prompt_tokens_evaluated - before.prompt_tokens_evaluated,
            prefix_cache_hit_tokens=after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens,
        )
        return out, moved

    return asyncio.run(go())


def first_run(path: Path, config: PromptCacheConfig, system: str = SYSTEM, **settings) -> GenerationRequest:
    """A fresh engine answers one long prompt and closes, saving its prefix."""
    engine = LlamaCppEngine.load(spec(path, **settings), config)
    try:
        request = chat(engine, system, "What is two plus two?")
        assert len(request.prompt_tokens) > config.min_tokens
        run(engine, request)
    finally:
        engine.close()
    return request


@pytest.mark.parametrize("flash_attn", [True, False])
def test_a_restored_prefix_is_reused_and_generates_what_the_engine_before_the_restart_would(
    tiny_path, tmp_path, flash_attn
):
    config = cache_config(tmp_path)
    first = first_run(tiny_path, config, flash_attn=flash_attn)
    [path] = saved(config)
    entry = read_entry(path, path.name.split("-")[0], 1024, 1 << 30)
    # One sequence was used: it is saved whole, the prompt and the reply's tokens whose KV it holds.
    assert entry.tokens[: len(first.prompt_tokens)] == first.prompt_tokens
    unused_since = time.time() - config.max_age_s / 2  # long unused, within the age limit: a restore marks it used
    os.utime(path, (unused_since, unused_since))

    engine = LlamaCppEngine.load(spec(tiny_path, flash_attn=flash_attn), config)
    try:
        assert path.stat().st_mtime > unused_since
        second = chat(engine, SYSTEM, "Name a color.")
        shared = common_prefix(first.prompt_tokens, second.prompt_tokens)
        assert shared > config.min_tokens
        restored, moved = run(engine, second)
    finally:
        engine.close()
    assert moved.prefix_cache_hit_tokens == shared
    assert moved.prompt_tokens_evaluated == len(second.prompt_tokens) - shared
    assert len(restored) == second.max_tokens

    # The same two requests in one engine, never restarted (no prompt cache): the prefix reused from memory.
    engine = LlamaCppEngine.load(spec(tiny_path, flash_attn=flash_attn))
    try:
        run(engine, first)
        warm, warm_moved = run(engine, second)
        cold_engine = LlamaCppEngine.load(spec(tiny_path, flash_attn=flash_attn))
        try:
            cold, cold_moved = run(cold_engine, second)
        finally:
            cold_engine.close()
    finally:
        engine.close()
    assert (warm_moved.prefix_cache_hit_tokens, cold_moved.prefix_cache_hit_tokens) == (shared, 0)
    assert restored == warm  # the same tokens, with bitwise the same log-probabilities
    if not flash_attn:
        # Without flash attention a reused prefix changes nothing at all: a cold engine generates the same.
        # (llama.cpp's CPU flash attention sums a long prompt's attention in another order than a short
        # suffix's, so with it any reused prefix, restored or in memory, moves log-probabilities a little.)
        assert restored == cold


def test_two_requests_sharing_a_system_prompt_save_only_what_they_share(tiny_path, tmp_path):
    config = cache_config(tmp_path)
    engine = LlamaCppEngine.load(spec(tiny_path), config)
    try:
        requests = [chat(engine, SYSTEM, "What is two plus two?"), chat(engine, SYSTEM, "Name a color.")]

        async def together() -> None:
            async def one(request: GenerationRequest) -> None:
                async for _ in engine.generate(request):
                    pass

            await asyncio.gather(*(one(r) for r in requests))

        asyncio.run(together())
    finally:
        engine.close()
    [path] = saved(config)
    shared = common_prefix(requests[0].prompt_tokens, requests[1].prompt_tokens)
    assert read_entry(path, path.name.split("-")[0], 1024, 1 << 30).tokens == requests[0].prompt_tokens[:shared]


@pytest.mark.parametrize(
    ("setting", "value"), [("n_ctx", 768), ("n_batch", 256), ("parallel", 3), ("flash_attn", False)]
)
def test_other_settings_restore_nothing_and_leave_the_file(tiny_path, tmp_path, setting, value):
    config = cache_config(tmp_path)
    first_run(tiny_path, config)
    [path] = saved(config)
    engine = LlamaCppEngine.load(spec(tiny_path, **{setting: value}), config)
    try:
        _, moved = run(engine, chat(engine, SYSTEM, "Name a color."))
    finally:
        engine.close()
    assert moved.prefix_cache_hit_tokens == 0
    assert path.exists()  # another key's file: kept for the settings it belongs to
    assert len(saved(config)) == 2  # and this key's own prefix saved beside it


def test_a_model_with_the_prompt_cache_off_neither_saves_nor_restores(tiny_path, tmp_path):
    config = cache_config(tmp_path)
    first_run(tiny_path, config, prompt_cache=False)
    assert saved(config) == []
    first_run(tiny_path, config)
    engine = LlamaCppEngine.load(spec(tiny_path, prompt_cache=False), config)
    try:
        _, moved = run(engine, chat(engine, SYSTEM, "Name a color."))
    finally:
        engine.close()
    assert moved.prefix_cache_hit_tokens == 0


def load_and_ask(model: ModelSpec, config: PromptCacheConfig, caplog) -> tuple[list, EngineCounters]:
    """A fresh engine (restoring what it can, its warnings captured) answers one question and closes."""
    with caplog.at_level("WARNING", logger="server.engine"):
        engine = LlamaCppEngine.load(model, config)
        try:
            return run(engine, chat(engine, SYSTEM, "Name a color."))
        finally:
            engine.close()


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "refused by llama.cpp"])
def test_a_bad_file_is_removed_and_the_model_loads_and_serves(tiny_path, tmp_path, damage, caplog):
    config = cache_config(tmp_path)
    first_run(tiny_path, config)
    [path] = saved(config)
    data = bytearray(path.read_bytes())
    if damage == "flipped byte":
        data[-1000] ^= 0x40
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # well formed and checksummed, but not a llama.cpp sequence state
        key = path.name.split("-")[0]
        tokens = read_entry(path, key, 1024, 1 << 30).tokens
        path.unlink()
        path = write_entry(config.directory, key, tokens, bytes(4096))
    out, moved = load_and_ask(spec(tiny_path), config, caplog)
    assert f"prompt cache: removing {path.name}" in caplog.text
    assert moved.prefix_cache_hit_tokens == 0 and len(out) == 12
    assert [p.name for p in saved(config)] != [path.name] and len(saved(config)) == 1  # saved anew at close


ABORT_WHILE_RESTORING = """
import json, os, sys
from pathlib import Path
from server.config import ModelSpec
from server.engine import prompt_cache
from server.engine.llama import LlamaCppEngine
from server.engine.prompt_store import PromptCacheConfig
prompt_cache._set_sequence = lambda *args: os.abort()  # what llama.cpp's GGML_ASSERT does to the process
spec = ModelSpec.model_validate_json(sys.argv[1])
LlamaCppEngine.load(spec, PromptCacheConfig(directory=Path(sys.argv[2]), max_bytes=int(sys.argv[3])))
"""


def test_a_file_that_ended_the_worker_while_restoring_is_removed_at_the_next_load(tiny_path, tmp_path, caplog):
    config = cache_config(tmp_path)
    first_run(tiny_path, config)
    [path] = saved(config)
    model = spec(tiny_path)
    argv = [model.model_dump_json(), str(config.directory), str(config.max_bytes)]
    aborted = subprocess.run([sys.executable, "-c", ABORT_WHILE_RESTORING, *argv], cwd=REPO, capture_output=True)
    assert aborted.returncode == -signal.SIGABRT, aborted.stderr.decode()[-2000:]
    assert path.exists()  # nothing could remove it: the process ended inside the restore
    out, moved = load_and_ask(model, config, caplog)
    assert f"prompt cache: removing {path.name}: the last worker that restored it ended" in caplog.text
    assert moved.prefix_cache_hit_tokens == 0 and len(out) == 12
    assert not any(p.name.startswith(".restoring-") for p in config.directory.iterdir())


def test_a_file_unused_for_longer_than_the_maximum_age_is_deleted_at_load_and_not_restored(tiny_path, tmp_path):
    config = cache_config(tmp_path)
    first_run(tiny_path, config)
    [path] = saved(config)
    expired = time.time() - config.max_age_s - 60
    os.utime(path, (expired, expired))
    engine = LlamaCppEngine.load(spec(tiny_path), config)
    try:
        assert not path.exists()
        _, moved = run(engine, chat(engine, SYSTEM, "Name a color."))
    finally:
        engine.close()
    assert moved.prefix_cache_hit_tokens == 0


def test_the_cap_evicts_the_least_recently_used_file(tiny_path, tmp_path):
    config = cache_config(tmp_path)
    first_run(tiny_path, config)
    [oldest] = saved(config)
    size = oldest.stat().st_size
    os.utime(oldest, (1, 1))
    capped = cache_config(tmp_path, max_bytes=size + size // 2)  # room for one file of about this size
    first_run(tiny_path, capped, system=OTHER_SYSTEM)
    [newest] = saved(capped)
    assert newest != oldest and not oldest.exists()
    first_run(tiny_path, cache_config(tmp_path, max_bytes=size // 2))  # no file fits: none is written
    assert saved(capped) == [newest]


def test_a_worker_process_saves_at_shutdown_and_restores_at_load(tiny_path, tmp_path):
    config = cache_config(tmp_path)
    model = spec(tiny_path)

    async def ask(engine: ProcessEngine, question: str) -> tuple[list[int], int]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        tokens = await engine.tokenize(await engine.render_chat(messages))
        before = (await engine.counters()).prefix_cache_hit_tokens
        async for _ in engine.generate(GenerationRequest(tokens, 4, GREEDY)):
            pass
        return tokens, (await engine.counters()).prefix_cache_hit_tokens - before

    engine = ProcessEngine.load(model, prompt_cache=config)
    try:
        first, _ = asyncio.run(ask(engine, "What is two plus two?"))
    finally:
        engine.close()
    assert len(saved(config)) == 1
    engine = ProcessEngine.load(model, prompt_cache=config)
    try:
        second, hits = asyncio.run(ask(engine, "Name a color."))
    finally:
        engine.close()
    assert hits == common_prefix(first, second) > config.min_tokens
