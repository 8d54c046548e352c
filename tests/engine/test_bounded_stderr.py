"""A worker's stderr keeps each line to a bounded length, whatever llama.cpp writes to it."""

from __future__ import annotations

import os
import threading

from server.engine.bounded_stderr import _copy


def _through_limiter(chunks: list[bytes], limit: int) -> bytes:
    source_read, source_write = os.pipe()
    target_read, target_write = os.pipe()
    copier = threading.Thread(target=_copy, args=(source_read, target_write, limit))
    copier.start()
    for chunk in chunks:
        os.write(source_write, chunk)
    os.close(source_write)
    copier.join()
    os.close(target_write)
    out = b""
    while data := os.read(target_read, 65536):
        out += data
    os.close(target_read)
    os.close(source_read)
    return out


def test_long_lines_are_cut_and_short_ones_pass_whole():
    huge = b"g" * 300_000
    out = _through_limiter([b"short line\n", b"parse: error parsing grammar\n\n", huge, huge + b"\nnext\n"], 100)
    lines = out.split(b"\n")
    assert lines[0] == b"short line" and lines[1] == b"parse: error parsing grammar" and lines[2] == b""
    assert lines[3] == b"g" * 100 + b" ... (599900 more bytes)"
    assert lines[4] == b"next"
    assert max(map(len, lines)) < 200


def test_a_line_split_across_writes_is_one_line():
    out = _through_limiter([b"abc", b"def\n", b"x" * 10, b"y" * 10 + b"\n"], 15)
    assert out == b"abcdef\n" + b"x" * 10 + b"y" * 5 + b" ... (5 more bytes)\n"
