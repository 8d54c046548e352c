"""Where a configured model's GGUF file is: the one place that knows every kind of source, conversion included.

The registry hands the engine a spec whose source is already a plain path, so nothing below this layer converts
or looks anything up."""

from __future__ import annotations

from pathlib import Path

from server.config import ConfigError, ModelSpec, PathSource, SafetensorsSource
from server.models.convert import ConvertError, cached_conversion, conversion_path


def model_file(spec: ModelSpec, *, convert: bool = True) -> Path:
    """The model's GGUF file on local disk; a safetensors model is converted on first use (cached). With `convert`
    false nothing is converted: a safetensors model not converted yet is a ConfigError."""
    if isinstance(spec.source, SafetensorsSource):
        folder = spec.source.safetensors.folder()
        label = spec.source.safetensors.package or folder.name
        try:
            if not convert:
                path = conversion_path(folder, label)
                if not path.is_file():
                    raise ConfigError(f"{folder} is not converted to GGUF yet (it is at its first load)")
                return path
            return cached_conversion(folder, label)
        except (ConvertError, OSError) as exc:
            raise ConfigError(f"cannot convert {folder}: {exc}") from exc
    return spec.model_path()


def resolved(spec: ModelSpec, *, draft: ModelSpec | None = None) -> ModelSpec:
    """The spec with its source (and its projector's) replaced by the file it resolves to, and its speculative
    decoding's draft model entry by that entry's file (blocking: may convert)."""
    update: dict[str, object] = {"source": PathSource(path=model_file(spec))}
    projector = spec.projector_path()
    if projector is not None:
        update["mmproj"] = PathSource(path=projector)
    if draft is not None and spec.speculative is not None:
        update["speculative"] = spec.speculative.model_copy(update={"draft_path": model_file(draft)})
    return spec.model_copy(update=update)


def files_present(spec: ModelSpec) -> bool:
    """Whether the model's file (a safetensors model: its source folder's weights) is on local disk. Never
    converts and never touches the network (blocking: it looks at the disk)."""
    try:
        if isinstance(spec.source, SafetensorsSource):
            folder = spec.source.safetensors.folder()
            return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
        projector = spec.projector_path()
        return spec.model_path().is_file() and (projector is None or projector.is_file())
    except (ConfigError, OSError, ValueError):
        return False
