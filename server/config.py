"""Server settings (environment and CLI) and the model registry file (`models.yaml`).

Pydantic and YAML only: nothing here touches the network or llama.cpp.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "SLM_"


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/slm-server`, by default ~/.local/share/slm-server."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "slm-server"


class ConfigError(Exception):
    """A configuration problem, with a message meant for the operator."""


class Settings(BaseModel):
    """Server-wide settings. Precedence: CLI flag > environment (`SLM_*`) > default.

    List settings are comma-separated in the environment (`SLM_API_KEYS=k1,k2`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    models_file: Path = Path("models.yaml")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    preload: tuple[str, ...] = ()
    api_keys: tuple[SecretStr, ...] = ()
    api_key_file: Path | None = None
    admin_keys: tuple[SecretStr, ...] = Field(
        default=(), description="Bearer keys for the admin API (/models, /models/load ...); client keys do not open it."
    )
    metrics_require_key: bool = False
    insecure_no_auth: bool = Field(default=False, description="Allow serving beyond loopback without an API key.")
    loopback_guard: bool = Field(
        default=False,
        description="With no API key on a loopback address, refuse requests not addressed to a loopback name or "
        "sent by a foreign web page (server/access_guard.py). `slm-server serve` always turns it on.",
    )
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest request body; images sent as base64 data URLs count against it (4/3 of their bytes).",
    )
    max_images_per_request: int = Field(
        default=16, ge=0, le=1024, description="Most images one request may hold; 0: images are refused."
    )
    max_image_bytes: int = Field(
        default=5 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest encoded image (a data URL's decoded bytes, or a remote image's body). A data URL also "
        "counts against max_body_bytes (4/3 of its bytes as base64).",
    )
    max_image_pixels: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        le=1024**3,
        description="Most pixels (width x height) of one image, read from its header before it is decoded; a "
        "larger image than 4 Mi pixels is scaled down to that as it is decoded (3 bytes a pixel).",
    )
    remote_image_hosts: tuple[  # each `host`, `[IPv6]`, or either with `:port`
        Annotated[str, Field(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:[0-9]{1,5})?$")], ...
    ] = Field(
        default=(),
        description="Hosts images may be fetched from by URL (`host`: its http and https default ports, or "
        "`host:port`; exact, case-insensitive); no redirect is followed. Empty: image URLs are refused and images "
        "come only as base64 data URLs.",
    )
    image_memory_bytes: int = Field(
        default=1024**3,
        ge=16 * 1024 * 1024,
        le=1024**4,
        description="Bytes the decoded images of all requests in flight may take at once (3 a pixel, each image at "
        "most 4 Mi pixels); a request whose images would pass it is a 429 before any is decoded.",
    )
    remote_image_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="How long fetching one remote image may take, body included."
    )
    max_messages: int = Field(default=1000, ge=1)
    max_embedding_inputs: int = Field(default=2048, ge=1)
    max_embedding_tokens: int = Field(default=65536, ge=1, description="Most tokens one embedding request may hold.")
    request_timeout_s: float = Field(default=600.0, gt=0)
    memory_budget: int = Field(default=0, ge=0, description="Bytes all loaded models may take; 0: 75% of RAM.")
    max_loaded_models: int = Field(default=4, ge=1)
    load_wait_s: float = Field(default=30.0, ge=0, description="How long a load waits for busy models.")
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    worker_call_timeout_s: float = Field(
        default=300.0, gt=0, description="How long a render, tokenize or embed call waits for a model worker."
    )
    worker_ping_interval_s: float = Field(default=10.0, gt=0, description="How often each model worker is pinged.")
    worker_hang_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="A worker that leaves a ping unanswered, or whose scheduler is stuck in one step, for longer "
        "than this is killed and restarted.",
    )
    grammar_step_limit_s: float = Field(
        default=0.25,
        gt=0,
        description="The most CPU time the output grammar of one request may take for one token on a model's "
        "scheduler thread; past it, that request ends with a grammar_too_complex error and the others go on.",
    )
    stream_send_timeout_s: float = Field(
        default=30.0, gt=0, description="How long one send of a stream may wait for a client that stopped reading."
    )
    socket_send_buffer_bytes: int = Field(
        default=256 * 1024,
        ge=4096,
        le=64 * 1024 * 1024,
        description="The kernel's send buffer of each connection (SO_SNDBUF): how much output a client that stopped "
        "reading can absorb before the send timeout applies. Linux doubles it; autotuning (up to 4 MiB) is off.",
    )

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where files and batches live (SQLite and file contents): a volume in Docker or Kubernetes.",
    )
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024, description="Largest file one upload may be.")
    batch_max_lines: int = Field(default=50_000, ge=1, description="Most requests one batch input file may hold.")
    max_open_batches: int = Field(default=16, ge=1, description="Batches one API key may have open at once.")
    max_stored_bytes: int = Field(
        default=10 * 1024**3, ge=1024, description="Bytes of files (uploads and batch output) one API key may store."
    )
    batch_output_ttl_s: int = Field(
        default=30 * 24 * 3600, ge=60, description="How long a batch's output and error files are kept."
    )
    prompt_cache_dir: Path | None = Field(
        default=None,
        description="Where generative models save the KV of long prompt prefixes when they unload, restored at their "
        "next load; default: `<data_dir>/prompt-cache`.",
    )
    prompt_cache_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        le=1024**4,
        description="Bytes the saved prompt caches of all models may take on disk, least recently used deleted "
        "first; 0: nothing saved or restored.",
    )
    prompt_cache_max_age_s: float = Field(
        default=7 * 24 * 3600,
        ge=0,
        le=10 * 365 * 24 * 3600,
        description="Seconds a saved prompt cache is kept after its last use (a save or a restore); they hold "
        "prompts' tokens. 0: kept until the byte cap evicts them.",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read `SLM_<FIELD>` variables, then apply non-None overrides (the CLI's flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, info in cls.model_fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                is_list = "tuple" in str(info.annotation)
                values[name] = [item.strip() for item in raw.split(",") if item.strip()] if is_list else raw
        values.update({k: v for k, v in overrides.items() if v is not None and v != []})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(_readable(exc, "settings")) from exc

    def all_api_keys(self) -> tuple[str, ...]:
        """Keys from the settings and the key file (one per line; blank lines and # comments skipped).

        A key file that holds no key is an error, not an open server: whoever set it meant to require one."""
        keys = [key.get_secret_value() for key in self.api_keys]
        if any(not key.strip() for key in keys):
            # `--api-key "$UNSET"` would otherwise make an empty bearer token the key: fail closed instead.
            raise ConfigError("an API key is empty: give each --api-key / SLM_API_KEYS entry a value")
        if self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(f"cannot read the API key file {self.api_key_file}: {exc}") from exc
            from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            if not from_file:
                raise ConfigError(
                    f"the API key file {self.api_key_file} holds no key (one key per line; blank lines and # "
                    "comments are skipped): put a key in it, or unset --api-key-file / SLM_API_KEY_FILE"
                )
            keys += from_file
        return tuple(keys)

    def all_admin_keys(self) -> tuple[str, ...]:
        keys = tuple(key.get_secret_value() for key in self.admin_keys)
        if any(not key.strip() for key in keys):
            raise ConfigError("an admin key is empty: give each --admin-key / SLM_ADMIN_KEYS entry a value")
        return keys


class PackageSource(BaseModel):
    """A GGUF file shipped inside an installed Python distribution, found through its metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    package: str
    file: str = "*.gguf"

    def resolve(self) -> Path:
        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ConfigError(f"package {self.package!r} is not installed (it ships the model file)") from exc
        for entry in dist.files or ():
            if fnmatch.fnmatch(entry.name, self.file) or fnmatch.fnmatch(str(entry), self.file):
                return Path(str(dist.locate_file(entry)))
        raise ConfigError(f"package {self.package!r} has no file matching {self.file!r}")


class PathSource(BaseModel):
    """A GGUF file on local disk. Relative paths are relative to the models file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path

    def resolve(self) -> Path:
        return self.path


class NotPulledError(ConfigError):
    """A Hugging Face model that is configured but whose file is not in the local cache."""


class HubSource(BaseModel):
    """A GGUF file in a Hugging Face repository, fetched only by `slm-server pull` into the standard HF cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo_id: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    filename: str = Field(min_length=1)
    revision: str = Field(default="main", description="A commit hash pins the exact file; a branch follows it.")

    def resolve(self) -> Path:
        """The cached file; never touches the network."""
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(self.repo_id, self.filename, revision=self.revision)
        if not isinstance(cached, str):
            raise NotPulledError(f"{self.repo_id}/{self.filename}@{self.revision} is not in the Hugging Face cache")
        return Path(cached)


class SafetensorsModel(BaseModel):
    """A BERT-family model in Hugging Face format: a folder, or a folder inside an installed package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    package: str | None = None
    dir: Path

    def folder(self) -> Path:
        if self.package is None:
            return self.dir
        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ConfigError(f"package {self.package!r} is not installed (it ships the model)") from exc
        return Path(str(dist.locate_file(self.dir)))


class SafetensorsSource(BaseModel):
    """Converted to GGUF on first use (`slm-server convert`), then served from the conversion cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    safetensors: SafetensorsModel

    def resolve(self) -> Path:
        # The conversion belongs to the model layer (server/models/sources.py), which resolves these first.
        raise ConfigError("a safetensors model's file is resolved by server.models.sources.model_file")


SOURCE_KINDS = {"package": PackageSource, "repo_id": HubSource, "safetensors": SafetensorsSource}


def _source_kind(value: object) -> str:
    if isinstance(value, dict):
        return next((key for key in SOURCE_KINDS if key in value), "path")
    return next((key for key, kind in SOURCE_KINDS.items() if isinstance(value, kind)), "path")


ModelSource = Annotated[
    Annotated[PackageSource, Tag("package")]
    | Annotated[HubSource, Tag("repo_id")]
    | Annotated[SafetensorsSource, Tag("safetensors")]
    | Annotated[PathSource, Tag("path")],
    Discriminator(_source_kind),
]
# A vision model's projector (`mmproj`): a second GGUF file from the same kinds of source, never converted.
ProjectorSource = Annotated[
    Annotated[PackageSource, Tag("package")]
    | Annotated[HubSource, Tag("repo_id")]
    | Annotated[PathSource, Tag("path")],
    Discriminator(_source_kind),
]


DEFAULT_THINKING_BUDGET = 2048

KVCacheType = Literal["f16", "q8_0", "q4_0"]


class ReasoningSpec(BaseModel):
    """A reasoning model's thinking block: the markers around it in the output, the tokens of it after which its
    end is forced (at the default effort), and the chat template's variable that turns it on and off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str = Field(default="<think>", min_length=1, max_length=64)
    end: str = Field(default="</think>", min_length=1, max_length=64)
    budget_tokens: int = Field(default=DEFAULT_THINKING_BUDGET, ge=1)
    switch: str | None = Field(
        default="auto",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="'auto': `enable_thinking` where the template mentions it; null: the template has no switch.",
    )
    implicit_start: bool | Literal["auto"] = Field(
        default="auto",
        description="The block is open from the reply's first token though no prompt writes `start`; 'auto': where "
        "the template mentions `end` but not `start` (DeepSeek-R1's first templates).",
    )

    @model_validator(mode="after")
    def _distinct_markers(self) -> ReasoningSpec:
        if self.start == self.end:
            raise ValueError("`start` and `end` must differ: the thinking block is told apart by them")
        return self


class SpeculativeSpec(BaseModel):
    """A model's speculative decoding: drafts verified in the same decode step as the other sequences' tokens
    (server/engine/speculative.py). Greedy output is the same with and without it; sampled output keeps its
    distribution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_lookup: bool = Field(
        default=True,
        description="Draft the tokens that followed the latest earlier occurrence of the reply's last few tokens in "
        "the prompt or the reply (n-gram drafting): fast where the answer repeats the prompt (editing code, quoting).",
    )
    draft: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Another entry of models.yaml, with this model's vocabulary (a smaller model of its family), "
        "whose greedy guesses are drafted where prompt lookup finds nothing.",
    )
    draft_path: Path | None = Field(
        default=None,
        description="Set by the server when the model loads: the `draft` entry's file (not for models.yaml).",
    )
    max_draft_tokens: int = Field(default=8, ge=1, le=32, description="Most tokens drafted for a sequence per step.")
    ngram_min: int = Field(default=2, ge=1, le=8, description="Shortest n-gram looked up.")
    ngram_max: int = Field(default=4, ge=1, le=8, description="Longest n-gram looked up (tried first).")

    @model_validator(mode="after")
    def _ngram_range(self) -> SpeculativeSpec:
        if self.ngram_min > self.ngram_max:
            raise ValueError("`ngram_min` must not exceed `ngram_max`")
        return self


class ModelSpec(BaseModel):
    """One entry of `models.yaml`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    description: str = ""
    aliases: tuple[str, ...] = ()
    source: ModelSource
    chat_template: str | None = Field(
        default=None, description="A Jinja chat template replacing the GGUF's own; default: the file's template."
    )
    n_ctx: int = Field(default=2048, ge=64, description="Context window in tokens, shared by all sequences.")
    n_threads: int | None = Field(default=None, ge=1, description="llama.cpp threads; default: all cores.")
    n_batch: int = Field(default=512, ge=8, description="Most tokens evaluated in one decode step.")
    parallel: int = Field(default=4, ge=1, le=64, description="Sequences decoded together.")
    max_queue: int = Field(default=64, ge=0, description="Requests that may wait for a sequence; then 429.")
    max_tokens_cap: int | None = Field(default=None, ge=1, description="Most tokens one request may generate.")
    embedding: bool = Field(default=False, description="An embedding model (pooled), served on /v1/embeddings.")
    reasoning: ReasoningSpec | Literal[False] | None = Field(
        default=None,
        description="A reasoning model's thinking (<think> blocks); default: found in the chat template; false: none.",
    )
    reranker: bool = Field(
        default=False,
        description="A cross-encoder reranker (llama.cpp's rank pooling: a classification head scores a query and "
        "a document together), served on /v1/rerank.",
    )
    flash_attn: bool = Field(
        default=True,
        description="llama.cpp flash attention (auto). Without it, attention kernels differ for one and several "
        "tokens, so output can depend on what else is in the batch.",
    )
    cache_type_k: KVCacheType = Field(
        default="f16",
        description="llama.cpp KV cache type of the keys: f16, or q8_0 / q4_0 (about 1.9x / 3.6x smaller than f16, "
        "at some cost in accuracy). The model's attention head size must be a multiple of 32 for the quantized ones.",
    )
    cache_type_v: KVCacheType = Field(
        default="f16",
        description="llama.cpp KV cache type of the values, as `cache_type_k`; q8_0 and q4_0 need `flash_attn`.",
    )
    prompt_cache: bool = Field(
        default=True,
        description="Save the KV of this model's long prompt prefixes (a system prompt) to disk when it unloads and "
        "restore it when it loads (generative models; SLM_PROMPT_CACHE_BYTES 0 turns it off for all).",
    )
    speculative: SpeculativeSpec | None = Field(
        default=None, description="Speculative decoding (prompt lookup); default: off. `{}` turns it on."
    )
    use_extra_bufts: Literal["auto"] | bool = Field(
        default="auto",
        description="llama.cpp weight repacking buffers (AMX and CPU repack). 'auto': off where the CPU has AMX.",
    )
    keep_alive: float | None = Field(
        default=300.0, ge=0, description="Seconds an idle model stays loaded; null: until evicted or shutdown."
    )
    mmproj: ProjectorSource | None = Field(
        default=None,
        description="A vision model's multimodal projector (llama.cpp `mmproj` GGUF), from the same kinds of source "
        "as the model; a model without one takes no images.",
    )
    owned_by: str = "slm-server"

    @field_validator("aliases", mode="before")
    @classmethod
    def _aliases_list(cls, value: object) -> object:
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _one_kind(self) -> ModelSpec:
        if self.embedding and self.reranker:
            raise ValueError("`embedding` and `reranker` cannot both be true: a model is one or the other")
        return self

    @model_validator(mode="after")
    def _cache_types_usable(self) -> ModelSpec:
        if self.cache_type_v != "f16" and not self.flash_attn:
            raise ValueError(
                f"`cache_type_v: {self.cache_type_v}` needs flash attention: llama.cpp stores a quantized V cache "
                "only with it (set `flash_attn: true` or `cache_type_v: f16`)"
            )
        if (self.embedding or self.reranker) and self.speculative is not None:
            raise ValueError("`speculative` applies to generative models only")
        if self.embedding or self.reranker:
            for field in ("cache_type_k", "cache_type_v"):
                if getattr(self, field) != "f16":
                    raise ValueError(
                        f"`{field}` applies to generative models only: an embedding or reranker model keeps an f16 "
                        f"cache (set `{field}: f16` or leave it out)"
                    )
        return self

    @model_validator(mode="after")
    def _projector_for_generative(self) -> ModelSpec:
        if self.mmproj is not None and (self.embedding or self.reranker):
            raise ValueError("`mmproj` (a vision projector) applies to generative models only")
        return self

    def model_path(self) -> Path:
        return self.source.resolve()

    def projector_path(self) -> Path | None:
        """The projector's file, None for a model without one (ConfigError / NotPulledError as model_path)."""
        return None if self.mmproj is None else self.mmproj.resolve()


class ModelsFile(BaseModel):
    """The whole `models.yaml`: a list of model entries with unique names and aliases."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[ModelSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _drafts_known(self) -> ModelsFile:
        generative = {spec.name for spec in self.models if not (spec.embedding or spec.reranker)}
        for spec in self.models:
            speculative = spec.speculative
            if speculative is None:
                continue
            if speculative.draft_path is not None:
                raise ValueError(f"model {spec.name!r}: `draft_path` is set by the server; name the entry in `draft`")
            if speculative.draft is None:
                continue
            if speculative.draft == spec.name:
                raise ValueError(f"model {spec.name!r} cannot be its own draft model")
            if speculative.draft not in generative:
                raise ValueError(
                    f"model {spec.name!r}: its draft model {speculative.draft!r} is not a generative model of this "
                    "file (name it by its entry's `name`)"
                )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> ModelsFile:
        seen: dict[str, str] = {}
        for spec in self.models:
            for name in (spec.name, *spec.aliases):
                if name in seen:
                    raise ValueError(f"name {name!r} of model {spec.name!r} is already used by {seen[name]!r}")
                seen[name] = spec.name
        return self


def load_models_file(path: Path) -> ModelsFile:
    """Parse and validate `models.yaml`; every problem (a missing or unreadable file, bytes that are not UTF-8,
    bad YAML, a document of the wrong shape) becomes a `ConfigError` naming the entry."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"models file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read the models file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"models file {path} is not UTF-8 text: {exc}") from exc
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"models file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        raise ConfigError(f"models file {path} is empty; it must hold a `models:` list")
    if not isinstance(raw, dict):
        raise ConfigError(f"models file {path} must be a mapping with a `models:` list, not a {type(raw).__name__}")
    entries = raw.get("models")
    if not isinstance(entries, list):
        raise ConfigError(f"models file {path}: `models` must be a list of model entries, not {entries!r:.80}")
    for entry in entries:
        source = entry.get("source") if isinstance(entry, dict) else None
        if isinstance(source, dict) and isinstance(source.get("path"), str):
            source["path"] = _beside(path, source["path"])
        projector = entry.get("mmproj") if isinstance(entry, dict) else None
        if isinstance(projector, dict) and isinstance(projector.get("path"), str):
            projector["path"] = _beside(path, projector["path"])
        folder = source.get("safetensors") if isinstance(source, dict) else None
        if isinstance(folder, dict) and "package" not in folder and isinstance(folder.get("dir"), str):
            folder["dir"] = _beside(path, folder["dir"])
    try:
        return ModelsFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_readable(exc, str(path), raw)) from exc


def _beside(models_file: Path, relative: str) -> str:
    try:
        return str((models_file.parent / relative).resolve())
    except (OSError, ValueError):  # a NUL byte, a loop of links: left as written, for validation to refuse
        return relative


def _readable(exc: ValidationError, where: str, raw: object = None) -> str:
    lines = [f"invalid {where}:"]
    for err in exc.errors():
        loc = list(err["loc"])
        label = ".".join(str(part) for part in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int) and isinstance(raw, dict):
            entries = raw.get("models")
            entries = entries if isinstance(entries, list) else []
            entry = entries[loc[1]] if loc[1] < len(entries) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            if name:
                label = f"model {name!r}: " + ".".join(str(p) for p in loc[2:])
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {label}: {message}")
    return "\n".join(lines)
