"""The batch runner over a scripted line executor: resuming after a crash, cancel mid-run, expiry, waiting for
room, preemption, transient failures, expired files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from server.batch.runner import ROOM_RECHECK_S, BatchRunner, LineOutcome
from server.batch.store import BatchStore, FileRow
from server.errors import NoRoomForBatch, PreemptedError
from server.metrics import Metrics

ENDPOINT = "/v1/chat/completions"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Executor:
    """Answers each line with its own body; a line's `script` can raise first."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.raises: dict[str, list[BaseException]] = {}
        self.statuses: dict[str, list[int]] = {}
        self.gate: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}

    async def __call__(self, endpoint: str, body: dict) -> LineOutcome:
        name = body["name"]
        self.calls.append(name)
        if name in self.started:
            self.started[name].set()
        if name in self.gate:
            await self.gate[name].wait()
        if self.raises.get(name):
            raise self.raises[name].pop(0)
        status = self.statuses[name].pop(0) if self.statuses.get(name) else 200
        return LineOutcome(status, {"echo": name}, (3, 2))


def write_input(store: BatchStore, names: list[str], owner: str = "o") -> str:
    lines = [
        json.dumps({"custom_id": f"id-{n}", "method": "POST", "url": ENDPOINT, "body": {"name": n, "model": "m"}})
        for n in names
    ]
    size = store.blobs.write_lines("file-in", lines)
    store.add_file(FileRow("file-in", owner, "batch", "in.jsonl", size, len(lines), store.now(), None))
    return "file-in"


def add_batch(store: BatchStore, file_id: str, batch_id: str = "batch_1") -> str:
    now = store.now()
    body = {
        "endpoint": ENDPOINT,
        "input_file_id": file_id,
        "completion_window": "24h",
        "status": "validating",
        "created_at": now,
        "expires_at": now + 24 * 3600,
    }
    store.add_batch(batch_id, "o", body)
    return batch_id


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path, clock) -> BatchStore:
    return BatchStore(tmp_path, clock)


def make_runner(store: BatchStore, executor: Callable, width: int = 2) -> BatchRunner:
    return BatchRunner(store, executor, capacity=lambda e, m: width, metrics=Metrics(), output_ttl_s=3600)


async def settle(runner: BatchRunner) -> None:
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.settled(), 30)
    finally:
        task.cancel()


def output(store: BatchStore, batch_id: str) -> tuple[list[dict], list[dict]]:
    row = store.batch(batch_id)
    assert row is not None

    def read(key: str) -> list[dict]:
        file_id = row.body.get(key)
        if file_id is None:
            return []
        return [json.loads(line) for line in store.blobs.path(file_id).read_text().splitlines()]

    return read("output_file_id"), read("error_file_id")


def test_a_restarted_runner_runs_only_the_lines_without_a_result(store):
    asyncio.run(_test_a_restarted_runner_runs_only_the_lines_without_a_result(store))


async def _test_a_restarted_runner_runs_only_the_lines_without_a_result(store):
    batch_id = add_batch(store, write_input(store, ["a", "b", "c", "d"]))
    store.update_batch(batch_id, "in_progress", total=4, model="m")
    # What a server killed mid-batch left: two lines committed.
    for line, name in ((1, "a"), (3, "c")):
        record = {"id": "x", "custom_id": f"id-{name}", "response": {"status_code": 200, "body": {}}, "error": None}
        store.add_result(batch_id, line, True, record, (1, 1))
    executor = Executor()
    await settle(make_runner(store, executor))
    assert sorted(executor.calls) == ["b", "d"]
    done, errors = output(store, batch_id)
    assert [item["custom_id"] for item in done] == ["id-a", "id-b", "id-c", "id-d"] and errors == []
    row = store.batch(batch_id)
    assert row.status == "completed" and (row.total, row.completed, row.failed) == (4, 4, 0)
    assert (row.input_tokens, row.output_tokens) == (1 + 1 + 3 + 3, 1 + 1 + 2 + 2)


def test_the_same_line_is_never_counted_twice(store):
    asyncio.run(_test_the_same_line_is_never_counted_twice(store))


async def _test_the_same_line_is_never_counted_twice(store):
    batch_id = add_batch(store, write_input(store, ["a"]))
    record = {"custom_id": "id-a"}
    assert store.add_result(batch_id, 1, True, record, (0, 0))
    assert not store.add_result(batch_id, 1, False, record, (0, 0))
    assert (store.batch(batch_id).completed, store.batch(batch_id).failed) == (1, 0)


def test_cancel_mid_run_ends_running_lines_and_reports_the_rest(store):
    asyncio.run(_test_cancel_mid_run_ends_running_lines_and_reports_the_rest(store))


async def _test_cancel_mid_run_ends_running_lines_and_reports_the_rest(store):
    batch_id = add_batch(store, write_input(store, ["a", "b", "c"]))
    executor = Executor()
    executor.gate["b"] = asyncio.Event()  # never set: b runs until it is cancelled
    executor.started["b"] = asyncio.Event()
    runner = make_runner(store, executor, width=1)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(executor.started["b"].wait(), 30)
        assert store.request_cancel(batch_id) is not None
        runner.notify()
        await asyncio.wait_for(runner.settled(), 30)
    finally:
        task.cancel()
    row = store.batch(batch_id)
    assert row.status == "cancelled" and row.body["cancelled_at"] and (row.completed, row.failed) == (1, 2)
    done, errors = output(store, batch_id)
    assert [item["custom_id"] for item in done] == ["id-a"]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("id-b", "batch_cancelled"),
        ("id-c", "batch_cancelled"),
    ]
    assert "c" not in executor.calls


def test_a_batch_past_its_window_expires_with_an_error_line_for_each_unrun_line(store, clock):
    asyncio.run(_test_a_batch_past_its_window_expires_with_an_error_line_for_each_unrun_line(store, clock))


async def _test_a_batch_past_its_window_expires_with_an_error_line_for_each_unrun_line(store, clock):
    batch_id = add_batch(store, write_input(store, ["a", "b"]))
    store.update_batch(batch_id, "in_progress", total=2, model="m")
    clock.now += 24 * 3600
    executor = Executor()
    await settle(make_runner(store, executor))
    row = store.batch(batch_id)
    assert row.status == "expired" and row.body["expired_at"] and executor.calls == []
    assert [e["error"]["code"] for e in output(store, batch_id)[1]] == ["batch_expired", "batch_expired"]


def test_a_line_waits_for_room_and_runs_again_when_preempted(store):
    asyncio.run(_test_a_line_waits_for_room_and_runs_again_when_preempted(store))


async def _test_a_line_waits_for_room_and_runs_again_when_preempted(store):
    batch_id = add_batch(store, write_input(store, ["a"]))
    room = asyncio.Event()

    async def wait() -> None:
        await room.wait()

    executor = Executor()
    executor.raises["a"] = [NoRoomForBatch(wait), PreemptedError()]
    runner = make_runner(store, executor)
    task = asyncio.create_task(runner.run())
    executor.started["a"] = asyncio.Event()
    try:
        await asyncio.wait_for(executor.started["a"].wait(), 30)  # the first try is under way (it waits for room)
        room.set()
        await asyncio.wait_for(runner.settled(), ROOM_RECHECK_S * 4)
    finally:
        task.cancel()
    assert executor.calls == ["a", "a", "a"]  # no room, preempted, done
    row = store.batch(batch_id)
    assert (row.completed, row.failed) == (1, 0)


def test_a_crashed_model_is_tried_again_then_recorded(store):
    asyncio.run(_test_a_crashed_model_is_tried_again_then_recorded(store))


async def _test_a_crashed_model_is_tried_again_then_recorded(store):
    batch_id = add_batch(store, write_input(store, ["a", "b"]))
    executor = Executor()
    executor.statuses["a"] = [503, 200]
    executor.statuses["b"] = [503, 503, 503, 503]
    await settle(make_runner(store, executor))
    assert executor.calls.count("a") == 2 and executor.calls.count("b") == 3
    done, errors = output(store, batch_id)
    assert [d["custom_id"] for d in done] == ["id-a"]
    assert errors[0]["custom_id"] == "id-b" and errors[0]["response"]["status_code"] == 503


def test_expired_files_are_removed_but_not_while_a_batch_reads_them(store, clock):
    asyncio.run(_test_expired_files_are_removed_but_not_while_a_batch_reads_them(store, clock))


async def _test_expired_files_are_removed_but_not_while_a_batch_reads_them(store, clock):
    store.add_file(FileRow("file-old", "o", "batch", "a", 1, 1, store.now(), store.now() + 10))
    store.blobs.write_lines("file-old", ["{}"])
    file_id = write_input(store, ["a"])
    batch_id = add_batch(store, file_id)
    with store._lock:
        store._db.execute("UPDATE files SET expires_at = ? WHERE id = ?", (store.now() + 10, file_id))
    clock.now += 20
    assert store.remove_expired_files() == ["file-old"]
    assert not store.blobs.path("file-old").exists() and store.file(file_id, "o") is not None
    store.update_batch(batch_id, "cancelled")
    assert store.remove_expired_files() == [file_id]


def test_orphan_blobs_are_removed_at_start(store):
    asyncio.run(_test_orphan_blobs_are_removed_at_start(store))


async def _test_orphan_blobs_are_removed_at_start(store):
    store.blobs.write_lines("file-orphan", ["x"])
    await settle(make_runner(store, Executor()))
    assert not store.blobs.path("file-orphan").exists()
