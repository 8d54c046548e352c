"""The batch runner over a scripted line executor: resuming after a crash, cancel mid-run, expiry, waiting for
room, preemption, transient failures, expired files, turns between owners, failures inside the runner."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable

import pytest

from server.batch import runner as runner_module
from server.batch import slice as slice_module
from server.batch.rows import FileRow
from server.batch.runner import BatchRunner
from server.batch.slice import LineOutcome
from server.batch.store import BatchStore
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


def write_input(store: BatchStore, names: list[str], owner: str = "o", file_id: str = "file-in") -> str:
    lines = [
        json.dumps({"custom_id": f"id-{n}", "method": "POST", "url": ENDPOINT, "body": {"name": n, "model": "m"}})
        for n in names
    ]
    size = store.blobs.write_lines(file_id, lines)
    store.add_file(FileRow(file_id, owner, "batch", "in.jsonl", size, len(lines), store.now(), None))
    return file_id


def add_batch(store: BatchStore, file_id: str, batch_id: str = "batch_1", owner: str = "o") -> str:
    now = store.now()
    body = {
        "endpoint": ENDPOINT,
        "input_file_id": file_id,
        "completion_window": "24h",
        "status": "validating",
        "created_at": now,
        "expires_at": now + 24 * 3600,
    }
    store.add_batch(batch_id, owner, body)
    return batch_id


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path, clock) -> BatchStore:
    return BatchStore(tmp_path, clock)


def make_runner(store: BatchStore, executor: Callable, width: int = 2, turn_s: float = 30) -> BatchRunner:
    return BatchRunner(
        store,
        executor,
        capacity=lambda e, m: width,
        metrics=Metrics(),
        output_ttl_s=3600,
        max_line_bytes=1 << 20,
        turn_s=turn_s,
    )


async def settle(runner: BatchRunner) -> None:
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(runner.settled(), 30)
    finally:
        task.cancel()


def no_room_ever() -> NoRoomForBatch:
    async def wait() -> None:
        await asyncio.Event().wait()

    return NoRoomForBatch(wait)


async def settle_after(runner: BatchRunner, started: asyncio.Event, act: Callable[[], object]) -> None:
    """Run the runner; once `started` is set, `act`; then wait until no batch is open."""
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 30)
        act()
        await asyncio.wait_for(runner.settled(), 30)
    finally:
        task.cancel()


def cancel(store: BatchStore, runner: BatchRunner, batch_id: str) -> None:
    """As POST /v1/batches/{id}/cancel does."""
    assert store.request_cancel(batch_id) is not None
    runner.notify()


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
    await settle_after(runner, executor.started["b"], lambda: cancel(store, runner, batch_id))
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


def test_a_line_waits_for_room_and_runs_again_when_preempted(store, monkeypatch):
    monkeypatch.setattr(slice_module, "ROOM_RECHECK_S", 3600)  # only the room signal can move the line on
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
        await asyncio.wait_for(runner.settled(), 30)
    finally:
        task.cancel()
    assert executor.calls == ["a", "a", "a"]  # no room, preempted, done
    row = store.batch(batch_id)
    assert (row.completed, row.failed) == (1, 0)


def test_a_crashed_or_full_model_is_tried_again_after_pauses_then_recorded(store, monkeypatch):
    pauses: list[float] = []
    sleep = asyncio.sleep

    async def recorded_sleep(seconds: float) -> None:
        pauses.append(seconds)
        await sleep(0)

    monkeypatch.setattr(slice_module.asyncio, "sleep", recorded_sleep)
    asyncio.run(_test_a_crashed_or_full_model_is_tried_again_after_pauses_then_recorded(store))
    assert sorted(pauses) == [1.0, 1.0, 2.0, 4.0]  # a: one pause; b: doubling pauses between its four tries


async def _test_a_crashed_or_full_model_is_tried_again_after_pauses_then_recorded(store):
    batch_id = add_batch(store, write_input(store, ["a", "b"]))
    executor = Executor()
    executor.statuses["a"] = [429, 200]
    executor.statuses["b"] = [503, 503, 503, 503, 503]
    await settle(make_runner(store, executor))
    assert executor.calls.count("a") == 2 and executor.calls.count("b") == 4
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
    assert not store.blobs.path("file-old").exists()
    # Past its expiry the input is gone for clients (a lookup, a list, the quota), but kept for its open batch.
    assert store.file(file_id, "o") is None and store.blobs.path(file_id).exists()
    assert store.files("o", purpose=None, after=None, limit=10, ascending=True) == [] and store.stored_bytes("o") == 0
    store.update_batch(batch_id, "cancelled")
    assert store.remove_expired_files() == [file_id]


def test_orphan_blobs_are_removed_at_start(store):
    asyncio.run(_test_orphan_blobs_are_removed_at_start(store))


async def _test_orphan_blobs_are_removed_at_start(store):
    store.blobs.write_lines("file-orphan", ["x"])
    await make_runner(store, Executor()).prepare()
    assert not store.blobs.path("file-orphan").exists()


def test_a_cancel_ends_a_line_that_waits_for_room(store, monkeypatch):
    monkeypatch.setattr(slice_module, "ROOM_RECHECK_S", 3600)
    asyncio.run(_test_a_cancel_ends_a_line_that_waits_for_room(store))


async def _test_a_cancel_ends_a_line_that_waits_for_room(store):
    batch_id = add_batch(store, write_input(store, ["a", "b"]))
    executor = Executor()
    executor.raises["a"] = [no_room_ever()]
    executor.started["a"] = asyncio.Event()
    runner = make_runner(store, executor, width=1)
    await settle_after(runner, executor.started["a"], lambda: cancel(store, runner, batch_id))
    assert executor.calls == ["a"] and store.batch(batch_id).status == "cancelled"
    assert [e["error"]["code"] for e in output(store, batch_id)[1]] == ["batch_cancelled", "batch_cancelled"]


def test_expiry_ends_a_line_that_waits_for_room(store, clock, monkeypatch):
    monkeypatch.setattr(slice_module, "ROOM_RECHECK_S", 3600)
    asyncio.run(_test_expiry_ends_a_line_that_waits_for_room(store, clock))


async def _test_expiry_ends_a_line_that_waits_for_room(store, clock):
    batch_id = add_batch(store, write_input(store, ["a"]))
    executor = Executor()
    executor.raises["a"] = [no_room_ever()]
    executor.started["a"] = asyncio.Event()
    runner = make_runner(store, executor, width=1)

    def expire() -> None:
        clock.now += 24 * 3600
        runner.notify()  # in a server, the runner's periodic look finds it

    await settle_after(runner, executor.started["a"], expire)
    assert executor.calls == ["a"] and store.batch(batch_id).status == "expired"


def test_a_waiting_batch_is_cancelled_while_another_runs(store):
    asyncio.run(_test_a_waiting_batch_is_cancelled_while_another_runs(store))


async def _test_a_waiting_batch_is_cancelled_while_another_runs(store):
    first = add_batch(store, write_input(store, ["a"]), "batch_1")
    second = add_batch(store, write_input(store, ["b"], file_id="file-two"), "batch_2")
    executor = Executor()
    executor.gate["a"] = asyncio.Event()
    executor.started["a"] = asyncio.Event()
    runner = make_runner(store, executor, width=1)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(executor.started["a"].wait(), 30)
        store.request_cancel(second)
        runner.notify()
        for _ in range(3000):  # the first batch's line is still held: only the second can end
            if store.batch(second).status == "cancelled":
                break
            await asyncio.sleep(0.01)
        assert store.batch(second).status == "cancelled" and store.batch(first).status == "in_progress"
        executor.gate["a"].set()
        await asyncio.wait_for(runner.settled(), 30)
    finally:
        task.cancel()
    assert store.batch(first).status == "completed" and "b" not in executor.calls


def test_owners_take_turns(store):
    asyncio.run(_test_owners_take_turns(store))


async def _test_owners_take_turns(store):
    add_batch(store, write_input(store, ["x1", "x2", "x3"], owner="o1", file_id="file-x"), "batch_x", owner="o1")
    add_batch(store, write_input(store, ["z1"], owner="o1", file_id="file-z"), "batch_z", owner="o1")
    add_batch(store, write_input(store, ["y1", "y2", "y3"], owner="o2", file_id="file-y"), "batch_y", owner="o2")
    executor = Executor()
    await settle(make_runner(store, executor, width=1, turn_s=0))
    # One line a turn while the other owner waits; an owner's own batches run oldest first.
    assert executor.calls == ["x1", "y1", "x2", "y2", "x3", "y3", "z1"]


def test_one_owner_alone_runs_its_batch_without_turns(store):
    asyncio.run(_test_one_owner_alone_runs_its_batch_without_turns(store))


async def _test_one_owner_alone_runs_its_batch_without_turns(store):
    add_batch(store, write_input(store, ["x1", "x2"], file_id="file-x"), "batch_x")
    add_batch(store, write_input(store, ["z1"], file_id="file-z"), "batch_z")
    executor = Executor()
    await settle(make_runner(store, executor, width=1, turn_s=0))
    assert executor.calls == ["x1", "x2", "z1"]


def test_a_failure_inside_the_runner_fails_that_batch_with_its_output_and_the_runner_goes_on(store, monkeypatch):
    monkeypatch.setattr(runner_module, "ERROR_PAUSE_S", 0)
    asyncio.run(_test_a_failure_inside_the_runner_fails_that_batch_with_its_output_and_the_runner_goes_on(store))


async def _test_a_failure_inside_the_runner_fails_that_batch_with_its_output_and_the_runner_goes_on(store):
    first = add_batch(store, write_input(store, ["a", "b", "c"]), "batch_1")
    second = add_batch(store, write_input(store, ["d"], file_id="file-two"), "batch_2")
    executor = Executor()
    executor.raises["b"] = [RuntimeError("a bug")]
    runner = make_runner(store, executor, width=1)
    reads = 0
    open_batches = store.open_batches

    def flaky_open_batches(owner=None):
        nonlocal reads
        reads += 1
        if reads == 2:
            raise OSError("disk hiccup")  # a whole round fails: the loop goes on
        return open_batches(owner)

    store.open_batches = flaky_open_batches
    await settle(runner)
    row = store.batch(first)
    assert row.status == "failed" and row.body["errors"]["data"][0]["code"] == "internal_error"
    done, errors = output(store, first)
    assert [d["custom_id"] for d in done] == ["id-a"]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        ("id-b", "batch_failed"),
        ("id-c", "batch_failed"),
    ]
    assert (row.completed, row.failed) == (1, 2) and store.batch(second).status == "completed"


def test_a_shutdown_during_a_stop_is_not_swallowed(store):
    asyncio.run(_test_a_shutdown_during_a_stop_is_not_swallowed(store))


async def _test_a_shutdown_during_a_stop_is_not_swallowed(store):
    batch_id = add_batch(store, write_input(store, ["a"]))
    store.update_batch(batch_id, "in_progress", total=1, model="m")
    started, cancelled, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_to_cancel(endpoint, body):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            await release.wait()  # the slice waits here for its cancelled line: the runner is cancelled meanwhile
            raise

    from server.batch.input_file import LineFeed

    feed = LineFeed(store.blobs.path("file-in"), 1 << 20, set())
    work = slice_module.BatchSlice(store, slow_to_cancel, Metrics(), store.batch(batch_id), feed, width=1, turn_s=30)
    task = asyncio.create_task(work.run())
    await asyncio.wait_for(started.wait(), 30)
    work.stop.set()
    await asyncio.wait_for(cancelled.wait(), 30)  # the slice has cancelled its line and waits for it
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)


def test_a_last_line_left_waiting_at_expiry_ends_the_batch_expired_not_completed(store, clock, monkeypatch):
    monkeypatch.setattr(slice_module, "ROOM_RECHECK_S", 0.01)  # the line itself sees the expiry
    asyncio.run(_test_a_last_line_left_waiting_at_expiry_ends_the_batch_expired_not_completed(store, clock))


async def _test_a_last_line_left_waiting_at_expiry_ends_the_batch_expired_not_completed(store, clock):
    batch_id = add_batch(store, write_input(store, ["a", "b"]))
    executor = Executor()
    executor.raises["b"] = [no_room_ever() for _ in range(1000)]
    executor.started["b"] = asyncio.Event()
    runner = make_runner(store, executor, width=1)

    def expire() -> None:
        clock.now += 24 * 3600  # nobody notifies: the waiting line finds the expiry on its next look

    await settle_after(runner, executor.started["b"], expire)
    row = store.batch(batch_id)
    assert row.status == "expired" and (row.completed, row.failed) == (1, 1)
    assert [e["error"]["code"] for e in output(store, batch_id)[1]] == ["batch_expired"]


def test_past_its_turn_a_line_without_room_gives_way_to_another_owners_batch(store, monkeypatch):
    monkeypatch.setattr(slice_module, "ROOM_RECHECK_S", 0.01)
    asyncio.run(_test_past_its_turn_a_line_without_room_gives_way_to_another_owners_batch(store))


async def _test_past_its_turn_a_line_without_room_gives_way_to_another_owners_batch(store):
    stuck = add_batch(store, write_input(store, ["a1"], owner="o1", file_id="file-a"), "batch_a", owner="o1")
    free = add_batch(store, write_input(store, ["b1", "b2"], owner="o2", file_id="file-b"), "batch_b", owner="o2")
    executor = Executor()
    executor.raises["a1"] = [no_room_ever() for _ in range(100_000)]  # its model never has room
    executor.started["b2"] = asyncio.Event()
    runner = make_runner(store, executor, width=1, turn_s=0)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(executor.started["b2"].wait(), 30)
        async with asyncio.timeout(30):
            while store.batch(free).status != "completed":
                await asyncio.sleep(0.01)
        cancel(store, runner, stuck)
        await asyncio.wait_for(runner.settled(), 30)
    finally:
        task.cancel()
    assert executor.calls[0] == "a1" and store.batch(stuck).status == "cancelled"
    assert [e["custom_id"] for e in output(store, stuck)[1]] == ["id-a1"]


def test_a_failing_sweep_neither_stops_batches_nor_spins(store):
    asyncio.run(_test_a_failing_sweep_neither_stops_batches_nor_spins(store))


async def _test_a_failing_sweep_neither_stops_batches_nor_spins(store):
    batch_id = add_batch(store, write_input(store, ["a", "b"]))
    sweeps = 0

    def failing_sweep() -> list[str]:
        nonlocal sweeps
        sweeps += 1
        raise OSError("disk hiccup")

    store.remove_expired_files = failing_sweep
    await settle(make_runner(store, Executor()))
    assert store.batch(batch_id).status == "completed" and 0 < sweeps < 20


def test_a_line_that_no_longer_reads_as_a_request_is_an_error_line(store):
    asyncio.run(_test_a_line_that_no_longer_reads_as_a_request_is_an_error_line(store))


async def _test_a_line_that_no_longer_reads_as_a_request_is_an_error_line(store):
    batch_id = add_batch(store, write_input(store, ["a", "a-much-longer-name-than-the-other"]))
    store.update_batch(batch_id, "in_progress", total=2, model="m")  # validated under a larger body bound
    short = len(store.blobs.path("file-in").read_bytes().splitlines()[0]) + 1
    runner = BatchRunner(
        store, Executor(), capacity=lambda e, m: 1, metrics=Metrics(), output_ttl_s=3600, max_line_bytes=short
    )
    await settle(runner)
    row = store.batch(batch_id)
    assert row.status == "completed" and (row.completed, row.failed) == (1, 1)
    assert [e["error"]["code"] for e in output(store, batch_id)[1]] == ["invalid_line"]


def test_a_slice_cancelled_from_outside_does_not_stop_the_runner(store):
    asyncio.run(_test_a_slice_cancelled_from_outside_does_not_stop_the_runner(store))


async def _test_a_slice_cancelled_from_outside_does_not_stop_the_runner(store):
    batch_id = add_batch(store, write_input(store, ["a", "b"]))
    executor = Executor()
    executor.gate["a"] = asyncio.Event()
    executor.started["a"] = asyncio.Event()
    runner = make_runner(store, executor, width=1)

    def cancel_the_slice() -> None:
        runner._running.cancel()
        executor.gate["a"].set()

    await settle_after(runner, executor.started["a"], cancel_the_slice)
    row = store.batch(batch_id)
    assert row.status == "completed" and (row.completed, row.failed) == (2, 0)
    assert executor.calls == ["a", "a", "b"]  # the cancelled line ran again in the next turn


def test_shutdown_waits_for_an_outcome_being_committed(store):
    asyncio.run(_test_shutdown_waits_for_an_outcome_being_committed(store))


async def _test_shutdown_waits_for_an_outcome_being_committed(store):
    batch_id = add_batch(store, write_input(store, ["a"]))
    committing, release = threading.Event(), threading.Event()
    add_result = store.add_result

    def slow_add_result(*args):
        committing.set()
        release.wait(30)
        return add_result(*args)

    store.add_result = slow_add_result
    task = asyncio.create_task(make_runner(store, Executor()).run())
    assert await asyncio.to_thread(committing.wait, 30)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.05)
    assert not done  # shutdown waits: the store must not close under the commit
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert store.done_lines(batch_id) == {1}


def test_a_batch_that_cannot_even_be_failed_does_not_hold_up_the_others(store, monkeypatch):
    asyncio.run(_test_a_batch_that_cannot_even_be_failed_does_not_hold_up_the_others(store, monkeypatch))


async def _test_a_batch_that_cannot_even_be_failed_does_not_hold_up_the_others(store, monkeypatch):
    broken = add_batch(store, write_input(store, ["a"]), "batch_1")
    fine = add_batch(store, write_input(store, ["b"], file_id="file-two"), "batch_2")
    store.update_batch(broken, "finalizing")  # a state whose work (writing the output) fails here
    runner = make_runner(store, Executor())
    finalize = runner._finalize

    def failing_finalize(batch, status, **fields):
        if batch.id == broken:
            raise OSError("disk full")
        finalize(batch, status, **fields)

    monkeypatch.setattr(runner, "_finalize", failing_finalize)
    task = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(30):
            while store.batch(fine).status != "completed":
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert store.batch(broken).status == "finalizing"  # looked at again next round
