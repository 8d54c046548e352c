"""The KV cache of a model: its size at each cache type, computed from the GGUF's metadata before anything loads.

It follows llama.cpp's layout for ordinary (multi-head or grouped-query) attention: per layer and cell, K holds
`head_count_kv * key_length` elements and V `head_count_kv * value_length`, stored at the cache type. Sliding-
window layers (Gemma 2/3) are counted as full ones and compressed attention (DeepSeek's MLA) as ordinary heads,
so for those models the figure is an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server.config import KVCacheType, ModelSpec
from server.engine.gguf_header import read_metadata

# (elements per block, bytes per block) of each cache type, as ggml stores them.
BLOCK_LAYOUT: dict[str, tuple[int, int]] = {"f16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18)}
# llama.cpp rounds each sequence's context up to a multiple of this (llama_context's n_ctx_seq).
CONTEXT_PAD = 256
# Bounds on what a header may say (far beyond any model served here): a hostile file gives no estimate, not a huge
# one or a long computation.
MAX_LAYERS, MAX_WIDTH, MAX_HEADS = 4096, 1 << 20, 1 << 16


@dataclass(frozen=True)
class KVShape:
    """Elements one cell of the cache holds, summed over the layers, for the keys and for the values."""

    k_elements: int
    v_elements: int


def kv_shape(path: Path, fields: dict[str, object] | None = None) -> KVShape:
    """Read from the GGUF header (`fields`, when it was read already); a file without the attention metadata
    raises ValueError."""
    fields = read_metadata(path) if fields is None else fields
    arch = fields.get("general.architecture")
    layers = count_of(fields, f"{arch}.block_count", MAX_LAYERS, lowest=1)
    width = count_of(fields, f"{arch}.embedding_length", MAX_WIDTH, lowest=1)
    per_layer_heads = _per_layer(fields.get(f"{arch}.attention.head_count"), layers, f"{arch}.attention.head_count")
    if max(per_layer_heads) <= 0:
        raise ValueError(f"{path.name} has no attention heads")
    kv_heads = _per_layer(
        fields.get(f"{arch}.attention.head_count_kv", per_layer_heads), layers, f"{arch}.attention.head_count_kv"
    )
    head_size = width // max(per_layer_heads)
    key_length = count_of(fields, f"{arch}.attention.key_length", MAX_WIDTH, default=head_size)
    value_length = count_of(fields, f"{arch}.attention.value_length", MAX_WIDTH, default=head_size)
    return KVShape(k_elements=sum(kv_heads) * key_length, v_elements=sum(kv_heads) * value_length)


def count_of(fields: dict[str, object], key: str, most: int, *, lowest: int = 0, default: int | None = None) -> int:
    """A whole number of the header within bounds (a file's header is not trusted); ValueError otherwise."""
    value = fields.get(key, default)
    if type(value) is not int or not lowest <= value <= most:
        raise ValueError(f"{key} is missing or out of bounds ({value!r})")
    return value


def _per_layer(count: object, layers: int, key: str) -> list[int]:
    """Head counts are one number, or one per layer (models whose layers differ; 0 for a layer with no attention)."""
    counts = count if isinstance(count, list) else [count] * layers
    if len(counts) != layers or any(type(c) is not int or not 0 <= c <= MAX_HEADS for c in counts):
        raise ValueError(f"{key} is not a head count per layer within bounds")
    return counts


def cache_cells(n_ctx: int, parallel: int) -> int:
    """Cells llama.cpp allocates for `parallel` sequences of `n_ctx` tokens each (one KV stream per sequence)."""
    return -(-n_ctx // CONTEXT_PAD) * CONTEXT_PAD * parallel


def type_bytes(elements: int, cache_type: KVCacheType | str) -> int:
    block, size = BLOCK_LAYOUT[cache_type]
    return elements // block * size


def kv_cache_bytes(shape: KVShape, cells: int, type_k: KVCacheType | str, type_v: KVCacheType | str) -> int:
    return cells * (type_bytes(shape.k_elements, type_k) + type_bytes(shape.v_elements, type_v))


def spec_kv_cache_bytes(spec: ModelSpec, path: Path, fields: dict[str, object] | None = None) -> int:
    """The KV cache bytes a model's entry asks for (`n_ctx` x `parallel` cells at its cache types)."""
    cells = cache_cells(spec.n_ctx, spec.parallel)
    return kv_cache_bytes(kv_shape(path, fields), cells, spec.cache_type_k, spec.cache_type_v)
