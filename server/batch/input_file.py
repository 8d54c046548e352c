"""A batch's input file: one request per line, `{"custom_id", "method", "url", "body"}`.

The file as a whole is checked before any line runs: JSONL, a `custom_id` on each line (unique), `POST` to the
batch's endpoint, one model. What is wrong there fails the batch, with the reasons by line. A body is not checked
here: the line runs as the live endpoint would run it, and a bad body becomes that line's error (a 400)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_CUSTOM_ID_CHARS = 512
MAX_REPORTED_ERRORS = 100
FEED_PAGE = 64  # lines the runner reads (and parses) per trip to a thread...
FEED_PAGE_BYTES = 4 * 1024 * 1024  # ...and bytes: what a page holds parsed is bounded by this and one line
_SKIP_BYTES = 1024 * 1024


class LineTooLong(Exception):
    """A line longer than the server accepts for one request body: never read whole into memory."""


@dataclass(frozen=True)
class InputLine:
    line: int  # 1-based, in the file
    custom_id: str | None  # None: the line no longer reads as a request (the body bound was lowered since)
    body: Any  # as the client sent it: checked when the line runs
    size: int = 0  # bytes in the file


@dataclass(frozen=True)
class LineProblem:
    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass
class Validated:
    total: int = 0
    model: str | None = None
    problems: list[LineProblem] | None = None


def read_lines(path: Path, max_line_bytes: int, skip: Collection[int] = ()) -> Iterator[tuple[int, Any, int]]:
    """(line number, parsed JSON or the exception, bytes) for each non-blank line not in `skip`, reading line by
    line: a line over `max_line_bytes` is LineTooLong (read past, never held), one nested too deep for the parser
    an error like any other malformed line."""
    with path.open("rb") as source:
        for number in itertools.count(1):
            raw = source.readline(max_line_bytes + 1)
            if not raw:
                return
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                size = len(raw)
                while raw and not raw.endswith(b"\n"):
                    raw = source.readline(_SKIP_BYTES)
                    size += len(raw)
                if number not in skip:
                    yield number, LineTooLong(), size
                continue
            if number in skip or not raw.strip():
                continue
            try:
                yield number, json.loads(raw), len(raw)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                yield number, exc, len(raw)


def requests(path: Path, max_line_bytes: int, skip: Collection[int] = ()) -> Iterator[InputLine]:
    """The lines of a file `validate` accepted, but those in `skip`."""
    for number, item, size in read_lines(path, max_line_bytes, skip):
        if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
            yield InputLine(number, item["custom_id"], item.get("body"), size)
        else:
            yield InputLine(number, None, None, size)


class LineFeed:
    """The lines of an accepted file still to run, for the runner's workers to take one at a time. Reading and
    parsing happen in a thread, a page at a time: never on the event loop. A read in progress outlives a worker
    cancelled while waiting for it (the next taker waits for the same read), so the file is read by one thread
    at a time."""

    def __init__(self, path: Path, max_line_bytes: int, skip: Collection[int]) -> None:
        self._lines = requests(path, max_line_bytes, skip)
        self._page: collections.deque[InputLine] = collections.deque()
        self._reading: asyncio.Future[list[InputLine]] | None = None
        self._ended = False

    async def next(self) -> InputLine | None:
        while True:
            if self._page:
                return self._page.popleft()
            if self._ended:
                return None
            if self._reading is None:
                self._reading = asyncio.ensure_future(asyncio.to_thread(_take, self._lines))
            reading = self._reading
            page, ended = await asyncio.shield(reading)
            if self._reading is reading:
                self._reading = None
                self._page.extend(page)
                self._ended = ended

    @property
    def exhausted(self) -> bool:
        return self._ended and not self._page

    def close(self) -> None:
        if self._reading is not None and not self._reading.done():
            self._reading.add_done_callback(lambda _: self._lines.close())
        else:
            self._lines.close()


def _take(lines: Iterator[InputLine]) -> tuple[list[InputLine], bool]:
    """The next page (FEED_PAGE lines, or FEED_PAGE_BYTES), and whether the file ended."""
    page: list[InputLine] = []
    size = 0
    for line in lines:
        page.append(line)
        size += line.size
        if len(page) >= FEED_PAGE or size >= FEED_PAGE_BYTES:
            return page, False
    return page, True


def validate(path: Path, endpoint: str, max_line_bytes: int) -> Validated:
    problems: list[LineProblem] = []
    seen: set[str] = set()
    models: set[str] = set()
    total = 0

    def problem(code: str, message: str, line: int, param: str | None = None) -> None:
        if len(problems) < MAX_REPORTED_ERRORS:
            problems.append(LineProblem(code, message, line, param))

    for number, item, _ in read_lines(path, max_line_bytes):
        total += 1
        if isinstance(item, LineTooLong):
            problem(
                "line_too_large",
                f"Line {number} is longer than {max_line_bytes} bytes, this server's limit for one request body.",
                number,
            )
            continue
        if isinstance(item, Exception) or not isinstance(item, dict):
            problem("invalid_json_line", f"Line {number} is not a JSON object.", number)
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID_CHARS:
            problem(
                "invalid_custom_id",
                f"Line {number}: 'custom_id' must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters.",
                number,
                "custom_id",
            )
        elif custom_id in seen:
            problem(
                "duplicate_custom_id", f"Line {number}: the custom_id is used by an earlier line.", number, "custom_id"
            )
        else:
            seen.add(custom_id)
        if item.get("method") != "POST":
            problem("invalid_method", f"Line {number}: 'method' must be \"POST\".", number, "method")
        if item.get("url") != endpoint:
            problem(
                "mismatched_endpoint",
                f"Line {number}: 'url' must be the batch's endpoint, {endpoint}: a batch runs one endpoint.",
                number,
                "url",
            )
        body = item.get("body")
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            models.add(body["model"])
    if total == 0:
        problems.append(LineProblem("empty_file", "The input file has no requests."))
    if len(models) > 1:
        problems.append(
            LineProblem(
                "mismatched_model",
                f"The requests name {len(models)} models; a batch runs one model. Split the file by model.",
                param="body.model",
            )
        )
    return Validated(total=total, model=next(iter(models), None), problems=problems or None)
