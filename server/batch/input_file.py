"""A batch's input file: one request per line, `{"custom_id", "method", "url", "body"}`.

The file as a whole is checked before any line runs: JSONL, a `custom_id` on each line (unique), `POST` to the
batch's endpoint, one model. What is wrong there fails the batch, with the reasons by line. A body is not checked
here: the line runs as the live endpoint would run it, and a bad body becomes that line's error (a 400)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_CUSTOM_ID_CHARS = 512
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True)
class InputLine:
    line: int  # 1-based, in the file
    custom_id: str
    body: Any  # as the client sent it: checked when the line runs


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


def read_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or the JSONDecodeError) for each non-blank line, reading line by line."""
    with path.open("rb") as source:
        for number, raw in enumerate(source, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                yield number, exc


def requests(path: Path) -> Iterator[InputLine]:
    """The lines of a file `validate` accepted."""
    for number, item in read_lines(path):
        yield InputLine(number, item["custom_id"], item.get("body"))


def validate(path: Path, endpoint: str) -> Validated:
    problems: list[LineProblem] = []
    seen: set[str] = set()
    models: set[str] = set()
    total = 0

    def problem(code: str, message: str, line: int, param: str | None = None) -> None:
        if len(problems) < MAX_REPORTED_ERRORS:
            problems.append(LineProblem(code, message, line, param))

    for number, item in read_lines(path):
        total += 1
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
