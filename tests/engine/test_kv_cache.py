"""The KV cache size read from GGUF metadata (llama.cpp's own figure is checked in tests/real/test_kv_cache_real.py)."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from server.config import ModelSpec, PathSource
from server.engine.kv_cache import KVShape, cache_cells, kv_cache_bytes, kv_shape, spec_kv_cache_bytes


def metadata_only(path: Path, arch: str = "llama", **values: object) -> Path:
    """A GGUF holding only the given `{arch}.*` metadata (no tensors): all the size needs."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in values.items():
        name = f"{arch}.{key.replace('__', '.')}"
        if isinstance(value, list):
            writer.add_array(name, value)
        else:
            writer.add_uint32(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_grouped_query_attention_counts_the_kv_heads(tmp_path):
    path = metadata_only(
        tmp_path / "m.gguf", block_count=30, embedding_length=576, attention__head_count=9, attention__head_count_kv=3
    )
    assert kv_shape(path) == KVShape(k_elements=30 * 3 * 64, v_elements=30 * 3 * 64)  # SmolLM2-135M's shape


def test_without_head_count_kv_every_head_has_its_keys(tmp_path):
    path = metadata_only(tmp_path / "m.gguf", block_count=2, embedding_length=128, attention__head_count=4)
    assert kv_shape(path) == KVShape(k_elements=2 * 4 * 32, v_elements=2 * 4 * 32)


def test_explicit_key_and_value_lengths_and_per_layer_heads(tmp_path):
    path = metadata_only(
        tmp_path / "m.gguf",
        block_count=3,
        embedding_length=256,
        attention__head_count=[8, 8, 8],
        attention__head_count_kv=[2, 0, 4],  # a layer without attention holds nothing
        attention__key_length=96,
        attention__value_length=64,
    )
    assert kv_shape(path) == KVShape(k_elements=6 * 96, v_elements=6 * 64)


@pytest.mark.parametrize(
    "values",
    [{}, {"block_count": 2, "embedding_length": 64}, {"block_count": 2, "attention__head_count": 4}],
)
def test_missing_attention_metadata_is_a_value_error(tmp_path, values):
    with pytest.raises(ValueError, match=r"out of bounds|within bounds"):
        kv_shape(metadata_only(tmp_path / "m.gguf", **values))


def test_each_sequence_is_padded_to_256_cells_like_llama_cpp():
    assert cache_cells(2048, 8) == 2048 * 8
    assert cache_cells(2000, 4) == 2048 * 4
    assert cache_cells(64, 3) == 256 * 3
    assert cache_cells(257, 1) == 512


def test_block_layouts_of_the_cache_types():
    shape = KVShape(k_elements=64, v_elements=32)
    assert kv_cache_bytes(shape, 10, "f16", "f16") == 10 * (64 * 2 + 32 * 2)
    assert kv_cache_bytes(shape, 10, "q8_0", "q4_0") == 10 * (2 * 34 + 1 * 18)
    assert kv_cache_bytes(shape, 10, "q4_0", "f16") == 10 * (2 * 18 + 32 * 2)


def test_a_model_entry_s_kv_cache(tmp_path):
    path = metadata_only(
        tmp_path / "m.gguf", block_count=30, embedding_length=576, attention__head_count=9, attention__head_count_kv=3
    )

    def size(cache_type: str) -> int:
        spec = ModelSpec(
            name="m",
            source=PathSource(path=path),
            n_ctx=2048,
            parallel=8,
            cache_type_k=cache_type,
            cache_type_v=cache_type,
        )
        return spec_kv_cache_bytes(spec, path)

    assert (size("f16"), size("q8_0"), size("q4_0")) == (360 * 2**20, 191.25 * 2**20, 101.25 * 2**20)
