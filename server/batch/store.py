"""The durable state of files and batches: one SQLite database (WAL, synchronous=FULL) beside the file blobs.

Every method is synchronous and short; async callers run them with `asyncio.to_thread` (a commit waits for an
fsync). A line's result is committed, with the batch's counts, in one transaction: once counted it is on disk,
and a line with a result is never run again (`done_lines`)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.batch.blobs import BlobStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL,
    bytes INTEGER NOT NULL, lines INTEGER, created_at INTEGER NOT NULL, expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS files_owner ON files (owner);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, body TEXT NOT NULL, status TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner);
CREATE TABLE IF NOT EXISTS results (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, ok INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
"""

OPEN_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
TIMESTAMPED = frozenset({"in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"})


@dataclass(frozen=True)
class FileRow:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    lines: int | None
    created_at: int
    expires_at: int | None


@dataclass(frozen=True)
class BatchRow:
    id: str
    owner: str
    body: dict[str, Any]  # the batch object's own fields: endpoint, timestamps, file ids, errors, metadata
    status: str
    total: int
    completed: int
    failed: int
    input_tokens: int
    output_tokens: int


class BatchStore:
    def __init__(self, data_dir: Path, clock: Callable[[], float]) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(data_dir / "files", data_dir / "tmp")
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(data_dir / "batches.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def now(self) -> int:
        return int(self.clock())

    # Files

    def add_file(self, row: FileRow) -> None:
        with self._lock:
            self._insert_file(row)

    def _insert_file(self, row: FileRow) -> None:
        self._db.execute(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.owner, row.purpose, row.filename, row.bytes, row.lines, row.created_at, row.expires_at),
        )

    def file(self, file_id: str, owner: str) -> FileRow | None:
        with self._lock:
            found = self._db.execute("SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner)).fetchone()
        return None if found is None else FileRow(*found)

    def files(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int, ascending: bool
    ) -> list[FileRow]:
        order, compare = ("ASC", ">") if ascending else ("DESC", "<")
        query = "SELECT * FROM files WHERE owner = ?"
        args: list[Any] = [owner]
        if purpose is not None:
            query += " AND purpose = ?"
            args.append(purpose)
        if after is not None:
            query += f" AND rowid {compare} COALESCE((SELECT rowid FROM files WHERE id = ? AND owner = ?), -1)"
            args += [after, owner]
        query += f" ORDER BY rowid {order} LIMIT ?"
        args.append(limit)
        with self._lock:
            return [FileRow(*row) for row in self._db.execute(query, args)]

    def delete_file(self, owner: str, file_id: str) -> bool:
        with self._lock:
            deleted = self._db.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner)).rowcount
        if deleted:
            self.blobs.remove(file_id)
        return bool(deleted)

    def stored_bytes(self, owner: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE owner = ?", (owner,)).fetchone()[0]

    def open_inputs(self) -> set[str]:
        """The input files of batches that have not ended."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT body FROM batches WHERE status IN ({','.join('?' * len(OPEN_STATUSES))})", OPEN_STATUSES
            ).fetchall()
        return {json.loads(body)["input_file_id"] for (body,) in rows}

    def remove_expired_files(self) -> list[str]:
        """Delete files past their expiry (but those an open batch still reads); returns their ids."""
        with self._lock:
            due = [
                file_id
                for (file_id,) in self._db.execute(
                    "SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (self.now(),)
                )
            ]
        removed = []
        in_use = self.open_inputs() if due else set()
        for file_id in due:
            if file_id in in_use:
                continue
            with self._lock:
                self._db.execute("DELETE FROM files WHERE id = ?", (file_id,))
            self.blobs.remove(file_id)
            removed.append(file_id)
        return removed

    def remove_orphan_blobs(self) -> None:
        """Blobs without a row: written by a process killed before it recorded them."""
        with self._lock:
            known = {file_id for (file_id,) in self._db.execute("SELECT id FROM files")}
        self.blobs.remove_unknown(known)

    # Batches

    def add_batch(self, batch_id: str, owner: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO batches (id, owner, body, status) VALUES (?, ?, ?, ?)",
                (batch_id, owner, json.dumps(body), body["status"]),
            )

    def batch(self, batch_id: str, owner: str | None = None) -> BatchRow | None:
        query, args = "SELECT * FROM batches WHERE id = ?", [batch_id]
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        with self._lock:
            found = self._db.execute(query, args).fetchone()
        return None if found is None else _batch_row(found)

    def batches(self, owner: str, *, after: str | None, limit: int) -> list[BatchRow]:
        query, args = "SELECT * FROM batches WHERE owner = ?", [owner]
        if after is not None:
            query += " AND rowid < COALESCE((SELECT rowid FROM batches WHERE id = ? AND owner = ?), -1)"
            args += [after, owner]
        with self._lock:
            return [_batch_row(row) for row in self._db.execute(query + " ORDER BY rowid DESC LIMIT ?", [*args, limit])]

    def open_batches(self, owner: str | None = None) -> list[BatchRow]:
        """Batches not yet ended, oldest first."""
        query = f"SELECT * FROM batches WHERE status IN ({','.join('?' * len(OPEN_STATUSES))})"
        args: list[Any] = list(OPEN_STATUSES)
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        with self._lock:
            return [_batch_row(row) for row in self._db.execute(query + " ORDER BY rowid ASC", args)]

    def update_batch(
        self,
        batch_id: str,
        status: str,
        *,
        total: int | None = None,
        files: tuple[FileRow, ...] = (),
        only_from: tuple[str, ...] | None = None,
        **fields: Any,
    ) -> BatchRow | None:
        """Set the status (and its timestamp field, `<status>_at`, unless given) and other fields of the body, and
        record `files` (its output), in one transaction; None, changing nothing, when the batch's status is not
        one of `only_from`."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if only_from is not None:
                    (current,) = self._db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
                    if current not in only_from:
                        self._db.execute("ROLLBACK")
                        return None
                for row in files:
                    self._insert_file(row)
                (body,) = self._db.execute("SELECT body FROM batches WHERE id = ?", (batch_id,)).fetchone()
                body = json.loads(body)
                body.update(fields)
                body["status"] = status
                if status in TIMESTAMPED and body.get(f"{status}_at") is None:
                    body[f"{status}_at"] = self.now()
                self._db.execute(
                    "UPDATE batches SET body = ?, status = ? WHERE id = ?", (json.dumps(body), status, batch_id)
                )
                if total is not None:
                    self._db.execute("UPDATE batches SET total = ? WHERE id = ?", (total, batch_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.batch(batch_id)

    def request_cancel(self, batch_id: str) -> BatchRow | None:
        """Mark a batch that is validating or running `cancelling` (the runner ends it); None when it is not."""
        return self.update_batch(batch_id, "cancelling", only_from=("validating", "in_progress"))

    # Results

    def add_result(self, batch_id: str, line: int, ok: bool, record: dict[str, Any], tokens: tuple[int, int]) -> bool:
        """Record one line's outcome and count it, in one transaction; False if the line already had one."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                added = self._db.execute(
                    "INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?)", (batch_id, line, int(ok), json.dumps(record))
                ).rowcount
                if added:
                    column = "completed" if ok else "failed"
                    self._db.execute(
                        f"UPDATE batches SET {column} = {column} + 1, input_tokens = input_tokens + ?, "
                        "output_tokens = output_tokens + ? WHERE id = ?",
                        (*tokens, batch_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return bool(added)

    def add_unrun(self, batch_id: str, records: list[tuple[int, dict[str, Any]]]) -> None:
        """Record lines that will not run (the batch was cancelled or expired) as failed, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                added = 0
                for line, record in records:
                    added += self._db.execute(
                        "INSERT OR IGNORE INTO results VALUES (?, ?, 0, ?)", (batch_id, line, json.dumps(record))
                    ).rowcount
                self._db.execute("UPDATE batches SET failed = failed + ? WHERE id = ?", (added, batch_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def done_lines(self, batch_id: str) -> set[int]:
        with self._lock:
            return {line for (line,) in self._db.execute("SELECT line FROM results WHERE batch_id = ?", (batch_id,))}

    def results(self, batch_id: str, *, ok: bool) -> Iterator[str]:
        """The recorded lines of one kind, in input order, as JSON text (read in pages, not all at once)."""
        last = -1
        while True:
            with self._lock:
                page = self._db.execute(
                    "SELECT line, record FROM results WHERE batch_id = ? AND ok = ? AND line > ? "
                    "ORDER BY line LIMIT 500",
                    (batch_id, int(ok), last),
                ).fetchall()
            if not page:
                return
            for _, record in page:
                yield record
            last = page[-1][0]


def _batch_row(row: tuple[Any, ...]) -> BatchRow:
    batch_id, owner, body, status, total, completed, failed, input_tokens, output_tokens = row
    return BatchRow(batch_id, owner, json.loads(body), status, total, completed, failed, input_tokens, output_tokens)
