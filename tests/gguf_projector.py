"""Tiny multimodal projector GGUFs (`mmproj` files) written by the test suite, with the metadata keys and tensor
names llama.cpp's converters write: a small vision transformer and, on top, MiniCPM-V's resampler (projector type
`resampler`, which llama.cpp calls minicpmv) or LLaVA's two-layer MLP (`mlp`). Random weights; paired with a tiny
llama-architecture language model whose embedding width is the projector's output width (`write_vision_pair`)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from tests.gguf_factory import write_tiny_llama

# The text pieces llama.cpp puts around MiniCPM-V 2.5's images (<image> overview </image><slice>...</slice>); the
# real Llama-3 vocabulary has them as added tokens, and llama.cpp looks them up by text when a projector loads.
MINICPMV_TOKENS = ("<image>", "</image>", "<slice>", "</slice>")
# MiniCPM-V's resampler uses attention heads of 128 (fixed in llama.cpp), so its width is a multiple of 128.
RESAMPLER_HEAD = 128
# MiniCPM-V's vision transformer (SigLIP / Idefics2) has a learned position table of 70 x 70 patches.
POSITION_GRID = 70


def write_tiny_minicpmv_projector(
    path: Path,
    *,
    n_embd_text: int = RESAMPLER_HEAD,
    n_embd: int = 32,
    n_head: int = 2,
    n_ff: int = 64,
    n_layer: int = 1,
    image_size: int = 28,
    patch_size: int = 14,
    query_num: int | None = 8,
    minicpmv_version: int = 2,
    seed: int = 0,
    omit: tuple[str, ...] = (),
    projector_type: str = "resampler",
    keys: dict[str, tuple[str, object]] | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    f16: tuple[str, ...] = (),
) -> Path:
    """A projector of MiniCPM-V 2.5's kind (`clip.projector_type` "resampler", `clip.minicpmv_version` 2), as
    llama.cpp's minicpmv converter writes it: the vision tower's tensors under `v.`, the resampler's under
    `resampler.`; its fc1/fc2 are stored as ffn_down/ffn_up (llama.cpp swaps them back on load).

    `query_num` None leaves out `clip.minicpmv_query_num` (as older conversions do; llama.cpp then takes 96 for
    version 2). Damaged files: `omit` leaves tensors out, `projector_type` writes another type's name, `keys`
    sets keys to (GGUF value type name, value) over the usual ones, `shapes` gives tensors other shapes, `f16`
    stores these tensors as f16."""
    if n_embd_text % RESAMPLER_HEAD:
        raise ValueError("the resampler's width must be a multiple of 128")
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("tiny-test-minicpmv-projector")
    writer.add_description("image encoder for MiniCPM-V")
    writer.add_file_type(1)
    writer.add_bool("clip.has_text_encoder", False)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_minicpmv_projector", True)
    writer.add_string("clip.projector_type", projector_type)
    writer.add_int32("clip.minicpmv_version", minicpmv_version)
    _vision_keys(
        writer, n_embd=n_embd, n_head=n_head, n_ff=n_ff, n_layer=n_layer, image_size=image_size, patch_size=patch_size
    )
    if query_num is not None:
        writer.add_uint32("clip.minicpmv_query_num", query_num)
    writer.add_bool("clip.use_gelu", True)

    tensors = _vision_tensors(
        rng,
        n_embd=n_embd,
        n_ff=n_ff,
        n_layer=n_layer,
        patch_size=patch_size,
        n_positions=POSITION_GRID * POSITION_GRID,
        post_ln=True,
    )
    width = n_embd_text
    queries = query_num or (96 if minicpmv_version == 2 else 64)  # llama.cpp's count when the file names none
    tensors["resampler.query"] = _weight(rng, queries, width)
    tensors["resampler.kv.weight"] = _weight(rng, width, n_embd)
    for name in ("q", "k", "v", "out"):
        tensors[f"resampler.attn.{name}.weight"] = _weight(rng, width, width)
        tensors[f"resampler.attn.{name}.bias"] = _weight(rng, width)
    for name in ("q", "kv", "post"):
        tensors[f"resampler.ln_{name}.weight"] = np.ones(width, dtype=np.float32)
        tensors[f"resampler.ln_{name}.bias"] = np.zeros(width, dtype=np.float32)
    tensors["resampler.proj.weight"] = _weight(rng, width, width)
    # llama.cpp loads it but computes the sinusoidal table itself: f16 keeps the file small.
    tensors["resampler.pos_embed_k"] = _weight(rng, POSITION_GRID * POSITION_GRID, width).astype(np.float16)
    for name, data in tensors.items():  # as the converter's f16 output: two-dimensional weights in f16
        if name.endswith(".weight") and data.ndim == 2:
            tensors[name] = data.astype(np.float16)
    for key, (value_type, value) in (keys or {}).items():
        writer.add_key_value(key, value, gguf.GGUFValueType[value_type])
    for name, shape in (shapes or {}).items():
        tensors[name] = _weight(rng, *shape)
    for name in f16:
        tensors[name] = tensors[name].astype(np.float16)
    return _write(writer, tensors, omit, path)


def write_tiny_mlp_projector(
    path: Path,
    *,
    n_embd_text: int = 64,
    n_embd: int = 32,
    n_head: int = 2,
    n_ff: int = 64,
    n_layer: int = 1,
    image_size: int = 28,
    patch_size: int = 14,
    seed: int = 0,
    omit: tuple[str, ...] = (),
) -> Path:
    """A LLaVA-1.5 style projector (`clip.projector_type` "mlp"): a CLIP vision tower with its class embedding and
    pre-layernorm, and two linear layers (`mm.0`, `mm.2`) to the language model's width."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_name("tiny-test-llava-projector")
    writer.add_file_type(1)
    writer.add_bool("clip.has_text_encoder", False)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_string("clip.projector_type", "mlp")
    _vision_keys(
        writer, n_embd=n_embd, n_head=n_head, n_ff=n_ff, n_layer=n_layer, image_size=image_size, patch_size=patch_size
    )
    writer.add_bool("clip.use_gelu", False)
    n_patches = (image_size // patch_size) ** 2
    tensors = _vision_tensors(
        rng, n_embd=n_embd, n_ff=n_ff, n_layer=n_layer, patch_size=patch_size, n_positions=n_patches + 1, post_ln=False
    )
    tensors["v.class_embd"] = _weight(rng, n_embd)
    tensors["v.pre_ln.weight"] = np.ones(n_embd, dtype=np.float32)
    tensors["v.pre_ln.bias"] = np.zeros(n_embd, dtype=np.float32)
    tensors["mm.0.weight"] = _weight(rng, n_embd_text, n_embd)
    tensors["mm.0.bias"] = _weight(rng, n_embd_text)
    tensors["mm.2.weight"] = _weight(rng, n_embd_text, n_embd_text)
    tensors["mm.2.bias"] = _weight(rng, n_embd_text)
    return _write(writer, tensors, omit, path)


def write_vision_pair(directory: Path, *, kind: str = "minicpmv", seed: int = 0) -> tuple[Path, Path]:
    """A tiny language model and a projector that fits it (the same embedding width): (model, projector)."""
    if kind == "minicpmv":
        model = write_tiny_llama(
            directory / "tiny-vision-llama.gguf",
            n_embd=RESAMPLER_HEAD,
            n_head=4,
            n_head_kv=2,
            n_ff=256,
            seed=seed,
            user_defined=MINICPMV_TOKENS,
        )
        return model, write_tiny_minicpmv_projector(directory / "tiny-minicpmv-mmproj.gguf", seed=seed)
    if kind == "mlp":
        model = write_tiny_llama(directory / "tiny-llava-llama.gguf", n_embd=64, seed=seed)
        return model, write_tiny_mlp_projector(directory / "tiny-mlp-mmproj.gguf", seed=seed)
    raise ValueError(f"unknown projector kind {kind!r}")


def _vision_keys(
    writer: gguf.GGUFWriter, *, n_embd: int, n_head: int, n_ff: int, n_layer: int, image_size: int, patch_size: int
) -> None:
    writer.add_uint32("clip.vision.image_size", image_size)
    writer.add_uint32("clip.vision.patch_size", patch_size)
    writer.add_uint32("clip.vision.embedding_length", n_embd)
    writer.add_uint32("clip.vision.feed_forward_length", n_ff)
    writer.add_uint32("clip.vision.projection_dim", 0)
    writer.add_uint32("clip.vision.attention.head_count", n_head)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_uint32("clip.vision.block_count", n_layer)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])


def _vision_tensors(
    rng: np.random.Generator,
    *,
    n_embd: int,
    n_ff: int,
    n_layer: int,
    patch_size: int,
    n_positions: int,
    post_ln: bool,
) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {
        # a convolution kernel (out, in, h, w): the converters always write it as f16
        "v.patch_embd.weight": _weight(rng, n_embd, 3, patch_size, patch_size).astype(np.float16),
        "v.patch_embd.bias": _weight(rng, n_embd),
        "v.position_embd.weight": _weight(rng, n_positions, n_embd),
    }
    for i in range(n_layer):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"v.blk.{i}.{name}.weight"] = _weight(rng, n_embd, n_embd)
            tensors[f"v.blk.{i}.{name}.bias"] = _weight(rng, n_embd)
        for name in ("ln1", "ln2"):
            tensors[f"v.blk.{i}.{name}.weight"] = np.ones(n_embd, dtype=np.float32)
            tensors[f"v.blk.{i}.{name}.bias"] = np.zeros(n_embd, dtype=np.float32)
        # fc1 / fc2 under the names the converters give them (down / up), which llama.cpp swaps back
        tensors[f"v.blk.{i}.ffn_down.weight"] = _weight(rng, n_ff, n_embd)
        tensors[f"v.blk.{i}.ffn_down.bias"] = _weight(rng, n_ff)
        tensors[f"v.blk.{i}.ffn_up.weight"] = _weight(rng, n_embd, n_ff)
        tensors[f"v.blk.{i}.ffn_up.bias"] = _weight(rng, n_embd)
    if post_ln:
        tensors["v.post_ln.weight"] = np.ones(n_embd, dtype=np.float32)
        tensors["v.post_ln.bias"] = np.zeros(n_embd, dtype=np.float32)
    return tensors


def _weight(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.2).astype(np.float32)


def _write(writer: gguf.GGUFWriter, tensors: dict[str, np.ndarray], omit: tuple[str, ...], path: Path) -> Path:
    for name, data in tensors.items():
        if name not in omit:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
