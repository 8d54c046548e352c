"""Request bodies and wire objects of OpenAI's Files and Batch API (`client.files`, `client.batches`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.batch.rows import BatchRow, FileRow

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
COMPLETION_WINDOW_S = {"24h": 24 * 3600}
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 24 * 3600  # OpenAI's bounds for expires_after.seconds
MAX_METADATA = 16  # OpenAI's: 16 pairs, keys of at most 64 characters, values of at most 512
MAX_LIST_LIMIT_FILES = 10_000
MAX_LIST_LIMIT_BATCHES = 100
MAX_ID_CHARS = 64


class StrictBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class ExpiresAfter(StrictBody):
    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=MIN_EXPIRY_S, le=MAX_EXPIRY_S)]


MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class CreateBatchRequest(StrictBody):
    input_file_id: Annotated[str, Field(max_length=MAX_ID_CHARS)]
    endpoint: Literal[BATCH_ENDPOINTS]  # type: ignore[valid-type]
    completion_window: Literal["24h"]
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA)] | None = None
    output_expires_after: ExpiresAfter | None = None


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"

    @classmethod
    def of(cls, row: FileRow) -> FileObject:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            expires_at=row.expires_at,
            filename=row.filename,
            purpose=row.purpose,
        )


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


BATCH_FIELDS = (
    "endpoint", "model", "errors", "input_file_id", "completion_window", "output_file_id", "error_file_id",
    "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
    "cancelling_at", "cancelled_at", "metadata",
)  # fmt: skip


def batch_object(row: BatchRow) -> dict[str, Any]:
    body = {"id": row.id, "object": "batch", "status": row.status}
    body.update({name: row.body.get(name) for name in BATCH_FIELDS})
    if body["model"] is None:
        del body["model"]  # known once the input file is read
    body["request_counts"] = {"total": row.total, "completed": row.completed, "failed": row.failed}
    body["usage"] = {
        "input_tokens": row.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": row.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": row.input_tokens + row.output_tokens,
    }
    return body


def batch_list(rows: list[BatchRow], has_more: bool) -> dict[str, Any]:
    data = [batch_object(row) for row in rows]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
