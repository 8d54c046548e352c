"""The memory estimate made before a model loads (server/engine/memory.py) and the fast GGUF header reader it uses
(server/engine/gguf_header.py). How close the estimate comes to a worker's resident memory is measured in
tests/real/test_memory_estimate_real.py."""

from __future__ import annotations

import asyncio

import gguf
import pytest

from server.config import ModelSpec, PathSource
from server.engine.gguf_header import LongArray, LongString, read_metadata
from server.engine.kv_cache import spec_kv_cache_bytes
from server.engine.memory import COMPUTE_FIXED, DEFAULT_PROCESS_BYTES, estimate_memory
from server.errors import ModelUnavailableError
from server.models.registry import ModelRegistry
from server.models.residency import Budget, memory_estimate
from tests.conftest import FakeLoader
from tests.fakes import FakeScript
from tests.gguf_factory import write_tiny_bert, write_tiny_llama

MB = 1024 * 1024


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", n_embd=64, n_head=4, n_head_kv=2, n_layer=2)


def test_the_header_reader_reads_what_the_gguf_package_reads(tiny):
    fields = read_metadata(tiny)
    reference = gguf.GGUFReader(tiny, "r").fields
    for key, field in reference.items():
        if key.startswith("GGUF."):
            continue  # the reader's own bookkeeping, not metadata
        value = field.contents()
        if isinstance(value, list) and (len(value) > 4096 or (value and isinstance(value[0], str))):
            assert fields[key] == LongArray(len(value)), key  # long or text arrays: their length
        elif isinstance(value, float):
            assert fields[key] == pytest.approx(value), key
        else:
            assert fields[key] == value, key


@pytest.mark.parametrize("damage", [b"", b"GGUF", b"NOPE" + b"\0" * 40, b"GGUF\x03\0\0\0" + b"\xff" * 16])
def test_a_damaged_header_is_a_value_error(tmp_path, damage):
    path = tmp_path / "bad.gguf"
    path.write_bytes(damage)
    with pytest.raises(ValueError):
        read_metadata(path)


def hostile(path, arch="llama", **values):
    """A GGUF whose header holds the given values (no tensors)."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in values.items():
        name = f"{arch}.{key.replace('__', '.')}"
        if isinstance(value, str):
            writer.add_string(name, value)
        elif isinstance(value, list):
            writer.add_array(name, value)
        elif isinstance(value, float):
            writer.add_float32(name, value)
        else:
            writer.add_int64(name, value) if value < 0 or value >= 2**32 else writer.add_uint32(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


HOSTILE = {  # a header a file could carry, and why it gives no estimate
    "huge block count": {"block_count": 300_000_000, "embedding_length": 64, "attention__head_count": 4},
    "negative kv heads": {
        "block_count": 2,
        "embedding_length": 64,
        "attention__head_count": 4,
        "attention__head_count_kv": -1000,
    },
    "heads as text": {"block_count": 2, "embedding_length": 64, "attention__head_count": "four"},
    "key length as text": {
        "block_count": 2,
        "embedding_length": 64,
        "attention__head_count": 4,
        "attention__key_length": "x" * 2000,
    },
    "heads per layer of the wrong length": {"block_count": 3, "embedding_length": 64, "attention__head_count": [4]},
    "a float width": {"block_count": 2, "embedding_length": 64.0, "attention__head_count": 4},
    "arrays of arrays": {"block_count": 2, "embedding_length": 64, "attention__head_count": [[4], [4]]},
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_header_gives_no_estimate_quickly_and_the_file_counts_its_size(tmp_path, name):
    path = hostile(tmp_path / "h.gguf", **HOSTILE[name])
    spec = ModelSpec(name="h", source=PathSource(path=path))
    with pytest.raises(ValueError):
        estimate_memory(spec, path)
    assert memory_estimate(spec).total == path.stat().st_size  # listing models and loads go on


def test_a_long_string_value_is_skipped_not_read(tmp_path):
    path = hostile(tmp_path / "s.gguf", chat_template="x" * (2 << 20), block_count=2)
    fields = read_metadata(path)
    assert fields["llama.chat_template"] == LongString(2 << 20) and fields["llama.block_count"] == 2


def test_the_estimate_counts_the_file_the_kv_cache_the_batch_and_the_worker(tiny):
    spec = ModelSpec(name="t", source=PathSource(path=tiny), n_ctx=1024, parallel=2)
    estimate = estimate_memory(spec, tiny, process_bytes=50 * MB)
    assert estimate.weights == tiny.stat().st_size
    assert estimate.kv_cache == spec_kv_cache_bytes(spec, tiny) > 0
    assert estimate.process == 50 * MB
    assert estimate.compute > COMPUTE_FIXED
    assert estimate.total == estimate.weights + estimate.kv_cache + estimate.compute + estimate.process
    # More sequences: more cache; a larger batch: more compute; no flash attention: the scores too.
    assert estimate_memory(spec.model_copy(update={"parallel": 4}), tiny).kv_cache == 2 * estimate.kv_cache
    assert estimate_memory(spec.model_copy(update={"n_batch": 1024}), tiny).compute > estimate.compute
    assert estimate_memory(spec.model_copy(update={"flash_attn": False}), tiny).compute > estimate.compute
    quantized = spec.model_copy(update={"cache_type_k": "q8_0", "cache_type_v": "q8_0"})
    assert estimate_memory(quantized, tiny).kv_cache < estimate.kv_cache
    assert "KV cache" in estimate.describe() and "worker 50 MiB" in estimate.describe()


def test_an_encoder_has_no_kv_cache(tmp_path):
    path = write_tiny_bert(tmp_path / "bert.gguf")
    estimate = estimate_memory(ModelSpec(name="e", source=PathSource(path=path), embedding=True), path)
    assert estimate.kv_cache == 0 and estimate.compute > COMPUTE_FIXED


def test_a_file_that_is_not_gguf_counts_its_size_and_a_missing_one_nothing(tmp_path):
    path = tmp_path / "zeros.gguf"
    path.write_bytes(b"\0" * 1000)
    assert memory_estimate(ModelSpec(name="z", source=PathSource(path=path))).total == 1000
    assert memory_estimate(ModelSpec(name="z", source=PathSource(path=tmp_path / "missing.gguf"))) is None


def test_a_model_that_cannot_fit_is_refused_with_the_numbers_before_it_loads(tiny):
    # A file of under 1 MiB whose KV cache at 32768 x 8 cells takes 64 MiB: the file's size would have let it in.
    spec = ModelSpec(name="big", source=PathSource(path=tiny), n_ctx=32768, parallel=8)
    small = ModelSpec(name="small", source=PathSource(path=tiny))
    loader = FakeLoader()
    registry = ModelRegistry([spec, small], loader, budget=Budget(memory_bytes=100 * MB))
    with pytest.raises(ModelUnavailableError) as refused:
        asyncio.run(registry.engine("big"))
    assert loader.loads == []  # nothing started
    asyncio.run(registry.engine("small"))  # the same file with a small cache fits
    assert loader.loads == ["small"]
    message = refused.value.message
    assert "more than the server's memory budget" in message
    assert "KV cache" in message and "weights" in message and "compute" in message and "worker" in message
    assert "n_ctx, parallel or cache_type_k/v" in message


def test_the_registry_estimates_with_the_worker_size_last_measured(tiny):
    spec = ModelSpec(name="t", source=PathSource(path=tiny))
    loader = FakeLoader()
    loader.scripts["t"] = FakeScript(process_bytes=7 * MB)  # what the worker reports of itself
    registry = ModelRegistry([spec], loader)
    before = registry.memory_estimate(spec)
    assert before is not None and registry.memory_estimate(spec) is before  # read once, then kept
    assert before.process == DEFAULT_PROCESS_BYTES

    async def load_then_estimate():
        await registry.engine("t")
        return registry.memory_estimate(spec)

    after = asyncio.run(load_then_estimate())
    assert after is not None and after.process == 7 * MB
    assert after.total == before.total - DEFAULT_PROCESS_BYTES + 7 * MB
