"""A GGUF file's metadata (its key-value header), read fast: the values of numbers and strings, short arrays of
numbers as lists, and of longer arrays (a vocabulary's tokens) only their length. The `gguf` package's reader also
parses every token and tensor, which takes seconds for a real vocabulary; this reads the header alone."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

GGUF_MAGIC = b"GGUF"
# GGUF value types: fixed sizes of the scalar ones; 8 is a string, 9 an array.
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
LIST_MAX = 4096  # arrays of numbers up to this long are read (per-layer counts); longer ones give their length
KEY_MAX = 65536  # bytes of a key
VALUE_MAX = 1 << 20  # bytes of a string value read (a chat template); a longer one is skipped, given as its length


class GGUFProblem(ValueError):
    """What is wrong with a file's GGUF header, as one readable sentence."""


@dataclass(frozen=True)
class LongArray:
    length: int


@dataclass(frozen=True)
class LongString:
    length: int


def read_metadata(path: Path) -> dict[str, object]:
    """The header's keys and values; GGUFProblem (a ValueError) when the file is not a GGUF file or its header
    is damaged."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        try:
            if fh.read(4) != GGUF_MAGIC:
                raise GGUFProblem("it is not a GGUF file")
            _version, _n_tensors, n_kv = struct.unpack("<IQQ", fh.read(20))
            return read_pairs(fh, n_kv, size)
        except (struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            raise GGUFProblem(f"its GGUF header is truncated or damaged ({exc})") from None


def read_pairs(fh: BinaryIO, n_kv: int, size: int) -> dict[str, object]:
    """The `n_kv` key-value pairs at the file's position (`size`: the file's, which no length may exceed)."""
    if n_kv > size:
        raise GGUFProblem("its GGUF header is damaged (impossible counts)")
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = read_string(fh, size, KEY_MAX)
        (value_type,) = struct.unpack("<I", fh.read(4))
        metadata[key] = _value(fh, value_type, size)
    return metadata


def read_typed_pairs(fh: BinaryIO, n_kv: int, size: int) -> dict[str, tuple[int, object]]:
    """As read_pairs, with each value's GGUF type (llama.cpp's readers abort the process on a key of the wrong
    type, so a pre-check compares them); an array's type is ARRAY, its items' type is not kept."""
    if n_kv > size:
        raise GGUFProblem("its GGUF header is damaged (impossible counts)")
    metadata: dict[str, tuple[int, object]] = {}
    for _ in range(n_kv):
        key = read_string(fh, size, KEY_MAX)
        (value_type,) = struct.unpack("<I", fh.read(4))
        metadata[key] = (value_type, _value(fh, value_type, size))
    return metadata


def read_string(fh: BinaryIO, size: int, most: int | None = None) -> str:
    """A string; longer than `most` bytes (when given) is a damaged header."""
    (length,) = struct.unpack("<Q", fh.read(8))
    if length > size or (most is not None and length > most):
        raise GGUFProblem("its GGUF header is damaged (impossible string length)")
    raw = fh.read(length)
    if len(raw) != length:
        raise struct.error("unexpected end of file")
    return raw.decode("utf-8")


def _value(fh: BinaryIO, value_type: int, size: int) -> object:
    if value_type == STRING:
        return _string_value(fh, size)
    if value_type == ARRAY:
        item_type, count = struct.unpack("<IQ", fh.read(12))
        if count > size:
            raise GGUFProblem("its GGUF header is damaged (impossible array length)")
        if item_type == ARRAY:  # as llama.cpp's own reader, which refuses them (and they could nest without end)
            raise GGUFProblem("its GGUF header has an array of arrays")
        if item_type in _FORMATS and count <= LIST_MAX:
            return list(struct.unpack(f"<{count}{_FORMATS[item_type]}", fh.read(SCALAR_SIZES[item_type] * count)))
        if item_type in SCALAR_SIZES:
            fh.seek(SCALAR_SIZES[item_type] * count, 1)
        elif item_type == STRING:
            for _ in range(count):
                _string_value(fh, size)
        else:
            raise GGUFProblem(f"its GGUF header has an unknown value type {item_type}")
        return LongArray(count)
    if value_type not in _FORMATS:
        raise GGUFProblem(f"its GGUF header has an unknown value type {value_type}")
    (value,) = struct.unpack(f"<{_FORMATS[value_type]}", fh.read(SCALAR_SIZES[value_type]))
    return value


def _string_value(fh: BinaryIO, size: int) -> str | LongString:
    """A string value; one longer than VALUE_MAX is skipped (its length given), never read into memory."""
    (length,) = struct.unpack("<Q", fh.read(8))
    if length > size:
        raise GGUFProblem("its GGUF header is damaged (impossible string length)")
    if length > VALUE_MAX:
        fh.seek(length, 1)
        return LongString(length)
    raw = fh.read(length)
    if len(raw) != length:
        raise struct.error("unexpected end of file")
    return raw.decode("utf-8")
