"""Model files from Hugging Face: `slm-server pull` and the local status that `slm-server list` shows.

Downloads go through `huggingface_hub` into the standard Hugging Face cache (shared with other tools), resume
from the partial file an interrupted pull leaves, and are verified (size, and the hub's sha256 for LFS files)
before they count as present; an interrupted pull resumes where it stopped. Nothing here runs while serving:
the server only looks in the cache."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from server.config import ConfigError, HubSource, ModelSpec
from server.models.sources import model_file

logger = logging.getLogger(__name__)

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
HASH_CHUNK = 8 * 1024 * 1024


class PullError(Exception):
    """A pull that did not leave a verified file in the cache."""


@dataclass(frozen=True)
class FileStatus:
    present: bool
    path: Path | None
    size: int | None
    problem: str | None = None


def file_status(spec: ModelSpec) -> FileStatus:
    """Where a model's file is and how large (a vision model's projector included), looking only at local disk."""
    try:
        path = model_file(spec)
        projector = spec.projector_path()
    except ConfigError as exc:
        return FileStatus(present=False, path=None, size=None, problem=str(exc))
    try:
        size = path.stat().st_size
    except OSError:
        return FileStatus(present=False, path=path, size=None, problem=f"{path} does not exist")
    if projector is not None:
        try:
            size += projector.stat().st_size
        except OSError:
            return FileStatus(present=False, path=path, size=None, problem=f"its projector {projector} does not exist")
    return FileStatus(present=True, path=path, size=size)


def pull(spec: ModelSpec, *, endpoint: str | None = None, token: str | None = None) -> Path:
    """Download a Hugging Face model's file (and a vision model's projector) into the cache and verify it. Other
    sources need no pull.

    The bytes go to a partial file beside the cache's blobs, which a later pull resumes (huggingface_hub itself
    discards partial files since 1.x); only once the size and sha256 match does the file move into the cache as
    its blob, and huggingface_hub links it into the snapshot, so other tools see the usual layout."""
    if isinstance(spec.mmproj, HubSource):
        _pull_file(spec.name, spec.mmproj, endpoint=endpoint, token=token)
    if not isinstance(spec.source, HubSource):
        status = file_status(spec)
        if not status.present:
            raise PullError(f"model {spec.name} is not a Hugging Face model and its file is missing: {status.problem}")
        return status.path  # type: ignore[return-value]
    path = _pull_file(spec.name, spec.source, endpoint=endpoint, token=token)
    status = file_status(spec)
    if not status.present:  # a projector from another kind of source, missing
        raise PullError(f"model {spec.name}: {status.problem}")
    return path


def _pull_file(name: str, source: HubSource, *, endpoint: str | None, token: str | None) -> Path:
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import build_hf_headers

    endpoint = endpoint or os.environ.get("HF_ENDPOINT")
    try:
        url = hf_hub_url(source.repo_id, source.filename, revision=source.revision, endpoint=endpoint)
        metadata = get_hf_file_metadata(url, token=token)
        if not metadata.etag:
            raise PullError(f"model {name}: the hub gave no ETag for {source.filename}")
        storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=source.repo_id, repo_type="model")
        blob = storage / "blobs" / metadata.etag
        if not blob.exists():
            partial = blob.with_name(blob.name + ".slm-partial")
            partial.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("ab") as fh:
                if fh.tell():
                    logger.info("resuming %s at byte %d", source.filename, fh.tell())
                http_get(
                    metadata.location,
                    fh,
                    resume_size=fh.tell(),
                    headers=build_hf_headers(token=token),
                    expected_size=metadata.size,
                    displayed_filename=source.filename,
                )
            sha256 = metadata.etag.lower()
            try:
                verify(partial, size=metadata.size, sha256=sha256 if SHA256_HEX.match(sha256) else None)
            except PullError:
                partial.unlink()
                raise
            partial.replace(blob)
        # The verified blob is in place: this only links it into the snapshot (and records a branch's commit).
        path = Path(
            hf_hub_download(source.repo_id, source.filename, revision=source.revision, endpoint=endpoint, token=token)
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise PullError(f"model {name}: download of {source.repo_id}/{source.filename} failed: {exc}") from exc
    return path


def verify(path: Path, *, size: int | None, sha256: str | None) -> None:
    """Raise PullError unless the file has the expected size and sha256 (each checked when known)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise PullError(f"{path.name}: size {actual_size} bytes, the hub says {size}; the download was discarded")
    if sha256 is None:
        logger.warning("%s: the hub gave no sha256 (not an LFS file); checked the size only", path.name)
        return
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise PullError(
            f"{path.name}: sha256 {digest.hexdigest()} does not match the hub's {sha256}; the download was discarded"
        )
