"""Saved prompt caches on disk: which prefixes to keep, their files, their key, and the directory's size cap.

A generative model's worker saves the KV of its longest cached prompt prefixes when the model unloads (idle,
evicted, shutdown) and restores them when it loads again (server/engine/prompt_cache.py does the llama.cpp
part). Pure file and list logic here, no llama.cpp: the file format, the key that says which model and settings
a file belongs to, and the least-recently-used eviction that keeps the directory under its cap.

A file is `<key>-<tokens digest>.kv`:

    MAGIC | header length (uint32 LE) | header (JSON: key, n_tokens, state_bytes, sha256) | tokens (int32 LE) | state

where `state` is llama.cpp's sequence state (llama_state_seq_get_data) and `sha256` covers tokens and state, so a
damaged file is refused before llama.cpp reads it (llama.cpp asserts, and aborts the process, on some
inconsistencies). Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from server.engine.prefix import common_prefix

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"SLMKV\x00\x01\n"
SUFFIX = ".kv"
TEMP_SUFFIX = ".tmp"
MIN_SAVED_TOKENS = 256  # shorter prefixes (short chats) are not worth a file
MAX_HEADER_BYTES = 4096
STALE_TEMP_S = 3600.0  # a temporary file this old was left by a worker killed while saving
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class PromptCacheConfig:
    """Where saved prompt caches live, how many bytes they may take in all (0: none saved or restored), and how long
    a file is kept after its last use (a save or a restore; 0: until the cap evicts it)."""

    directory: Path
    max_bytes: int
    min_tokens: int = MIN_SAVED_TOKENS
    max_age_s: float = DEFAULT_MAX_AGE_S

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0


class BadEntry(Exception):
    """A saved file that cannot be restored (another key, truncated, damaged): it is removed."""


@dataclass(frozen=True)
class SavedPrefix:
    tokens: list[int]
    state: bytearray  # llama.cpp's sequence state


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int
    mtime: float


def cache_key(identity: Mapping[str, object]) -> str:
    """The key of everything that decides the KV of a token sequence (model file, settings, llama.cpp build)."""
    canonical = json.dumps({**identity, "format": FORMAT_VERSION}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def file_identity(path: Path) -> dict[str, object]:
    """A model file as the key sees it: its resolved path, inode, size, and modification and change times (a file
    replaced by another, even one of the same size copied with its modification time kept, differs)."""
    resolved = path.resolve()
    stat = resolved.stat()
    return {
        "file": str(resolved),
        "inode": stat.st_ino,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
    }


def entry_name(key: str, tokens: Sequence[int]) -> str:
    return f"{key}-{hashlib.sha256(_token_bytes(tokens)).hexdigest()[:16]}{SUFFIX}"


def prefixes_to_save(
    sequences: Sequence[Sequence[int]], min_tokens: int, known: Sequence[Sequence[int]] = ()
) -> list[tuple[int, int]]:
    """Which cached prefixes to save, as (index in `sequences`, tokens): `sequences` are the KV sequences' cached
    tokens, most recently used first; `known`, the prefixes restored at load (on disk already).

    A sequence that shares at least `min_tokens` with another (or with a known prefix) is saved up to what they
    share (the system prompt, not one conversation's tail); one that shares less is saved whole (one long
    conversation). A prefix that another chosen one already holds is not saved twice."""
    chosen: list[tuple[int, int]] = []
    shared = _longest_shared([*sequences, *known])
    for i, tokens in enumerate(sequences):
        length = shared[i] if shared[i] >= min_tokens else len(tokens)
        if length < min_tokens:
            continue
        prefix = tokens[:length]
        if any(n >= length and list(sequences[j][:length]) == list(prefix) for j, n in chosen):
            continue
        chosen = [(j, n) for j, n in chosen if not (n <= length and list(sequences[j][:n]) == list(prefix[:n]))]
        chosen.append((i, length))
    return chosen


def _longest_shared(sequences: Sequence[Sequence[int]]) -> list[int]:
    """For each sequence, the longest prefix it shares with any other: in lexicographic order the longest is
    with a neighbour, so that is n log n comparisons, not one per pair."""
    shared = [0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: list(sequences[i]))
    for a, b in itertools.pairwise(order):
        length = common_prefix(sequences[a], sequences[b])
        shared[a], shared[b] = max(shared[a], length), max(shared[b], length)
    return shared


def evictions(files: Sequence[StoredFile], max_bytes: int) -> list[str]:
    """The least recently used files to delete so that the rest take at most `max_bytes`."""
    total = sum(f.size for f in files)
    doomed: list[str] = []
    for stored in sorted(files, key=lambda f: (f.mtime, f.name)):
        if total <= max_bytes:
            break
        doomed.append(stored.name)
        total -= stored.size
    return doomed


def encode_header(key: str, tokens: Sequence[int], state: bytes | bytearray | memoryview) -> bytes:
    digest = hashlib.sha256(_token_bytes(tokens))
    digest.update(state)
    header = json.dumps(
        {"key": key, "n_tokens": len(tokens), "state_bytes": len(state), "sha256": digest.hexdigest()}
    ).encode()
    return MAGIC + _U32.pack(len(header)) + header


def write_entry(directory: Path, key: str, tokens: Sequence[int], state: bytes | bytearray | memoryview) -> Path:
    """Write a saved prefix atomically (a temporary file renamed into place); returns its path."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # prompts: readable by this user only
    target = directory / entry_name(key, tokens)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(encode_header(key, tokens, state))
            out.write(_token_bytes(tokens))
            out.write(state)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return target


def read_entry(path: Path, key: str, max_tokens: int, max_state: int) -> SavedPrefix:
    """A saved prefix, checked whole before anything is handed to llama.cpp; BadEntry if it is not one of ours
    for this key, or damaged. A state larger than `max_state` (what one sequence of this model can hold) is refused
    before it is read into memory."""
    with path.open("rb") as source:
        if source.read(len(MAGIC)) != MAGIC:
            raise BadEntry("not a saved prompt cache (wrong magic)")
        raw_length = source.read(_U32.size)
        if len(raw_length) != _U32.size:
            raise BadEntry("truncated header")
        (header_length,) = _U32.unpack(raw_length)
        if header_length > MAX_HEADER_BYTES:
            raise BadEntry(f"header of {header_length} bytes")
        try:
            header = json.loads(source.read(header_length))
            saved_key, n_tokens, state_bytes, sha256 = (
                header["key"],
                header["n_tokens"],
                header["state_bytes"],
                header["sha256"],
            )
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise BadEntry(f"unreadable header ({exc.__class__.__name__})") from None
        if saved_key != key:
            raise BadEntry("saved for another model file or other settings")
        if not (isinstance(n_tokens, int) and 0 < n_tokens <= max_tokens):
            raise BadEntry(f"{n_tokens!r} tokens (this model holds 1 to {max_tokens} per sequence)")
        if not (isinstance(state_bytes, int) and state_bytes > 0) or not isinstance(sha256, str):
            raise BadEntry("unreadable header")
        if state_bytes > max_state:
            raise BadEntry(f"a state of {state_bytes} bytes (one sequence of this model holds at most {max_state})")
        body_start = len(MAGIC) + _U32.size + header_length
        expected = body_start + 4 * n_tokens + state_bytes
        actual = os.fstat(source.fileno()).st_size
        if actual != expected:
            raise BadEntry(f"{actual} bytes, {expected} expected (truncated or extended)")
        token_bytes = source.read(4 * n_tokens)
        state = bytearray(state_bytes)
        if source.readinto(state) != state_bytes:
            raise BadEntry("truncated state")
    digest = hashlib.sha256(token_bytes)
    digest.update(state)
    if digest.hexdigest() != sha256:
        raise BadEntry("checksum mismatch (damaged)")
    tokens = list(struct.unpack(f"<{n_tokens}i", token_bytes))
    if path.name != entry_name(key, tokens):
        raise BadEntry("its name does not match its tokens")
    return SavedPrefix(tokens, state)


def saved_entries(directory: Path, key: str) -> list[Path]:
    """This key's saved files, most recently used first."""
    try:
        found = [(p.stat().st_mtime, p) for p in directory.glob(f"{key}-*{SUFFIX}") if p.is_file()]
    except OSError:
        return []
    return [p for _, p in sorted(found, key=lambda item: (item[0], item[1].name), reverse=True)]


def touch(path: Path) -> None:
    """Mark a file used now (the cap evicts by modification time)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def remove(path: Path, why: str) -> None:
    logger.warning("prompt cache: removing %s: %s", path.name, why)
    with contextlib.suppress(OSError):
        path.unlink()


def delete_expired(directory: Path, max_age_s: float) -> list[str]:
    """Delete saved files (of every model) last used more than `max_age_s` ago (0: none); returns their names."""
    if max_age_s <= 0:
        return []
    expired: list[str] = []
    now = time.time()
    with contextlib.suppress(OSError):
        for path in directory.glob(f"*{SUFFIX}"):
            with contextlib.suppress(OSError):
                if now - path.stat(follow_symlinks=False).st_mtime > max_age_s:
                    path.unlink()
                    expired.append(path.name)
    if expired:
        logger.info("prompt cache: deleted %d file(s) unused for over %.0f s", len(expired), max_age_s)
    return sorted(expired)


def enforce_cap(directory: Path, max_bytes: int, max_age_s: float = 0.0) -> list[str]:
    """Delete saved files (of every model) last used more than `max_age_s` ago (0: none for their age), then the
    least recently used until the directory holds at most `max_bytes`, and temporary files left by a worker killed
    while saving; returns the names deleted."""
    expired = delete_expired(directory, max_age_s)
    files: list[StoredFile] = []
    now = time.time()
    try:
        listing = list(os.scandir(directory))
    except OSError:
        return []
    for entry in listing:
        try:
            stat = entry.stat(follow_symlinks=False)
        except OSError:  # deleted meanwhile by another worker
            continue
        if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
            files.append(StoredFile(entry.name, stat.st_size, stat.st_mtime))
        elif entry.name.endswith(TEMP_SUFFIX) and now - stat.st_mtime > STALE_TEMP_S:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    doomed = evictions(files, max_bytes)
    for name in doomed:
        with contextlib.suppress(OSError):
            (directory / name).unlink()
    if doomed:
        logger.info(
            "prompt cache: evicted %d least recently used file(s) to keep under %d bytes", len(doomed), max_bytes
        )
    return expired + doomed


def _token_bytes(tokens: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(tokens)}i", *tokens)
