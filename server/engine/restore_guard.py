"""Saved prompt caches whose restore never finished: llama.cpp aborts the whole process on some inconsistencies in a
sequence state (a GGML_ASSERT), which no exception can catch, so the checks before it (prompt_store.read_entry)
cannot promise a file is safe, only undamaged.

Before a saved file goes to llama.cpp the worker writes a marker naming it, and removes the marker once llama.cpp
returns. A marker whose worker no longer runs means that worker ended while restoring the file: the next load of
the same model removes the file instead of handing it over again, so one bad file costs one failed load, not
every later load of the model. A worker killed while restoring for another reason (a load timeout, a SIGKILL)
loses the file too: the safe side, it is only a cache.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

MARKER_PREFIX = ".restoring-"
MAX_NAME_CHARS = 256


@contextlib.contextmanager
def restoring(directory: Path, key: str, name: str) -> Iterator[None]:
    """Mark `name` (a saved file of `key` in `directory`) as being restored by this process while the block runs.
    OSError if the marker cannot be written: the file is then not restored."""
    marker = directory / f"{MARKER_PREFIX}{key}-{os.getpid()}"
    marker.write_text(name)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()


def unfinished_restores(directory: Path, key: str) -> list[str]:
    """Names of `key`'s saved files whose restore a process that no longer runs began and never finished; their
    markers are removed."""
    names: list[str] = []
    with contextlib.suppress(OSError):
        for marker in directory.glob(f"{MARKER_PREFIX}{key}-*"):
            pid = marker.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _running(int(pid)):
                continue
            with contextlib.suppress(OSError):
                name = marker.read_text()[:MAX_NAME_CHARS]
                marker.unlink()
                if name.startswith(f"{key}-") and Path(name).name == name:
                    names.append(name)
    return names


def _running(pid: int) -> bool:
    if pid == os.getpid():  # a marker of this process's pid from before: another process that had the same pid
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
