"""How long a running stream stalls while an image request is admitted beside it, and what an image costs.

    .venv/bin/python -m bench.vision_stall [--rounds 5] [--size tiny|mid]

One engine (the scheduler and a worker thread pool as served, in this process) of a generated model pair: a
llama with random weights and a MiniCPM-V projector (`resampler`, version 2) of its width. `tiny` is the test
suite's pair (a 1-layer, 32-wide vision tower on 28-pixel images); `mid` a 12-layer, 256-wide tower on
224-pixel images beside an 8-layer, 512-wide llama, so that an encode takes long enough to see. Per round:
- stream A (greedy, 160 tokens, a text prompt) runs alone: its longest gap between two deltas over the window
  of tokens 40 to 100 (the baseline);
- A runs again, and at its 40th token request B is admitted: a prompt of text and a new image (not cached);
  A's longest gap between its 40th token and B's first token;
- the same with B a text-only prompt of the same number of positions (the stall any prefill of that length
  causes, image or not);
- B's time to first token, and the projector's own encode time for B's image (all its chunks, timed apart).
Medians of the rounds are printed as a table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from server.config import ModelSpec, PathSource
from server.engine import GenerationRequest, SamplingParams
from server.engine.base import RGBImage
from server.engine.llama import LlamaCppEngine
from server.engine.vision import ImageChunk
from tests.gguf_factory import write_tiny_llama
from tests.gguf_projector import MINICPMV_TOKENS, RESAMPLER_HEAD, write_tiny_minicpmv_projector

logger = logging.getLogger("bench.vision_stall")
MARKER = "<\ue000image bench\ue001>"
GREEDY = SamplingParams(temperature=0, ignore_eos=True)
SIZES = {
    "tiny": {"llama": {"n_embd": RESAMPLER_HEAD}, "projector": {}, "image": 28},
    "mid": {
        "llama": {"n_embd": 4 * RESAMPLER_HEAD, "n_layer": 8, "n_head": 8, "n_head_kv": 4, "n_ff": 1024},
        "projector": {"n_embd": 256, "n_head": 4, "n_ff": 1024, "n_layer": 12, "image_size": 224},
        "image": 224,
    },
}


def write_pair(directory: Path, size: str) -> tuple[Path, Path]:
    shape = SIZES[size]
    llama = {"n_head": 4, "n_head_kv": 2, "n_ff": 256, **shape["llama"]}
    model = write_tiny_llama(directory / f"{size}-llama.gguf", user_defined=MINICPMV_TOKENS, **llama)
    projector = write_tiny_minicpmv_projector(
        directory / f"{size}-mmproj.gguf", n_embd_text=shape["llama"]["n_embd"], **shape["projector"]
    )
    return model, projector


def picture(seed: int, side: int) -> RGBImage:
    return RGBImage(side, side, np.random.default_rng(seed).integers(0, 256, side * side * 3, np.uint8).tobytes())


async def tokens_of(engine: LlamaCppEngine, text: str, images: tuple[RGBImage, ...] = ()) -> list[int]:
    messages = [{"role": "user", "content": text}]
    return await engine.tokenize_chat(messages, None, None, images, MARKER if images else "")


async def stream_times(engine: LlamaCppEngine, request: GenerationRequest, marks: dict[int, asyncio.Event]):
    """The monotonic time of each delta, by completion token count; `marks[k]` is set at the k-th token."""
    times: dict[int, float] = {}
    async for delta in engine.generate(request):
        now = time.monotonic()
        times[delta.completion_tokens] = now
        for count, event in marks.items():
            if delta.completion_tokens >= count:
                event.set()
    return times


def at(times: dict[int, float], count: int) -> float:
    """When the stream had `count` tokens (a delta may carry several: text held back mid-character)."""
    return min(t for k, t in times.items() if k >= count)


def longest_gap(times: dict[int, float], start: float, end: float) -> float:
    stamps = sorted(t for t in times.values() if start <= t <= end)
    before = max((t for t in times.values() if t < start), default=start)
    after = min((t for t in times.values() if t > end), default=end)
    points = [before, *stamps, after]
    return max(b - a for a, b in itertools.pairwise(points))


async def one_round(engine: LlamaCppEngine, seed: int, side: int, encode_s: list[float]) -> dict[str, float]:
    a_tokens = await tokens_of(engine, f"Tell a long story, number {seed}.")
    a = GenerationRequest(prompt_tokens=a_tokens, max_tokens=160, sampling=GREEDY)
    alone = await stream_times(engine, a, {})
    base = longest_gap(alone, at(alone, 40), at(alone, 100))
    image = picture(1000 + seed, side)
    b_image = await tokens_of(engine, f"Describe {MARKER} in detail.", (image,))
    filler = await tokens_of(engine, "Describe this in detail.")
    b_text = filler[:4] + [filler[4]] * (len(b_image) - len(filler)) + filler[4:]  # as many positions as B's
    out = {"alone": base, "b_positions": float(len(b_image))}
    for kind, tokens, images in (("image", b_image, (image,)), ("text", b_text, ())):
        a = GenerationRequest(prompt_tokens=a_tokens, max_tokens=160, sampling=GREEDY)
        at_40 = asyncio.Event()
        a_task = asyncio.create_task(stream_times(engine, a, {40: at_40}))
        await at_40.wait()
        admitted = time.monotonic()
        b = GenerationRequest(prompt_tokens=tokens, max_tokens=4, sampling=GREEDY, images=images)
        b_times = await stream_times(engine, b, {})
        first = min(b_times.values())
        a_times = await a_task
        out[kind] = longest_gap(a_times, admitted, first)
        out[f"{kind}_ttft"] = first - admitted
    out["encode"] = statistics.median(encode_s) if encode_s else 0.0
    return out


def time_encode(engine: LlamaCppEngine, image: RGBImage) -> float:
    projector = engine._projector
    assert projector is not None
    prompt = projector.tokenize([image])
    try:
        started = time.perf_counter()
        for chunk in prompt.chunks:
            if isinstance(chunk, ImageChunk):
                projector.encode(chunk)
        return time.perf_counter() - started
    finally:
        prompt.close()


async def run(engine: LlamaCppEngine, rounds: int, side: int, first_seed: int = 0) -> list[dict[str, float]]:
    """Each round a new story and a new image (seeds from `first_seed`): nothing comes from the prefix cache."""
    results = []
    for seed in range(first_seed, first_seed + rounds):
        encode = [time_encode(engine, picture(3000 + seed, side))]
        results.append(await one_round(engine, seed, side, encode))
    return results


def out(line: str) -> None:
    sys.stdout.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as directory:
        model, projector = write_pair(Path(directory), args.size)
        spec = ModelSpec(
            name=f"{args.size}-vision",
            source=PathSource(path=str(model)),
            mmproj=PathSource(path=str(projector)),
            n_ctx=1024,
            parallel=2,
            n_threads=args.threads,
        )
        engine = LlamaCppEngine.load(spec)
        try:
            asyncio.run(run(engine, 1, SIZES[args.size]["image"], first_seed=100))  # warm-up, not counted
            results = asyncio.run(run(engine, args.rounds, SIZES[args.size]["image"]))
        finally:
            engine.close()
    median = {key: statistics.median(r[key] for r in results) for key in results[0]}
    out(f"size {args.size}, {args.rounds} rounds, {args.threads} threads, load {os.getloadavg()[0]:.2f}")
    out(f"B's prompt: {median['b_positions']:.0f} positions")
    out("| measure (median) | ms |")
    out("|---|---|")
    out(f"| projector encode of one image (all its chunks) | {median['encode'] * 1e3:.1f} |")
    out(f"| A's longest gap, alone (tokens 40-100) | {median['alone'] * 1e3:.1f} |")
    out(f"| A's longest gap while B (text + image) is admitted | {median['image'] * 1e3:.1f} |")
    out(f"| A's longest gap while B (text only, same length) is admitted | {median['text'] * 1e3:.1f} |")
    out(f"| B's time to first token, with the image | {median['image_ttft'] * 1e3:.1f} |")
    out(f"| B's time to first token, text only | {median['text_ttft'] * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
