"""A worker's standard error with every line cut to a bounded length.

llama.cpp writes some diagnostics straight to stderr (a grammar it cannot parse is printed whole, for one), so a
request could otherwise put a multi-megabyte line in the server's log. File descriptor 2 becomes a pipe; a
thread copies it to the real stderr, line by line, keeping at most `limit` bytes of each.
"""

from __future__ import annotations

import os
import threading

LINE_LIMIT = 2000


def bound_stderr(limit: int = LINE_LIMIT) -> None:
    """Route this process's fd 2 through the line limiter (call once, early, in a worker process)."""
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    threading.Thread(target=_copy, args=(read_end, real, limit), name="bounded-stderr", daemon=True).start()


def _copy(source: int, target: int, limit: int) -> None:
    kept = dropped = 0  # bytes of the current line written so far, and left out
    while chunk := os.read(source, 65536):
        out = bytearray()
        *lines, tail = chunk.split(b"\n")
        for piece in lines:  # each ends a line (the first one may continue the last chunk's)
            room = max(limit - kept, 0)
            out += piece[:room]
            dropped += max(len(piece) - room, 0)
            if dropped:
                out += f" ... ({dropped} more bytes)".encode()
            out += b"\n"
            kept = dropped = 0
        room = max(limit - kept, 0)
        out += tail[:room]
        kept += min(len(tail), room)
        dropped += max(len(tail) - room, 0)
        _write_all(target, bytes(out))


def _write_all(target: int, data: bytes) -> None:
    while data:
        data = data[os.write(target, data) :]
