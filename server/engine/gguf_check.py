"""What can be checked about a GGUF file before llama.cpp sees it: the magic and version, a header that parses,
an architecture name, and tensor data that lies within the file (a truncated copy is the common failure).
Each problem comes back as one readable sentence."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# GGUF value types: fixed sizes of the scalar ones; 8 is a string, 9 an array.
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
MAX_DIMS = 8


class GGUFProblem(Exception):
    pass


def check_gguf(path: Path) -> str:
    """The file's architecture name; raise GGUFProblem saying what is wrong otherwise."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        try:
            return _check(fh, size)
        except (struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            raise GGUFProblem(f"its GGUF header is truncated or damaged ({exc})") from None


def _check(fh: BinaryIO, size: int) -> str:
    if fh.read(4) != GGUF_MAGIC:
        raise GGUFProblem("it is not a GGUF file")
    version, n_tensors, n_kv = struct.unpack("<IQQ", fh.read(20))
    if version not in SUPPORTED_VERSIONS:
        raise GGUFProblem(f"it is GGUF version {version}; llama.cpp reads versions 2 and 3")
    if n_kv > size or n_tensors > size:
        raise GGUFProblem("its GGUF header is damaged (impossible counts)")
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = _string(fh, size)
        (value_type,) = struct.unpack("<I", fh.read(4))
        value = _value(fh, value_type, size)
        if key in ("general.architecture", "general.alignment"):
            metadata[key] = value
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise GGUFProblem("its header names no architecture (general.architecture)")
    data_end = 0
    for _ in range(n_tensors):
        _string(fh, size)
        (n_dims,) = struct.unpack("<I", fh.read(4))
        if n_dims > MAX_DIMS:
            raise GGUFProblem("its tensor table is damaged")
        dims = struct.unpack(f"<{n_dims}Q", fh.read(8 * n_dims))
        ggml_type, offset = struct.unpack("<IQ", fh.read(12))
        data_end = max(data_end, offset + _tensor_bytes(ggml_type, dims))
    alignment = metadata.get("general.alignment") or DEFAULT_ALIGNMENT
    data_start = -(-fh.tell() // alignment) * alignment  # type: ignore[operator]
    if data_start + data_end > size:
        raise GGUFProblem(f"it is truncated: its tensors need {data_start + data_end} bytes but the file has {size}")
    return architecture


def _string(fh: BinaryIO, size: int) -> str:
    (length,) = struct.unpack("<Q", fh.read(8))
    if length > size:
        raise GGUFProblem("its GGUF header is damaged (impossible string length)")
    raw = fh.read(length)
    if len(raw) != length:
        raise struct.error("unexpected end of file")
    return raw.decode("utf-8")


def _value(fh: BinaryIO, value_type: int, size: int) -> object:
    if value_type == STRING:
        return _string(fh, size)
    if value_type == ARRAY:
        item_type, count = struct.unpack("<IQ", fh.read(12))
        if count > size:
            raise GGUFProblem("its GGUF header is damaged (impossible array length)")
        if item_type in SCALAR_SIZES:
            fh.seek(SCALAR_SIZES[item_type] * count, 1)
        else:
            for _ in range(count):
                _value(fh, item_type, size)
        return None
    if value_type not in SCALAR_SIZES:
        raise GGUFProblem(f"its GGUF header has an unknown value type {value_type}")
    raw = fh.read(SCALAR_SIZES[value_type])
    if value_type == 4:  # uint32, the type of general.alignment
        return struct.unpack("<I", raw)[0]
    return None


def _tensor_bytes(ggml_type: int, dims: tuple[int, ...]) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return 0  # a type this check does not know: leave the size to llama.cpp
    elements = 1
    for dim in dims:
        elements *= dim
    return elements // block * type_size
