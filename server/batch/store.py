"""The durable state of files and batches: one SQLite database (WAL, synchronous=FULL) beside the file blobs.

Every method is synchronous and short; async callers run them with `asyncio.to_thread` (a commit waits for an
fsync). A line's result is committed, with the batch's counts, in one transaction: once counted it is on disk,
and a line with a result is never run again (`done_lines`)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from server.batch.blobs import BlobStore
from server.batch.rows import SCHEMA, BatchRow, FileRow, batch_row
from server.errors import StorageLimitError, TooManyOpenBatchesError

OPEN_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
_OPEN = f"status IN ({','.join(repr(status) for status in OPEN_STATUSES)})"
_LIVE = "(expires_at IS NULL OR expires_at > ?)"  # a file past its expiry is gone for clients before it is swept
TIMESTAMPED = frozenset({"in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"})


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

    def add_file(self, row: FileRow, *, blob: Path | None = None, max_stored_bytes: int | None = None) -> None:
        """Record a file, moving its finished scratch file (`blob`) into place in the same transaction: the row
        is never there without its blob. Beyond `max_stored_bytes` for its owner, a 413 and nothing is kept."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if max_stored_bytes is not None and self._stored_bytes(row.owner) + row.bytes > max_stored_bytes:
                    raise StorageLimitError(max_stored_bytes)
                if blob is not None:
                    self.blobs.place(blob, row.id)
                self._insert_file(row)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _insert_file(self, row: FileRow) -> None:
        self._db.execute(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.owner, row.purpose, row.filename, row.bytes, row.lines, row.created_at, row.expires_at),
        )

    def file(self, file_id: str, owner: str) -> FileRow | None:
        with self._lock:
            found = self._db.execute(
                f"SELECT * FROM files WHERE id = ? AND owner = ? AND {_LIVE}", (file_id, owner, self.now())
            ).fetchone()
        return None if found is None else FileRow(*found)

    def files(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int, ascending: bool
    ) -> list[FileRow]:
        order, compare = ("ASC", ">") if ascending else ("DESC", "<")
        query = f"SELECT * FROM files WHERE owner = ? AND {_LIVE}"
        args: list[Any] = [owner, self.now()]
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

    def delete_file(self, owner: str, file_id: str) -> Literal["deleted", "missing", "in_use"]:
        """Delete a file, unless it is the input of a batch that has not ended (checked in the same
        transaction as the delete, so a batch created meanwhile cannot lose its input)."""
        with self._lock:
            if file_id in self._open_inputs():
                return "in_use"
            deleted = self._db.execute(
                f"DELETE FROM files WHERE id = ? AND owner = ? AND {_LIVE}", (file_id, owner, self.now())
            ).rowcount
        if deleted:
            self.blobs.remove(file_id)
        return "deleted" if deleted else "missing"

    def stored_bytes(self, owner: str) -> int:
        with self._lock:
            return self._stored_bytes(owner)

    def _stored_bytes(self, owner: str) -> int:
        query = f"SELECT COALESCE(SUM(bytes), 0) FROM files WHERE owner = ? AND {_LIVE}"
        return self._db.execute(query, (owner, self.now())).fetchone()[0]

    def open_inputs(self) -> set[str]:
        """The input files of batches that have not ended."""
        with self._lock:
            return self._open_inputs()

    def _open_inputs(self) -> set[str]:
        rows = self._db.execute(f"SELECT body FROM batches WHERE {_OPEN}").fetchall()
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

    def add_batch(self, batch_id: str, owner: str, body: dict[str, Any], *, max_open: int | None = None) -> bool:
        """Record a new batch; False (nothing recorded) when its input file is gone, a 429 when its owner
        already has `max_open` open batches: both checked in the same transaction as the insert."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                source = self._db.execute(
                    f"SELECT 1 FROM files WHERE id = ? AND owner = ? AND {_LIVE}",
                    (body["input_file_id"], owner, self.now()),
                ).fetchone()
                if source is None:
                    self._db.execute("ROLLBACK")
                    return False
                if max_open is not None:
                    query = f"SELECT COUNT(*) FROM batches WHERE owner = ? AND {_OPEN}"
                    if self._db.execute(query, (owner,)).fetchone()[0] >= max_open:
                        raise TooManyOpenBatchesError(max_open)
                self._db.execute(
                    "INSERT INTO batches (id, owner, body, status) VALUES (?, ?, ?, ?)",
                    (batch_id, owner, json.dumps(body), body["status"]),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def batch(self, batch_id: str, owner: str | None = None) -> BatchRow | None:
        query, args = "SELECT * FROM batches WHERE id = ?", [batch_id]
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        with self._lock:
            found = self._db.execute(query, args).fetchone()
        return None if found is None else batch_row(found)

    def batches(self, owner: str, *, after: str | None, limit: int) -> list[BatchRow]:
        query, args = "SELECT * FROM batches WHERE owner = ?", [owner]
        if after is not None:
            query += " AND rowid < COALESCE((SELECT rowid FROM batches WHERE id = ? AND owner = ?), -1)"
            args += [after, owner]
        with self._lock:
            return [batch_row(row) for row in self._db.execute(query + " ORDER BY rowid DESC LIMIT ?", [*args, limit])]

    def open_batches(self, owner: str | None = None) -> list[BatchRow]:
        """Batches not yet ended, oldest first."""
        query = f"SELECT * FROM batches WHERE {_OPEN}"
        args: list[Any] = []
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        with self._lock:
            return [batch_row(row) for row in self._db.execute(query + " ORDER BY rowid ASC", args)]

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

    def add_unrun(self, batch_id: str, records: list[tuple[int, dict[str, Any]]]) -> int:
        """Record lines that will not run (the batch was cancelled or expired) as failed, in one transaction;
        returns how many had no result yet."""
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
        return added

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
