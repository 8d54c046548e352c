"""The model commands of the CLI: `pull` and `list`. They write their report to stdout."""

from __future__ import annotations

import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from server.config import (
    ConfigError,
    HubSource,
    ModelSpec,
    PackageSource,
    SafetensorsSource,
    Settings,
    load_models_file,
)
from server.models.hub import PullError, file_status, pull
from server.models.residency import memory_estimate
from server.models.sources import model_file

logger = logging.getLogger(__name__)


def pull_command(settings: Settings, names: Sequence[str]) -> int:
    """Pull each named model (names or aliases); exit 1 if any failed."""
    specs = _select(load_models_file(settings.models_file).models, names)
    if specs is None:
        return 2
    failed = 0
    for spec in specs:
        try:
            path = pull(spec)
        except PullError as exc:
            logger.error("%s", exc)
            failed += 1
            continue
        sys.stdout.write(f"{spec.name}: present at {path} ({_size(path.stat().st_size)}), verified\n")
    return 1 if failed else 0


def convert_command(settings: Settings, name: str | None, source: Path | None, output: Path | None) -> int:
    """Convert a folder to a GGUF file (--input/--output), or a configured `safetensors` model into the cache."""
    from server.models.convert import ConvertError, convert_bert

    if source is not None and output is not None and name is None:
        try:
            convert_bert(source, output)
        except (ConvertError, OSError, KeyError) as exc:
            logger.error("conversion failed: %s", exc)
            return 1
        sys.stdout.write(f"wrote {output} ({_size(output.stat().st_size)})\n")
        return 0
    if name is None or source is not None or output is not None:
        logger.error("give either a configured model NAME, or --input DIR and --output FILE")
        return 2
    specs = _select(load_models_file(settings.models_file).models, [name])
    if specs is None:
        return 2
    if not isinstance(specs[0].source, SafetensorsSource):
        logger.error("model %s is not a `safetensors` model; nothing to convert", name)
        return 2
    try:
        path = model_file(specs[0])
    except ConfigError as exc:
        logger.error("%s", exc)
        return 1
    sys.stdout.write(f"{name}: {path} ({_size(path.stat().st_size)})\n")
    return 0


def list_command(settings: Settings, server_url: str | None) -> int:
    """Every configured model: its source, whether its file is present and its size, the memory its worker is
    estimated to take once loaded (server/engine/memory.py), and whether it is loaded."""
    specs = load_models_file(settings.models_file).models
    url = server_url or f"http://{_client_host(settings.host)}:{settings.port}"
    loaded = _loaded_models(url, settings)
    statuses = {spec.name: file_status(spec) for spec in specs}
    rows = [("NAME", "SOURCE", "PRESENT", "SIZE", "MEMORY", "LOADED")]
    for spec in specs:
        status = statuses[spec.name]
        estimate = memory_estimate(spec) if status.present else None
        rows.append(
            (
                spec.name,
                _source_label(spec),
                "yes" if status.present else "no",
                _size(status.size) if status.size is not None else "-",
                _size(estimate.total) if estimate is not None else "-",
                "?" if loaded is None else ("yes" if spec.name in loaded else "no"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        sys.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    if loaded is None:
        sys.stdout.write(f"(no server answered at {url}: loaded state unknown)\n")
    missing = [name for name, status in statuses.items() if not status.present]
    if missing:
        sys.stdout.write(f"not present: {', '.join(missing)}; run `slm-server pull NAME`\n")
    return 0


def _select(specs: Sequence[ModelSpec], names: Sequence[str]) -> list[ModelSpec] | None:
    by_name = {name: spec for spec in specs for name in (spec.name, *spec.aliases)}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        logger.error("unknown model(s): %s; configured: %s", ", ".join(unknown), ", ".join(s.name for s in specs))
        return None
    return [by_name[name] for name in names]


def _source_label(spec: ModelSpec) -> str:
    source = spec.source
    if isinstance(source, HubSource):
        return f"hf:{source.repo_id}/{source.filename}"
    if isinstance(source, PackageSource):
        return f"package:{source.package}"
    if isinstance(source, SafetensorsSource):
        return f"converted:{source.safetensors.package or source.safetensors.dir}"
    return f"path:{source.path}"


def _loaded_models(url: str, settings: Settings) -> set[str] | None:
    request = urllib.request.Request(url.rstrip("/") + "/v1/models")
    keys = settings.all_api_keys()
    if keys:
        request.add_header("Authorization", f"Bearer {keys[0]}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            cards = json.load(response)["data"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None
    return {card["id"] for card in cards if card.get("loaded")}


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
