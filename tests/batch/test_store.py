"""The store's checks that must hold under concurrent requests: each one made in the same transaction as the
write it guards (quota and upload, open batches and create, an open batch's input and delete)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from server.batch.rows import FileRow
from server.batch.store import BatchStore
from server.errors import StorageLimitError, TooManyOpenBatchesError


@pytest.fixture
def store(tmp_path) -> BatchStore:
    return BatchStore(tmp_path, clock=lambda: 1_000_000.0)


def row(file_id: str, size: int = 100, owner: str = "o", expires_at: int | None = None) -> FileRow:
    return FileRow(file_id, owner, "batch", "in.jsonl", size, 1, 1_000_000, expires_at)


def spooled(store: BatchStore, name: str):
    path = store.blobs._scratch / name
    path.write_bytes(b"{}\n")
    return path


def batch_body(file_id: str) -> dict:
    return {"status": "validating", "input_file_id": file_id, "endpoint": "/v1/chat/completions"}


def concurrently(count: int, work: Callable[[int], object], refusal: type[Exception]) -> list[object]:
    """`work(i)` for i in range(count), each on its own thread at once: what each returned or the refusal."""
    results: list[object] = []

    def one(i: int) -> None:
        try:
            results.append(work(i))
        except refusal as exc:
            results.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_uploads_never_exceed_the_quota_and_a_refused_one_leaves_nothing(store, monkeypatch):
    place = store.blobs.place

    def slow_place(temp, blob_id) -> None:
        time.sleep(0.02)  # wide open, were the quota checked outside the transaction that records the file
        place(temp, blob_id)

    monkeypatch.setattr(store.blobs, "place", slow_place)

    def upload(i: int) -> int:
        store.add_file(row(f"file-{i}"), blob=spooled(store, f"s{i}"), max_stored_bytes=350)
        return i

    results = concurrently(8, upload, StorageLimitError)
    kept = [r for r in results if isinstance(r, int)]
    assert len(kept) == 3 and store.stored_bytes("o") == 300
    assert sorted(p.name for p in store.blobs._root.iterdir()) == sorted(f"file-{i}" for i in kept)
    assert store.stored_bytes("other") == 0  # per owner


def test_the_open_batch_limit_holds_under_concurrent_creates(store):
    store.add_file(row("file-in"))
    outcomes = concurrently(
        6, lambda i: store.add_batch(f"batch_{i}", "o", batch_body("file-in"), max_open=2), TooManyOpenBatchesError
    )
    assert outcomes.count(True) == 2 and len(store.open_batches("o")) == 2
    assert all(isinstance(o, TooManyOpenBatchesError) for o in outcomes if o is not True)


def test_a_batch_cannot_be_created_on_a_file_that_is_gone_and_an_open_batchs_input_cannot_be_deleted(store):
    assert store.add_batch("batch_x", "o", batch_body("file-none")) is False
    store.add_file(row("file-in"))
    assert store.add_batch("batch_1", "o", batch_body("file-in")) is True
    assert store.delete_file("o", "file-in") == "in_use"
    store.update_batch("batch_1", "completed")
    assert store.delete_file("o", "file-in") == "deleted"
    assert store.delete_file("o", "file-in") == "missing"


def test_an_expired_file_is_gone_for_lookups_lists_the_quota_and_new_batches(store):
    store.add_file(row("file-old", expires_at=1_000_000))  # expires at this very second
    store.add_file(row("file-new", expires_at=1_000_001))
    assert store.file("file-old", "o") is None and store.file("file-new", "o") is not None
    listed = store.files("o", purpose=None, after=None, limit=10, ascending=True)
    assert [f.id for f in listed] == ["file-new"] and store.stored_bytes("o") == 100
    assert store.add_batch("batch_1", "o", batch_body("file-old")) is False
    assert store.delete_file("o", "file-old") == "missing"
