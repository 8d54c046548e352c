"""What can be checked about a multimodal projector GGUF (an `mmproj` file) before llama.cpp's clip loader sees it.

The loader turns most problems into an error, but some abort the whole process: a metadata key of the wrong type
(gguf asserts the type), a zero patch size (a division), an unknown MiniCPM-V version, and tensors whose shapes do
not fit each other (ggml asserts while building the encoder's graph). So, besides the GGUF checks every model file
gets (magic, header, truncation), this checks the types of the keys llama.cpp reads, their values, and, for the
projector types we serve, the tensors each needs and their shapes. Each problem is one readable sentence."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from server.engine.gguf_check import MAX_DIMS, check_gguf
from server.engine.gguf_header import GGUF_MAGIC, GGUFProblem, read_string, read_typed_pairs

# GGUF value types
U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9
_TYPE_NAMES = {U32: "uint32", I32: "int32", F32: "float32", BOOL: "bool", STRING: "string", ARRAY: "array"}

# Projector types (`clip.projector_type`) we load: llama.cpp's `resampler` is MiniCPM-V's (it calls it minicpmv),
# `mlp` LLaVA-1.5's. Both decode their image embeddings causally at ordinary positions.
SUPPORTED_TYPES = ("resampler", "mlp")
# MiniCPM-V versions llama.cpp knows, and its query count for each when the file names none (2 is Llama3-V 2.5).
MINICPMV_QUERIES = {2: 96, 3: 64, 4: 64, 5: 64, 6: 64, 100045: 64}
RESAMPLER_HEAD = 128  # llama.cpp's resampler uses heads of 128: its width is a multiple of it
POSITION_BUCKETS = 70 * 70  # MiniCPM-V's vision tower looks its positions up in a 70 x 70 table
# ggml types the encoder's operations are known to take (what the converters write, and what the tests load):
# vectors (biases, norms) and tensors used as activations in f32, matrices in f32 or f16. Another type can reach
# an operation no CPU kernel has, which aborts the process (an f16 resampler.query does); quantized projectors
# are refused until tested.
F32_TYPE, F16_TYPE = 0, 1
MATRIX_TYPES = frozenset({F32_TYPE, F16_TYPE})
F32_ONLY = frozenset({"resampler.query", "v.class_embd"})
MAX_SIDE = 4096  # pixels of image_size / patch_size: beyond any real encoder, and it bounds the warm-up's memory
MAX_LAYERS = 256

# Every scalar key llama.cpp's clip loader reads (for vision) and the type it asserts.
_SCALAR_KEYS = {
    "general.name": STRING,
    "general.description": STRING,
    "clip.projector_type": STRING,
    "clip.vision.projector_type": STRING,
    "clip.has_vision_encoder": BOOL,
    "clip.has_audio_encoder": BOOL,
    "clip.has_gen_audio_encoder": BOOL,
    "clip.use_gelu": BOOL,
    "clip.use_silu": BOOL,
    "clip.minicpmv_version": I32,
    "clip.minicpmv_query_num": U32,
    "clip.vision.attention.layer_norm_epsilon": F32,
    "clip.vision.swiglu_clamp": F32,
    "clip.vision.mm_patch_merge_type": STRING,
    **{
        f"clip.vision.{key}": U32
        for key in (
            "embedding_length",
            "feed_forward_length",
            "block_count",
            "projection_dim",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.head_dim",
            "image_size",
            "patch_size",
            "image_min_pixels",
            "image_max_pixels",
            "preproc_min_tiles",
            "preproc_max_tiles",
            "preproc_image_size",
            "projector.scale_factor",
            "projector.query_side",
            "projector.window_side",
            "spatial_merge_size",
            "n_wa_pattern",
            "window_size",
            "sam.head_count",
            "sam.block_count",
            "sam.embedding_length",
            "expert_used_count",
        )
    },
}
_REQUIRED_U32 = (
    "embedding_length",
    "feed_forward_length",
    "block_count",
    "projection_dim",
    "attention.head_count",
    "image_size",
    "patch_size",
)


class ProjectorProblem(GGUFProblem):
    """What is wrong with a projector file, as one readable sentence."""


@dataclass(frozen=True)
class ProjectorInfo:
    projector_type: str  # as the file names it (`resampler`, `mlp`)
    n_embd_out: int  # the width of the embeddings it makes: the language model's embedding width
    image_size: int
    patch_size: int
    minicpmv_version: int | None = None
    query_num: int | None = None  # image tokens per MiniCPM-V slice


@dataclass(frozen=True)
class _Tensor:
    dims: tuple[int, ...]  # ggml order: dims[0] is the row length
    ggml_type: int


def check_projector(path: Path, *, n_embd_text: int | None = None) -> ProjectorInfo:
    """What the projector is; raise ProjectorProblem (a GGUFProblem) saying what is wrong otherwise.
    `n_embd_text`, when given, is the language model's embedding width, which the projector's output must match."""
    architecture = check_gguf(path)  # magic, version, header, tensor data within the file
    if architecture != "clip":
        raise ProjectorProblem(f"it is not a projector file (its architecture is {architecture!r}, not 'clip')")
    size = path.stat().st_size
    with path.open("rb") as fh:
        try:
            metadata, tensors = _read(fh, size)
        except (struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            raise ProjectorProblem(f"its GGUF header is truncated or damaged ({exc})") from None
    info = _check_keys(metadata, tensors)
    for name, tensor in tensors.items():
        vector = sum(dim > 1 for dim in tensor.dims) <= 1 or name in F32_ONLY
        if (tensor.ggml_type != F32_TYPE) if vector else (tensor.ggml_type not in MATRIX_TYPES):
            raise ProjectorProblem(f"its tensor {name} has a ggml type ({tensor.ggml_type}) its encoder cannot use")
    if n_embd_text is not None and info.n_embd_out != n_embd_text:
        raise ProjectorProblem(
            f"it makes embeddings of width {info.n_embd_out} but the model's width is {n_embd_text} "
            "(a projector of another model)"
        )
    return info


def _read(fh: BinaryIO, size: int) -> tuple[dict[str, tuple[int, object]], dict[str, _Tensor]]:
    if fh.read(4) != GGUF_MAGIC:
        raise ProjectorProblem("it is not a GGUF file")
    _version, n_tensors, n_kv = struct.unpack("<IQQ", fh.read(20))
    metadata = read_typed_pairs(fh, n_kv, size)
    tensors: dict[str, _Tensor] = {}
    for _ in range(n_tensors):
        name = read_string(fh, size)
        (n_dims,) = struct.unpack("<I", fh.read(4))
        if n_dims > MAX_DIMS:
            raise ProjectorProblem("its tensor table is damaged")
        dims = struct.unpack(f"<{n_dims}Q", fh.read(8 * n_dims))
        ggml_type, _offset = struct.unpack("<IQ", fh.read(12))
        tensors[name] = _Tensor(tuple(dims), ggml_type)
    return metadata, tensors


def _check_keys(metadata: dict[str, tuple[int, object]], tensors: dict[str, _Tensor]) -> ProjectorInfo:
    for key, expected in _SCALAR_KEYS.items():
        if key in metadata and metadata[key][0] != expected:
            got = _TYPE_NAMES.get(metadata[key][0], f"type {metadata[key][0]}")
            raise ProjectorProblem(f"its key {key} is a {got}, not a {_TYPE_NAMES[expected]}")
    if metadata.get("clip.has_vision_encoder", (BOOL, False))[1] is not True:
        raise ProjectorProblem("it has no vision encoder (clip.has_vision_encoder)")
    if (
        metadata.get("clip.has_audio_encoder", (BOOL, False))[1]
        or metadata.get("clip.has_gen_audio_encoder", (BOOL, False))[1]
    ):
        raise ProjectorProblem("it has an audio encoder, which this server does not serve")
    projector_type = _value(metadata, "clip.projector_type") or _value(metadata, "clip.vision.projector_type")
    if not isinstance(projector_type, str) or not projector_type:
        raise ProjectorProblem("its header names no projector type (clip.projector_type)")
    if projector_type not in SUPPORTED_TYPES:
        raise ProjectorProblem(
            f"its projector type {projector_type!r} is not one this server loads ({', '.join(SUPPORTED_TYPES)})"
        )
    for key in _REQUIRED_U32:
        if f"clip.vision.{key}" not in metadata:
            raise ProjectorProblem(f"its header has no clip.vision.{key}")
    if "clip.vision.attention.layer_norm_epsilon" not in metadata:
        raise ProjectorProblem("its header has no clip.vision.attention.layer_norm_epsilon")
    for key in ("clip.vision.image_mean", "clip.vision.image_std"):
        value = _value(metadata, key)
        if not isinstance(value, list) or len(value) < 3:
            raise ProjectorProblem(f"its {key} is not a list of three numbers")
    vision = _Vision(metadata)
    if projector_type == "resampler":
        return _check_resampler(metadata, tensors, vision)
    return _check_mlp(tensors, vision)


class _Vision:
    """The vision tower's sizes, each within bounds."""

    def __init__(self, metadata: dict[str, tuple[int, object]]) -> None:
        self.n_embd = _positive(metadata, "clip.vision.embedding_length")
        self.n_ff = _positive(metadata, "clip.vision.feed_forward_length")
        self.n_layer = _positive(metadata, "clip.vision.block_count", MAX_LAYERS)
        self.n_head = _positive(metadata, "clip.vision.attention.head_count")
        self.image_size = _positive(metadata, "clip.vision.image_size", MAX_SIDE)
        self.patch_size = _positive(metadata, "clip.vision.patch_size", MAX_SIDE)
        head_dim = _value(metadata, "clip.vision.attention.head_dim")
        n_head_kv = _value(metadata, "clip.vision.attention.head_count_kv")
        if head_dim is not None or (n_head_kv is not None and n_head_kv != self.n_head):
            raise ProjectorProblem("it sets a head size or grouped heads, which its projector type does not use")
        if self.n_embd % self.n_head:
            raise ProjectorProblem(f"its width {self.n_embd} does not split into {self.n_head} attention heads")
        if self.image_size < self.patch_size:
            raise ProjectorProblem("its image size is smaller than its patch size")


def _check_resampler(
    metadata: dict[str, tuple[int, object]], tensors: dict[str, _Tensor], vision: _Vision
) -> ProjectorInfo:
    version = _value(metadata, "clip.minicpmv_version")
    version = 2 if version in (None, 0) else version
    if version not in MINICPMV_QUERIES:
        raise ProjectorProblem(f"its MiniCPM-V version {version} is not one llama.cpp knows")
    query_num = _value(metadata, "clip.minicpmv_query_num") or MINICPMV_QUERIES[version]
    shapes = _tower_shapes(vision, tensors, n_positions=POSITION_BUCKETS)
    query = _need(tensors, "resampler.query")
    width = query.dims[0]
    if width % RESAMPLER_HEAD or len(query.dims) != 2 or query.dims[1] != query_num:
        raise ProjectorProblem(
            f"its resampler.query is {list(query.dims)}; it must be [width, {query_num}] with a width that is a "
            "multiple of 128"
        )
    shapes["resampler.kv.weight"] = (vision.n_embd, width)
    for name in ("q", "k", "v", "out"):
        shapes[f"resampler.attn.{name}.weight"] = (width, width)
        shapes[f"resampler.attn.{name}.bias"] = (width,)
    for name in ("q", "kv", "post"):
        shapes[f"resampler.ln_{name}.weight"] = (width,)
        shapes[f"resampler.ln_{name}.bias"] = (width,)
    shapes["resampler.proj.weight"] = (width, width)
    _check_shapes(tensors, shapes)
    _need(tensors, "resampler.pos_embed_k")  # loaded, not used: llama.cpp computes the table itself
    return ProjectorInfo("resampler", width, vision.image_size, vision.patch_size, version, query_num)


def _check_mlp(tensors: dict[str, _Tensor], vision: _Vision) -> ProjectorInfo:
    n_patches = (vision.image_size // vision.patch_size) ** 2
    has_class = "v.class_embd" in tensors
    shapes = _tower_shapes(vision, tensors, n_positions=n_patches + has_class)
    if has_class:
        shapes["v.class_embd"] = (vision.n_embd,)
    hidden = _need(tensors, "mm.0.weight").dims[-1]
    width = _need(tensors, "mm.2.weight").dims[-1]
    shapes.update(
        {
            "mm.0.weight": (vision.n_embd, hidden),
            "mm.0.bias": (hidden,),
            "mm.2.weight": (hidden, width),
            "mm.2.bias": (width,),
        }
    )
    if any(name.startswith(("mm.1.", "mm.3.", "mm.4.")) for name in tensors):
        raise ProjectorProblem("it has the layers of another LLaVA projector (mm.3 / mm.4), not a two-layer MLP")
    _check_shapes(tensors, shapes)
    return ProjectorInfo("mlp", width, vision.image_size, vision.patch_size)


def _tower_shapes(vision: _Vision, tensors: dict[str, _Tensor], *, n_positions: int) -> dict[str, tuple[int, ...]]:
    """The shapes of the vision transformer's tensors (its layer norms before and after are optional)."""
    v, ff, p = vision.n_embd, vision.n_ff, vision.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "v.patch_embd.weight": (p, p, 3, v),
        "v.position_embd.weight": (v, n_positions),
    }
    for i in range(vision.n_layer):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            shapes[f"v.blk.{i}.{name}.weight"] = (v, v)
        for name in ("ln1", "ln2"):
            shapes[f"v.blk.{i}.{name}.weight"] = (v,)
    for name in ("v.pre_ln.weight", "v.post_ln.weight"):
        if name in tensors:
            shapes[name] = (v,)
    shapes["_ff"] = (ff,)  # the feed-forward pair is checked apart: converters name its halves either way
    return shapes


def _check_shapes(tensors: dict[str, _Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    (n_ff,) = shapes.pop("_ff")
    for name, dims in shapes.items():
        tensor = _need(tensors, name)
        if tensor.dims != dims:
            raise ProjectorProblem(f"its tensor {name} is {list(tensor.dims)}, not {list(dims)}")
    for name, tensor in tensors.items():
        # optional biases and norms beside a checked weight must fit it too
        stem, _, kind = name.rpartition(".")
        if kind == "bias" and f"{stem}.weight" in shapes:
            weight = shapes[f"{stem}.weight"]
            if tensor.dims != (weight[-1],):
                raise ProjectorProblem(f"its tensor {name} is {list(tensor.dims)}, not [{weight[-1]}]")
    layers = {name.split(".")[2] for name in shapes if name.startswith("v.blk.")}
    for i in layers:
        up, down = _need(tensors, f"v.blk.{i}.ffn_up.weight"), _need(tensors, f"v.blk.{i}.ffn_down.weight")
        width = shapes[f"v.blk.{i}.attn_q.weight"][0]
        if {up.dims, down.dims} != {(width, n_ff), (n_ff, width)}:
            raise ProjectorProblem(f"its feed-forward tensors of layer {i} do not fit its widths")
        for half in ("ffn_up", "ffn_down"):
            bias = tensors.get(f"v.blk.{i}.{half}.bias")
            weight = tensors[f"v.blk.{i}.{half}.weight"]
            if bias is not None and bias.dims != (weight.dims[-1],):
                raise ProjectorProblem(f"its tensor v.blk.{i}.{half}.bias does not fit its weight")


def _need(tensors: dict[str, _Tensor], name: str) -> _Tensor:
    tensor = tensors.get(name)
    if tensor is None:
        raise ProjectorProblem(f"it has no tensor {name}")
    return tensor


def _value(metadata: dict[str, tuple[int, object]], key: str) -> object:
    return metadata[key][1] if key in metadata else None


def _positive(metadata: dict[str, tuple[int, object]], key: str, most: int = 1 << 20) -> int:
    value = _value(metadata, key)
    if not isinstance(value, int) or not 0 < value <= most:
        raise ProjectorProblem(f"its {key} is {value}, not a whole number from 1 to {most}")
    return value
