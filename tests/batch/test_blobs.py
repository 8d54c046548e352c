"""Uploads as they arrive: written in threads, and a client that leaves mid-write leaves nothing behind, without
the event loop waiting for the write."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from server.batch.blobs import BlobStore


class SlowFile:
    """A file whose write blocks until released, recording what happens to it."""

    def __init__(self, path: Path) -> None:
        self._real = open(path, "wb")  # noqa: SIM115 (closed by close(), as the store closes its files)
        self.writing, self.release = threading.Event(), threading.Event()
        self.closed_while_writing = False
        self._in_write = False

    def write(self, data: bytes) -> int:
        self._in_write = True
        self.writing.set()
        self.release.wait(30)
        self._in_write = False
        return self._real.write(data)

    def close(self) -> None:
        self.closed_while_writing |= self._in_write
        self._real.close()

    @property
    def closed(self) -> bool:
        return self._real.closed

    def flush(self) -> None:
        self._real.flush()

    def fileno(self) -> int:
        return self._real.fileno()


def test_a_client_that_leaves_mid_write_leaves_nothing_and_the_loop_does_not_wait(tmp_path, monkeypatch):
    blobs = BlobStore(tmp_path / "files", tmp_path / "tmp")
    opened: list[SlowFile] = []
    created = threading.Event()
    real_open = Path.open

    def open_slow(self: Path, mode: str = "r", *args, **kwargs):
        if mode == "wb" and self.parent == tmp_path / "tmp":
            opened.append(SlowFile(self))
            created.set()
            return opened[-1]
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_slow)

    async def chunks():
        yield b'{"a": 1}\n'

    async def scenario() -> None:
        upload = asyncio.create_task(blobs.receive("file-x", chunks(), 1 << 20, 100))
        assert await asyncio.to_thread(lambda: created.wait(30) and opened[0].writing.wait(30))
        upload.cancel()
        done, _ = await asyncio.wait({upload}, timeout=30)
        assert done and upload.cancelled()  # at once: the write is still blocked in its thread
        assert not opened[0].closed  # closing it now would wait for the write
        opened[0].release.set()
        async with asyncio.timeout(30):
            while not opened[0].closed:
                await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert not opened[0].closed_while_writing
    assert list((tmp_path / "tmp").iterdir()) == [] and list((tmp_path / "files").iterdir()) == []
