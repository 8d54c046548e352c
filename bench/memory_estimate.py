"""The memory estimate made before a model loads (server/engine/memory.py) beside what its worker process really
takes, for the embedded models at several settings.

    .venv/bin/python -m bench.memory_estimate

Each configuration loads the model in a worker process (as the server does), runs one batch of work through it
(a prompt of `n_batch` tokens, or one that fills the context without flash attention; an input of `n_ctx` tokens
for the embedder), and reads the worker's resident memory (VmRSS)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from server.config import ModelSpec, PathSource, load_models_file
from server.engine import GenerationRequest, SamplingParams
from server.engine.memory import estimate_memory
from server.engine.process import ProcessEngine
from server.models.residency import resident_size
from server.models.sources import model_file

MODELS = Path(__file__).parents[1] / "models.yaml"
TEXT = "The quick brown fox jumps over the lazy dog while the cat watches from the window. " * 120
MIB = 1024 * 1024
CONFIGS = [
    ("smollm2-135m-instruct", {}),
    ("smollm2-135m-instruct", {"n_ctx": 4096, "parallel": 8}),
    ("smollm2-135m-instruct", {"cache_type_k": "q8_0", "cache_type_v": "q8_0", "parallel": 8}),
    ("smollm2-135m-instruct", {"flash_attn": False, "n_ctx": 1024}),
    ("smollm2-135m-instruct", {"n_batch": 128}),
    ("all-minilm-l6-v2", {}),
]


async def one_batch(engine: ProcessEngine, spec: ModelSpec) -> None:
    if spec.embedding:
        await engine.embed([(await engine.tokenize(TEXT))[: spec.n_ctx]])
        return
    length = spec.n_batch if spec.flash_attn else spec.n_ctx
    prompt = await engine.tokenize(await engine.render_chat([{"role": "user", "content": TEXT}]))
    async for _ in engine.generate(GenerationRequest(prompt[: length - 8], 8, SamplingParams(temperature=0))):
        pass


def main() -> int:
    entries = {m.name: m for m in load_models_file(MODELS).models}
    rows = []
    for name, settings in CONFIGS:
        spec = entries[name].model_copy(update=settings)
        path = model_file(spec)
        spec = spec.model_copy(update={"source": PathSource(path=path)})
        engine = ProcessEngine.load(spec)
        try:
            asyncio.run(one_batch(engine, spec))
            measured = resident_size(engine) or 0
            estimate = estimate_memory(spec, path, engine.info.process_bytes or 0)
        finally:
            engine.close()
        label = ", ".join(f"{k}={v}" for k, v in settings.items()) or "as shipped"
        rows.append((f"{name} ({label})", estimate, measured))
    sys.stdout.write(
        "| model (settings) | estimate | weights | KV cache | compute | worker | measured | estimate/measured |\n"
    )
    sys.stdout.write("|---|---|---|---|---|---|---|---|\n")
    for label, e, measured in rows:
        parts = [e.total, e.weights, e.kv_cache, e.compute, e.process, measured]
        cells = " | ".join(f"{p / MIB:.1f} MiB" for p in parts)
        sys.stdout.write(f"| {label} | {cells} | {e.total / measured:.3f} |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
