"""What can be checked about a GGUF file before llama.cpp sees it: the magic and version, a header that parses,
an architecture name, and tensor data that lies within the file (a truncated copy is the common failure).
Each problem comes back as one readable sentence."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from server.engine.gguf_header import GGUF_MAGIC, GGUFProblem, read_pairs, read_string

SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 8


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
    if n_tensors > size:
        raise GGUFProblem("its GGUF header is damaged (impossible counts)")
    metadata = read_pairs(fh, n_kv, size)
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise GGUFProblem("its header names no architecture (general.architecture)")
    data_end = 0
    for _ in range(n_tensors):
        read_string(fh, size)
        (n_dims,) = struct.unpack("<I", fh.read(4))
        if n_dims > MAX_DIMS:
            raise GGUFProblem("its tensor table is damaged")
        dims = struct.unpack(f"<{n_dims}Q", fh.read(8 * n_dims))
        ggml_type, offset = struct.unpack("<IQ", fh.read(12))
        data_end = max(data_end, offset + _tensor_bytes(ggml_type, dims))
    alignment = metadata.get("general.alignment")
    alignment = alignment if isinstance(alignment, int) and alignment > 0 else DEFAULT_ALIGNMENT
    data_start = -(-fh.tell() // alignment) * alignment
    if data_start + data_end > size:
        raise GGUFProblem(f"it is truncated: its tensors need {data_start + data_end} bytes but the file has {size}")
    return architecture


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
