"""The store's tables, and their rows as the rest of the server sees them."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

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

    def expired(self, now: int) -> bool:
        """Past its completion window."""
        return now >= self.body["expires_at"]


def error_record(custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    """An output line for a request that got no response (not run, or unreadable)."""
    return {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def batch_row(row: tuple[Any, ...]) -> BatchRow:
    batch_id, owner, body, status, total, completed, failed, input_tokens, output_tokens = row
    return BatchRow(batch_id, owner, json.loads(body), status, total, completed, failed, input_tokens, output_tokens)
