"""Saved prompt caches on disk (server/engine/prompt_store.py): the key, which prefixes are saved, the file format
and its checks, and the least-recently-used cap."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from server.config import ModelSpec, PathSource
from server.engine import prompt_store
from server.engine.prompt_cache import PromptCache
from server.engine.prompt_store import (
    MAGIC,
    BadEntry,
    PromptCacheConfig,
    StoredFile,
    cache_key,
    enforce_cap,
    entry_name,
    evictions,
    file_identity,
    prefixes_to_save,
    read_entry,
    saved_entries,
    write_entry,
)

IDENTITY = {
    "file": "/models/m.gguf",
    "size": 100,
    "mtime_ns": 1,
    "n_ctx": 2048,
    "parallel": 4,
    "n_batch": 512,
    "cache_type_k": "f16",
    "cache_type_v": "f16",
    "flash_attn": True,
    "extra_bufts": False,
}
KEY = cache_key(IDENTITY)
STATE = bytes(range(256)) * 40
TOKENS = list(range(1000, 1300))


# -- key --------------------------------------------------------------------------------------------------------
def test_the_key_is_stable_and_changes_with_every_part_of_the_identity():
    assert cache_key(dict(reversed(list(IDENTITY.items())))) == KEY
    changes = {
        "file": "/models/other.gguf",
        "size": 101,
        "mtime_ns": 2,
        "n_ctx": 4096,
        "parallel": 2,
        "n_batch": 256,
        "cache_type_k": "q8_0",
        "cache_type_v": "q8_0",
        "flash_attn": False,
        "extra_bufts": True,
    }
    keys = {cache_key({**IDENTITY, field: value}) for field, value in changes.items()}
    assert len(keys) == len(changes) and KEY not in keys


def test_a_replaced_model_file_has_another_identity(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    first = file_identity(model)
    assert first["file"] == str(model.resolve()) and first["size"] == 64
    os.utime(model, ns=(first["mtime_ns"] + 10**9, first["mtime_ns"] + 10**9))  # type: ignore[operator]
    assert file_identity(model) != first
    link = tmp_path / "link.gguf"
    link.symlink_to(model)
    assert file_identity(link) == file_identity(model)  # the file itself, not the name it is reached by


# -- what is saved ----------------------------------------------------------------------------------------------
SYSTEM = list(range(300))


def test_a_prefix_sequences_share_is_saved_once_up_to_what_they_share():
    sequences = [[*SYSTEM, 1, 2, 3], [*SYSTEM, 4, 5], SYSTEM + [6] * 50]
    assert prefixes_to_save(sequences, 256) == [(0, 300)]


def test_a_lone_long_sequence_is_saved_whole_and_short_ones_not_at_all():
    lone = [7, *list(range(500, 900))]
    assert prefixes_to_save([list(range(100)), lone, [8] * 30], 256) == [(1, len(lone))]
    assert prefixes_to_save([list(range(100)), [5] * 200], 256) == []
    assert prefixes_to_save([], 256) == []


def test_a_shorter_shared_prefix_than_the_minimum_saves_each_whole():
    # They share 10 tokens: each is its own conversation, saved whole (most recently used first).
    first, second = list(range(10)) + [1] * 300, list(range(10)) + [2] * 400
    assert prefixes_to_save([first, second], 256) == [(0, 310), (1, 410)]


def test_a_prefix_held_by_a_chosen_one_is_not_saved_twice():
    assert prefixes_to_save([SYSTEM, SYSTEM + [1] * 10, SYSTEM + [2] * 10], 256) == [(0, 300)]
    assert prefixes_to_save([SYSTEM, list(SYSTEM)], 256) == [(0, 300)]
    # Two groups, each with its own shared prefix.
    other = list(range(5000, 5400))
    sequences = [[*SYSTEM, 1], [*other, 1], [*SYSTEM, 2], [*other, 2]]
    assert prefixes_to_save(sequences, 256) == [(0, 300), (1, 400)]


# -- the cap ----------------------------------------------------------------------------------------------------
def test_the_least_recently_used_files_go_first_until_the_rest_fit():
    files = [StoredFile("new", 40, 30.0), StoredFile("old", 50, 10.0), StoredFile("mid", 30, 20.0)]
    assert evictions(files, 120) == []
    assert evictions(files, 119) == ["old"]
    assert evictions(files, 40) == ["old", "mid"]
    assert evictions(files, 0) == ["old", "mid", "new"]


def test_enforce_cap_deletes_the_oldest_files_and_stale_temporaries(tmp_path):
    now = time.time()
    for age, name in enumerate(["c.kv", "b.kv", "a.kv"]):  # a.kv the oldest
        path = tmp_path / name
        path.write_bytes(bytes(100))
        os.utime(path, (now - 10 * age, now - 10 * age))
    stale, fresh = tmp_path / ".stale.tmp", tmp_path / ".fresh.tmp"
    stale.write_bytes(bytes(10))
    fresh.write_bytes(bytes(10))  # another worker is writing it now
    os.utime(stale, (now - 2 * prompt_store.STALE_TEMP_S, now - 2 * prompt_store.STALE_TEMP_S))
    (tmp_path / "notes.txt").write_text("not ours")
    assert enforce_cap(tmp_path, 200) == ["a.kv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fresh.tmp", "b.kv", "c.kv", "notes.txt"]
    assert enforce_cap(tmp_path, 0) == ["b.kv", "c.kv"]
    assert enforce_cap(tmp_path / "missing", 0) == []


def test_enforce_cap_deletes_files_unused_for_longer_than_the_maximum_age_first(tmp_path):
    now = time.time()
    for name, age in [("old.kv", 3 * 3600), ("recent.kv", 60), ("mid.kv", 1800)]:
        path = tmp_path / name
        path.write_bytes(bytes(100))
        os.utime(path, (now - age, now - age))
    assert enforce_cap(tmp_path, 10_000, max_age_s=3600) == ["old.kv"]
    assert enforce_cap(tmp_path, 150, max_age_s=3600) == ["mid.kv"]  # then the cap, least recently used first
    assert enforce_cap(tmp_path, 10_000, max_age_s=0) == []  # 0: no age limit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recent.kv"]


# -- the files --------------------------------------------------------------------------------------------------
def test_a_saved_prefix_reads_back_whole(tmp_path):
    path = write_entry(tmp_path / "cache", KEY, TOKENS, memoryview(STATE))
    assert path.name == entry_name(KEY, TOKENS) and path.name.startswith(KEY + "-")
    saved = read_entry(path, KEY, max_tokens=len(TOKENS), max_state=1 << 30)
    assert saved.tokens == TOKENS and bytes(saved.state) == STATE
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]  # no temporary left
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700  # prompts: this user only
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def refuse(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(prompt_store.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_entry(tmp_path, KEY, TOKENS, STATE)
    assert list(tmp_path.iterdir()) == []


def damaged(tmp_path: Path, how: str) -> Path:
    path = write_entry(tmp_path, KEY, TOKENS, STATE)
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[:-100]
    elif how == "extended":
        data += b"\0"
    elif how == "flipped state":
        data[-500] ^= 0x01
    elif how == "flipped token":
        data[len(data) - len(STATE) - 8] ^= 0x01
    elif how == "magic":
        data[:4] = b"GGUF"
    elif how == "empty":
        data = bytearray()
    elif how == "huge header":
        data[len(MAGIC) : len(MAGIC) + 4] = (10**6).to_bytes(4, "little")
    elif how in ("header garbage", "header list", "header deep", "header types"):
        body = data[len(MAGIC) + 4 + int.from_bytes(data[len(MAGIC) : len(MAGIC) + 4], "little") :]
        header = {
            "header garbage": b"{not json",
            "header list": b"[1, 2]",
            "header deep": b"[" * 2000 + b"]" * 2000,
            "header types": json.dumps({"key": KEY, "n_tokens": "300", "state_bytes": 1, "sha256": 5}).encode(),
        }[how]
        data = bytearray(MAGIC + len(header).to_bytes(4, "little") + header + body)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "how",
    [
        "truncated",
        "extended",
        "flipped state",
        "flipped token",
        "magic",
        "empty",
        "huge header",
        "header garbage",
        "header list",
        "header deep",
        "header types",
    ],
)
def test_a_damaged_file_is_refused(tmp_path, how):
    with pytest.raises(BadEntry):
        read_entry(damaged(tmp_path, how), KEY, max_tokens=4096, max_state=1 << 30)


def test_a_file_of_another_key_or_too_long_for_the_context_or_renamed_is_refused(tmp_path):
    path = write_entry(tmp_path, KEY, TOKENS, STATE)
    with pytest.raises(BadEntry, match="another model file"):
        read_entry(path, cache_key({**IDENTITY, "n_ctx": 4096}), max_tokens=4096, max_state=1 << 30)
    with pytest.raises(BadEntry, match="tokens"):
        read_entry(path, KEY, max_tokens=len(TOKENS) - 1, max_state=1 << 30)
    renamed = path.with_name(entry_name(KEY, TOKENS[:-1]))
    path.rename(renamed)
    with pytest.raises(BadEntry, match="name"):
        read_entry(renamed, KEY, max_tokens=4096, max_state=1 << 30)


def test_a_state_larger_than_one_sequence_holds_is_refused_before_it_is_read(tmp_path):
    path = write_entry(tmp_path, KEY, TOKENS, STATE)
    with pytest.raises(BadEntry, match="at most"):
        read_entry(path, KEY, max_tokens=4096, max_state=len(STATE) - 1)
    assert read_entry(path, KEY, max_tokens=4096, max_state=len(STATE)).tokens == TOKENS


def test_a_model_file_replaced_by_one_of_the_same_size_and_time_has_another_identity(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"a" * 100)
    before = file_identity(model)
    replacement = tmp_path / "new.gguf"
    replacement.write_bytes(b"b" * 100)
    os.utime(replacement, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns))  # cp -p, rsync -a
    replacement.replace(model)
    assert file_identity(model)["mtime_ns"] == before["mtime_ns"] and file_identity(model) != before


def test_saved_entries_are_this_keys_most_recently_used_first(tmp_path):
    other = cache_key({**IDENTITY, "cache_type_k": "q8_0"})
    now = time.time()
    paths = [write_entry(tmp_path, KEY, [i] * 300, STATE) for i in range(3)]
    write_entry(tmp_path, other, [9] * 300, STATE)
    for age, path in enumerate(paths):
        os.utime(path, (now - age, now - age))
    assert saved_entries(tmp_path, KEY) == paths
    prompt_store.touch(paths[2])
    assert saved_entries(tmp_path, KEY) == [paths[2], paths[0], paths[1]]
    assert saved_entries(tmp_path / "missing", KEY) == []


def test_a_prefix_shared_with_one_restored_at_load_is_saved_up_to_what_they_share():
    # The restored system prompt and one conversation: the system prompt is what comes back, not the conversation.
    restored = SYSTEM + [1] * 20
    assert prefixes_to_save([SYSTEM + [2] * 30], 256, known=[restored]) == [(0, 300)]
    assert prefixes_to_save([[9] * 300], 256, known=[restored]) == [(0, 300)]  # nothing shared: whole
    assert prefixes_to_save([], 256, known=[restored]) == []  # known ones are never saved again


def test_a_models_key_follows_its_file_and_every_setting_that_decides_its_kv(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(bytes(64))
    config = PromptCacheConfig(tmp_path / "cache", 1024)
    base = ModelSpec(name="m", source=PathSource(path=model))

    def key(spec: ModelSpec, extra_bufts: bool = False) -> str:
        cache = PromptCache.of(config, spec, model, extra_bufts=extra_bufts)
        assert cache is not None
        return cache.key

    changes = [
        {"n_ctx": 4096},
        {"parallel": 2},
        {"n_batch": 256},
        {"cache_type_k": "q8_0"},
        {"cache_type_v": "q8_0"},
        {"flash_attn": False},
    ]
    keys = {key(base.model_copy(update=change)) for change in changes} | {key(base, extra_bufts=True)}
    assert len(keys) == len(changes) + 1 and key(base) not in keys
    # What does not change the KV keeps the key: the name, the queue, the keep_alive, the threads.
    same = base.model_copy(update={"name": "other", "max_queue": 1, "keep_alive": None, "n_threads": 1})
    assert key(same) == key(base)
    assert PromptCache.of(config, base.model_copy(update={"prompt_cache": False}), model, extra_bufts=False) is None
    assert PromptCache.of(None, base, model, extra_bufts=False) is None
    assert PromptCache.of(PromptCacheConfig(tmp_path, 0), base, model, extra_bufts=False) is None
