"""The memory a model's worker process takes, estimated before it loads from the GGUF's metadata and the model's
settings: its weights, its KV cache, llama.cpp's compute buffers, and the worker process itself.

- Weights: the file's size (llama.cpp maps the file and reads all of it), and a vision model's projector's.
  Measured with weight repacking off (the default where the CPU has AMX, as on the machine the fit was made on):
  repacked copies may add to it.
- KV cache: `kv_cache.py` (what llama.cpp allocates and clears at load, so it is resident at once); none for
  embedding and reranker models, whose encoders keep no cache.
- Compute: the activations of one batch of `n_batch` tokens (an embedding or reranker model's batch is its whole
  `n_ctx`): a few vectors of the model's width and of its feed-forward width per token, in 32-bit floats, the
  logits of one token per sequence, and, where attention runs without flash attention (always for the encoders),
  its score matrices: each token of the batch against each cell, per head. Fitted to the resident memory measured
  after a full batch (tests/real/test_memory_estimate_real.py holds the total within 10% of it for every seed
  architecture, SmolLM2, and the embedder and reranker architectures).
- Process: the worker's Python, its imports and llama.cpp's library before any model loads; each worker measures
  it (EngineInfo.process_bytes) and the registry estimates the next load with the last one measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server.config import ConfigError, ModelSpec
from server.engine.gguf_header import LongArray, read_metadata
from server.engine.kv_cache import MAX_HEADS, MAX_WIDTH, cache_cells, count_of, spec_kv_cache_bytes

DEFAULT_PROCESS_BYTES = 64 * 1024 * 1024  # a worker before its model loads (measured: 57-68 MiB, Python 3.11)
WIDTH_VECTORS = 8  # activations of the model's width kept per token of a batch (residual, norms, q, k, v, output)
FF_VECTORS = 3  # of its feed-forward width (gate, up, their product)
SCORE_COPIES = 3  # attention score matrices (token x token per head) alive at once without flash attention
COMPUTE_FIXED = 10 * 1024 * 1024  # llama.cpp's context: graph metadata, small tensors, threads (measured: 7-8 MiB more)
MIB = 1024 * 1024
MAX_VOCAB = 1 << 22  # tokens a header may list (real vocabularies have up to a few hundred thousand)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    process: int

    def __post_init__(self) -> None:
        if any(type(part) is not int or part < 0 for part in (self.weights, self.kv_cache, self.compute, self.process)):
            raise ValueError(f"a memory estimate's parts are whole numbers of bytes, not {self!r}")

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.process

    def describe(self) -> str:
        parts = (("weights", self.weights), ("KV cache", self.kv_cache), ("compute", self.compute))
        shown = " + ".join(f"{name} {_mib(size)}" for name, size in (*parts, ("worker", self.process)))
        return f"{_mib(self.total)} ({shown})"

    def as_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "weights": self.weights,
            "kv_cache": self.kv_cache,
            "compute": self.compute,
            "process": self.process,
        }


def estimate_memory(spec: ModelSpec, path: Path, process_bytes: int = DEFAULT_PROCESS_BYTES) -> MemoryEstimate:
    """The estimate for a model entry whose file is `path`; ValueError when the file's metadata lacks what it
    needs (the caller falls back to the file's size)."""
    encoder = spec.embedding or spec.reranker
    fields = read_metadata(path)
    width, feed_forward, vocab = _widths(fields)
    heads = _largest(fields.get(f"{fields.get('general.architecture')}.attention.head_count"), MAX_HEADS)
    batch = spec.n_ctx if encoder else spec.n_batch
    compute = 4 * batch * (WIDTH_VECTORS * width + FF_VECTORS * feed_forward) + COMPUTE_FIXED
    compute += 4 * vocab * (1 if encoder else spec.parallel)  # the logits (a reranker's scores are fewer)
    if encoder or not spec.flash_attn:  # scores of each token against each cell: flash attention never holds them
        cells = batch if encoder else cache_cells(spec.n_ctx, 1)
        compute += 4 * SCORE_COPIES * heads * batch * cells
    kv = 0 if encoder else spec_kv_cache_bytes(spec, path, fields)
    weights = path.stat().st_size + _projector_bytes(spec)
    return MemoryEstimate(weights=weights, kv_cache=kv, compute=compute, process=process_bytes)


def _projector_bytes(spec: ModelSpec) -> int:
    """A vision model's projector file (read whole when it loads; its encoder's compute buffers are not
    counted); 0 when it has none or it is not on this machine."""
    try:
        projector = spec.projector_path()
        return 0 if projector is None else projector.stat().st_size
    except (ConfigError, OSError):
        return 0


def _widths(fields: dict[str, object]) -> tuple[int, int, int]:
    """The model's width, its largest feed-forward width (a mixture's experts' where it has them) and its
    vocabulary's size, each within bounds (ValueError otherwise)."""
    arch = fields.get("general.architecture")
    width = count_of(fields, f"{arch}.embedding_length", MAX_WIDTH, lowest=1)
    widths = [fields.get(f"{arch}.{key}") for key in ("feed_forward_length", "expert_feed_forward_length")]
    feed_forward = max(_largest(w, MAX_WIDTH) for w in widths)
    tokens = fields.get("tokenizer.ggml.tokens")
    vocab = tokens.length if isinstance(tokens, LongArray) else len(tokens) if isinstance(tokens, list) else 0
    if vocab > MAX_VOCAB:
        raise ValueError(f"a vocabulary of {vocab} tokens is out of bounds")
    return width, feed_forward, vocab


def _largest(value: object, most: int) -> int:
    """A count given once or per layer, at its largest (0 when it is not there); ValueError past `most`."""
    counts = [count for count in (value if isinstance(value, list) else [value]) if type(count) is int]
    largest = max(counts or [0])
    if not 0 <= largest <= most or any(count < 0 for count in counts):
        raise ValueError(f"a count of {largest} is out of bounds")
    return largest


def _mib(size: int) -> str:
    return f"{size / MIB:.0f} MiB"
