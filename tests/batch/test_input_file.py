"""A batch input file read as hostile input: a line past the body bound is never held whole, a line nested past
the parser's depth is a malformed line (not a crash), and the runner's feed reads in a thread and survives a
taker that is cancelled mid-read."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from server.batch import input_file
from server.batch.input_file import LineFeed

ENDPOINT = "/v1/chat/completions"


def request(custom_id: str, **body) -> bytes:
    item = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {"model": "m", **body}}
    return json.dumps(item).encode() + b"\n"


def test_a_line_over_the_bound_fails_the_file_naming_it_and_the_lines_after_it_are_still_read(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(request("a") + request("b", filler="x" * 5000) + request("c"))
    result = input_file.validate(path, ENDPOINT, max_line_bytes=1000)
    assert [(p.code, p.line) for p in result.problems] == [("line_too_large", 2)]
    assert result.total == 3 and "1000 bytes" in result.problems[0].message


def test_a_line_of_exactly_the_bound_is_accepted(tmp_path):
    line = request("a")
    path = tmp_path / "in.jsonl"
    path.write_bytes(line + line.rstrip(b"\n").replace(b'"a"', b'"b"'))  # the last line has no newline
    assert input_file.validate(path, ENDPOINT, max_line_bytes=len(line) - 1).problems is None


def test_a_line_nested_past_the_parsers_depth_is_a_malformed_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(request("a") + b"[" * 200_000 + b"]" * 200_000 + b"\n")
    result = input_file.validate(path, ENDPOINT, max_line_bytes=1 << 20)
    assert [(p.code, p.line) for p in result.problems] == [("invalid_json_line", 2)]


def test_the_runner_skips_lines_already_done_without_parsing_them(tmp_path, monkeypatch):
    path = tmp_path / "in.jsonl"
    path.write_bytes(request("a") + b"\n" + request("b") + request("c"))
    parsed = []
    loads = json.loads
    monkeypatch.setattr(input_file.json, "loads", lambda raw: parsed.append(raw) or loads(raw))
    lines = list(input_file.requests(path, 1 << 20, skip={1, 4}))
    assert [(line.line, line.custom_id) for line in lines] == [(3, "b")] and len(parsed) == 1


def test_the_feed_reads_in_a_thread_and_a_cancelled_taker_loses_no_line(tmp_path, monkeypatch):
    monkeypatch.setattr(input_file, "FEED_PAGE", 2)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(request(f"id-{i}") for i in range(5)))
    threads, started, gate = set(), threading.Event(), threading.Event()
    loads = json.loads

    def slow_loads(raw):
        threads.add(threading.current_thread() is threading.main_thread())
        started.set()
        gate.wait(30)
        return loads(raw)

    monkeypatch.setattr(input_file.json, "loads", slow_loads)

    async def scenario() -> list[str]:
        feed = LineFeed(path, 1 << 20, set())
        taker = asyncio.create_task(feed.next())
        assert await asyncio.to_thread(started.wait, 30)  # the read is under way in its thread
        taker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await taker
        gate.set()
        taken = []
        while (line := await feed.next()) is not None:
            taken.append(line.custom_id)
        assert feed.exhausted
        feed.close()
        return taken

    assert asyncio.run(scenario()) == [f"id-{i}" for i in range(5)]
    assert threads == {False}  # never parsed on the event loop's thread


def test_a_feed_page_is_bounded_by_bytes_as_well_as_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(input_file, "FEED_PAGE_BYTES", 1000)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(request(f"id-{i}", filler="x" * 600) for i in range(3)) + request("small"))
    lines = input_file.requests(path, 1 << 20)
    assert [len(input_file._take(lines)[0]) for _ in range(3)] == [2, 2, 0]  # past 1000 bytes a page ends


def test_a_line_that_no_longer_reads_as_a_request_is_read_without_a_custom_id(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(request("a") + request("b", filler="x" * 500))
    lines = list(input_file.requests(path, max_line_bytes=200))
    assert [(line.line, line.custom_id) for line in lines] == [(1, "a"), (2, None)]
