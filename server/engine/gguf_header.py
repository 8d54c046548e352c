"""A GGUF file's metadata (its key-value header), read fast: the values of numbers and strings, short arrays of
numbers as lists, and of longer arrays (a vocabulary's tokens) only their length. The `gguf` package's reader also
parses every token and tensor, which takes seconds for a real vocabulary; this reads the header alone."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from server.engine.gguf_check import GGUF_MAGIC, SCALAR_SIZES, STRING

ARRAY = 9
_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
LIST_MAX = 4096  # arrays of numbers up to this long are read (per-layer counts); longer ones give their length


@dataclass(frozen=True)
class LongArray:
    length: int


def read_metadata(path: Path) -> dict[str, object]:
    """The header's keys and values; ValueError when the file is not a GGUF file or its header is damaged."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        try:
            return _read(fh, size)
        except (struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            raise ValueError(f"{path.name}: its GGUF header is truncated or damaged ({exc})") from None


def _read(fh: BinaryIO, size: int) -> dict[str, object]:
    if fh.read(4) != GGUF_MAGIC:
        raise ValueError("not a GGUF file")
    _version, _n_tensors, n_kv = struct.unpack("<IQQ", fh.read(20))
    if n_kv > size:
        raise ValueError("damaged GGUF header (impossible count)")
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = _string(fh, size)
        (value_type,) = struct.unpack("<I", fh.read(4))
        metadata[key] = _value(fh, value_type, size)
    return metadata


def _string(fh: BinaryIO, size: int) -> str:
    (length,) = struct.unpack("<Q", fh.read(8))
    if length > size:
        raise ValueError("damaged GGUF header (impossible string length)")
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
            raise ValueError("damaged GGUF header (impossible array length)")
        if item_type in _FORMATS and count <= LIST_MAX:
            return list(struct.unpack(f"<{count}{_FORMATS[item_type]}", fh.read(SCALAR_SIZES[item_type] * count)))
        if item_type in SCALAR_SIZES:
            fh.seek(SCALAR_SIZES[item_type] * count, 1)
        else:
            for _ in range(count):
                _value(fh, item_type, size)
        return LongArray(count)
    if value_type not in _FORMATS:
        raise ValueError(f"damaged GGUF header (unknown value type {value_type})")
    (value,) = struct.unpack(f"<{_FORMATS[value_type]}", fh.read(SCALAR_SIZES[value_type]))
    return value
