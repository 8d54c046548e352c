"""OpenAI's Files API, for batch input (`purpose: "batch"`) and batch output: upload, list, read, download, delete.

Files belong to the API key that uploaded them; another key gets a 404, as for a file that does not exist."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import PurePosixPath
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile

from server.api.openai.batch_schemas import MAX_EXPIRY_S, MIN_EXPIRY_S, FileDeleted, FileList, FileObject
from server.batch.blobs import CHUNK_BYTES
from server.batch.rows import FileRow
from server.batch.store import BatchStore
from server.errors import InvalidRequestError, NotFoundError
from server.http.deps import OwnerDep, require_api_key

files = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

T = TypeVar("T")
MAX_FILENAME_CHARS = 255
MAX_FORM_FIELDS = 8
MAX_FORM_FIELD_BYTES = 4096
DEFAULT_BATCH_FILE_EXPIRY_S = 30 * 24 * 3600


async def store_of(request: Request) -> BatchStore:
    return request.app.state.batch_store


StoreDep = Annotated[BatchStore, Depends(store_of)]


def not_found(kind: str, object_id: str, param: str | None = None) -> NotFoundError:
    """The same 404 for an object that does not exist and for one another API key owns."""
    param = param or f"{kind.lower()}_id"
    return NotFoundError(f"No such {kind} object: {object_id[:64]}", param=param, code=f"{kind.lower()}_not_found")


async def owned(
    lookup: Callable[[str, str], T | None], kind: str, owner: str, object_id: str, param: str | None = None
) -> T:
    """`lookup(object_id, owner)` off the event loop, or the 404 (naming `param`, by default `<kind>_id`)."""
    row = await asyncio.to_thread(lookup, object_id, owner)
    if row is None:
        raise not_found(kind, object_id, param)
    return row


async def owned_file(store: BatchStore, owner: str, file_id: str, param: str | None = None) -> FileRow:
    return await owned(store.file, "File", owner, file_id, param)


@files.post("/files")
async def upload_file(request: Request, owner: OwnerDep, store: StoreDep) -> JSONResponse:
    settings = request.app.state.settings
    # A body that is not valid multipart is Starlette's 400, shaped by the error handlers.
    form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FORM_FIELD_BYTES)
    try:
        upload = form.get("file")
        purpose = form.get("purpose")
        if purpose is None:
            raise InvalidRequestError("Missing required parameter: 'purpose'.", param="purpose")
        if purpose != "batch":
            raise InvalidRequestError(
                "This server keeps files for the Batch API only: 'purpose' must be 'batch'.", param="purpose"
            )
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError("Missing required parameter: 'file' (a file part).", param="file")
        expires_s = _expires_after(form.get("expires_after[anchor]"), form.get("expires_after[seconds]"))
        file_id = f"file-{secrets.token_hex(12)}"
        spooled, size, lines = await store.blobs.receive(
            file_id, _chunks(upload), settings.max_file_bytes, settings.batch_max_lines
        )
        now = store.now()
        name = PurePosixPath((upload.filename or "upload.jsonl").replace("\\", "/")).name[:MAX_FILENAME_CHARS]
        row = FileRow(file_id, owner, "batch", name, size, lines, now, now + expires_s)
        try:
            # One thread call checks the quota, moves the blob into place and records it: a client that leaves
            # meanwhile leaves the file whole (or not there at all), never a row without its blob.
            await asyncio.to_thread(store.add_file, row, blob=spooled, max_stored_bytes=settings.max_stored_bytes)
        finally:
            spooled.unlink(missing_ok=True)  # still there only when it was not placed
    finally:
        await form.close()  # the spooled upload's temporary file
    return JSONResponse(FileObject.of(row).model_dump(mode="json"))


@files.get("/files")
async def list_files(
    owner: OwnerDep,
    store: StoreDep,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> JSONResponse:
    rows = await asyncio.to_thread(
        store.files, owner, purpose=purpose, after=after, limit=limit + 1, ascending=order == "asc"
    )
    page = [FileObject.of(row) for row in rows[:limit]]
    listed = FileList(
        data=page,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=len(rows) > limit,
    )
    return JSONResponse(listed.model_dump(mode="json"))


@files.get("/files/{file_id}")
async def get_file(file_id: str, owner: OwnerDep, store: StoreDep) -> JSONResponse:
    return JSONResponse(FileObject.of(await owned_file(store, owner, file_id)).model_dump(mode="json"))


@files.get("/files/{file_id}/content")
async def file_content(file_id: str, owner: OwnerDep, store: StoreDep) -> FileResponse:
    row = await owned_file(store, owner, file_id)
    return FileResponse(store.blobs.path(row.id), media_type="application/octet-stream", filename=row.filename)


@files.delete("/files/{file_id}")
async def delete_file(file_id: str, owner: OwnerDep, store: StoreDep) -> JSONResponse:
    await owned_file(store, owner, file_id)
    deleted = await asyncio.to_thread(store.delete_file, owner, file_id)
    if deleted == "in_use":
        raise InvalidRequestError(
            "The file is the input of a batch that has not ended; cancel the batch first.",
            param="file_id",
            code="file_in_use",
        )
    if deleted == "missing":
        raise not_found("File", file_id)
    return JSONResponse(FileDeleted(id=file_id).model_dump(mode="json"))


def _expires_after(anchor: object, seconds: object) -> int:
    """`expires_after[anchor]` and `expires_after[seconds]`, as the openai SDK sends them in a form; without
    them, OpenAI's default for batch files: 30 days."""
    if anchor is None and seconds is None:
        return DEFAULT_BATCH_FILE_EXPIRY_S
    if anchor != "created_at":
        raise InvalidRequestError("'expires_after.anchor' must be 'created_at'.", param="expires_after.anchor")
    try:
        value = int(str(seconds))
    except ValueError:
        value = -1
    if not MIN_EXPIRY_S <= value <= MAX_EXPIRY_S:
        raise InvalidRequestError(
            f"'expires_after.seconds' must be an integer from {MIN_EXPIRY_S} to {MAX_EXPIRY_S}.",
            param="expires_after.seconds",
        )
    return value


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk
