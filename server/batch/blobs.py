"""File contents on disk, one file per id. A blob is written to a temporary name, flushed and fsynced, then renamed
into place (and the directory fsynced): a crash leaves either the whole blob or none (an orphan at most, which
`remove_unknown` clears at startup)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from server.errors import FileTooLargeError, InvalidRequestError

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHUNK_BYTES = 1024 * 1024


class BlobStore:
    def __init__(self, root: Path, scratch: Path) -> None:
        self._root = root
        self._scratch = scratch
        root.mkdir(parents=True, exist_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)
        for leftover in scratch.iterdir():  # partial writes of a process that was killed
            leftover.unlink(missing_ok=True)

    def path(self, blob_id: str) -> Path:
        if not _ID.match(blob_id):  # ids are generated here, but a path from one must never leave the folder
            raise ValueError("not a blob id")
        return self._root / blob_id

    async def receive(
        self, blob_id: str, chunks: AsyncIterator[bytes], max_bytes: int, max_lines: int
    ) -> tuple[Path, int, int]:
        """Spool an upload to a scratch file as it arrives, each write and the final fsync in a thread; returns
        (the scratch file, bytes, lines) for `place` (or the caller's removal). Past `max_bytes` a 413, past
        `max_lines` a 400, and nothing is kept."""
        size = lines = 0
        last = b"\n"
        temp = self._scratch / f"{blob_id}.{secrets.token_hex(4)}"
        out = temp.open("wb")  # creating an empty file: too short to leave the loop for
        pending: asyncio.Future[Any] | None = None
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLargeError(max_bytes)
                lines += chunk.count(b"\n")
                if lines > max_lines:
                    raise InvalidRequestError(
                        f"The file has more than {max_lines} lines, this server's limit for one batch file.",
                        param="file",
                        code="too_many_lines",
                    )
                pending = asyncio.ensure_future(asyncio.to_thread(out.write, chunk))
                await asyncio.shield(pending)  # a cancel leaves the write to finish in its thread
                if chunk:
                    last = chunk[-1:]
            pending = asyncio.ensure_future(asyncio.to_thread(_flush, out))
            await asyncio.shield(pending)
        except BaseException:
            # A write still running in its thread (the request was cancelled) closes and removes the file when
            # it ends; the event loop never waits for it.
            if pending is not None and not pending.done():
                pending.add_done_callback(lambda _: _discard(out, temp))
            else:
                _discard(out, temp)
            raise
        out.close()
        return temp, size, lines + (last != b"\n")

    def write_lines(self, blob_id: str, lines: Iterable[str]) -> int:
        """Store text lines (a batch's output); returns the bytes written."""
        size = 0
        temp = self._scratch / f"{blob_id}.{secrets.token_hex(4)}"
        try:
            with temp.open("wb") as out:
                for line in lines:
                    data = line.encode() + b"\n"
                    out.write(data)
                    size += len(data)
                _flush(out)
            self.place(temp, blob_id)
        finally:
            temp.unlink(missing_ok=True)
        return size

    def remove(self, blob_id: str) -> None:
        self.path(blob_id).unlink(missing_ok=True)

    def remove_unknown(self, known: set[str]) -> None:
        for blob in self._root.iterdir():
            if blob.name not in known:
                blob.unlink(missing_ok=True)

    def place(self, temp: Path, blob_id: str) -> None:
        """Move a finished scratch file into place, durably."""
        os.replace(temp, self.path(blob_id))
        with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
            fd = os.open(self._root, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _discard(out: BinaryIO, temp: Path) -> None:
    out.close()
    temp.unlink(missing_ok=True)


def _flush(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())
