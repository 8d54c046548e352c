"""OpenAI's Batch API: create a batch from an uploaded file, read it, list them, cancel one. The work itself is the
runner's (server/batch/runner.py); these handlers only record what the client asks."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from server.api.openai.batch_schemas import (
    COMPLETION_WINDOW_S,
    MAX_LIST_LIMIT_BATCHES,
    CreateBatchRequest,
    batch_list,
    batch_object,
)
from server.api.openai.files import StoreDep, not_found, owned, owned_file
from server.batch.rows import BatchRow
from server.batch.store import BatchStore
from server.errors import InvalidRequestError
from server.http.deps import OwnerDep, json_body, request_body_doc, require_api_key

batches = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

CreateBody = Annotated[CreateBatchRequest, Depends(json_body(CreateBatchRequest))]


async def _owned(store: BatchStore, owner: str, batch_id: str) -> BatchRow:
    return await owned(store.batch, "Batch", owner, batch_id)


@batches.post("/batches", openapi_extra=request_body_doc(CreateBatchRequest))
async def create_batch(request: Request, body: CreateBody, owner: OwnerDep, store: StoreDep) -> JSONResponse:
    source = await owned_file(store, owner, body.input_file_id, "input_file_id")
    if source.purpose != "batch":
        raise InvalidRequestError("The input file must have been uploaded with purpose 'batch'.", param="input_file_id")
    now = store.now()
    batch_id = f"batch_{secrets.token_hex(12)}"
    fields = {
        "endpoint": body.endpoint,
        "input_file_id": source.id,
        "completion_window": body.completion_window,
        "status": "validating",
        "created_at": now,
        "expires_at": now + COMPLETION_WINDOW_S[body.completion_window],
        "metadata": body.metadata,
        "output_expires_after_s": None if body.output_expires_after is None else body.output_expires_after.seconds,
    }
    limit = request.app.state.settings.max_open_batches
    if not await asyncio.to_thread(store.add_batch, batch_id, owner, fields, max_open=limit):
        raise not_found("File", source.id, "input_file_id")  # deleted (or expired) since it was looked up
    request.app.state.batch_runner.notify()
    return JSONResponse(batch_object(await _owned(store, owner, batch_id)))


@batches.get("/batches/{batch_id}")
async def get_batch(batch_id: str, owner: OwnerDep, store: StoreDep) -> JSONResponse:
    return JSONResponse(batch_object(await _owned(store, owner, batch_id)))


@batches.get("/batches")
async def list_batches(
    owner: OwnerDep,
    store: StoreDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT_BATCHES)] = 20,
) -> JSONResponse:
    rows = await asyncio.to_thread(store.batches, owner, after=after, limit=limit + 1)
    return JSONResponse(batch_list(rows[:limit], has_more=len(rows) > limit))


@batches.post("/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str, owner: OwnerDep, store: StoreDep) -> JSONResponse:
    row = await _owned(store, owner, batch_id)
    if row.status in ("validating", "in_progress"):
        row = await asyncio.to_thread(store.request_cancel, batch_id) or await _owned(store, owner, batch_id)
        request.app.state.batch_runner.notify()
    elif row.status not in ("cancelling", "cancelled"):
        raise InvalidRequestError(
            f"The batch has status '{row.status}' and can no longer be cancelled.",
            param="batch_id",
            code="batch_not_cancellable",
        )
    return JSONResponse(batch_object(row))
