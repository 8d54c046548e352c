"""Where a configured model's GGUF file is: the one place that knows every kind of source, conversion included.

The registry hands the engine a spec whose source is already a plain path, so nothing below this layer converts
or looks anything up."""

from __future__ import annotations

from pathlib import Path

from server.config import ConfigError, ModelSpec, PathSource, SafetensorsSource
from server.models.convert import ConvertError, cached_conversion


def model_file(spec: ModelSpec) -> Path:
    """The model's GGUF file on local disk; a safetensors model is converted on first use (cached)."""
    if isinstance(spec.source, SafetensorsSource):
        folder = spec.source.safetensors.folder()
        try:
            return cached_conversion(folder, spec.source.safetensors.package or folder.name)
        except (ConvertError, OSError) as exc:
            raise ConfigError(f"cannot convert {folder}: {exc}") from exc
    return spec.model_path()


def resolved(spec: ModelSpec) -> ModelSpec:
    """The spec with its source replaced by the file it resolves to (blocking: may convert)."""
    return spec.model_copy(update={"source": PathSource(path=model_file(spec))})
