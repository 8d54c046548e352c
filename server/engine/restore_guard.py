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
import re
from collections.abc import Iterator
from pathlib import Path

MARKER_PREFIX = ".restoring-"
MAX_NAME_CHARS = 256
_PID = re.compile(r"[1-9][0-9]{0,8}")
_ENTRY = re.compile(r"[0-9a-f]+-[0-9a-f]{16}\.kv")  # prompt_store.entry_name's shape


class RestoreUnguarded(Exception):
    """The marker could not be written (a read-only or full directory): nothing is restored unguarded."""


@contextlib.contextmanager
def restoring(directory: Path, key: str, name: str) -> Iterator[None]:
    """Mark `name` (a saved file of `key` in `directory`) as being restored by this process while the block runs;
    RestoreUnguarded if the marker cannot be written."""
    marker = directory / f"{MARKER_PREFIX}{key}-{os.getpid()}"
    try:
        marker.write_text(name, encoding="ascii")
    except OSError as exc:
        raise RestoreUnguarded(str(exc)) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()


def unfinished_restores(directory: Path, key: str) -> list[str]:
    """Names of `key`'s saved files whose restore a process that no longer runs began and never finished; their
    markers are removed. Markers that are not this module's (another shape of name or pid) are left alone."""
    names: list[str] = []
    with contextlib.suppress(OSError):
        for marker in directory.glob(f"{MARKER_PREFIX}{key}-*"):
            pid = marker.name.rsplit("-", 1)[-1]
            if not _PID.fullmatch(pid) or _running(int(pid)):
                continue
            with contextlib.suppress(OSError):
                name = marker.read_bytes()[:MAX_NAME_CHARS].decode("ascii", "replace")
                marker.unlink()
                if name.startswith(f"{key}-") and _ENTRY.fullmatch(name):
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
