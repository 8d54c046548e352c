"""`slm-server convert`: a BERT-family sentence-embedding model in Hugging Face format (config.json, vocab.txt,
model.safetensors, optional 1_Pooling/config.json) to a GGUF file that llama.cpp serves on /v1/embeddings.

Weights are copied as they are (F32 stays F32), so the GGUF computes what the original computes; the WordPiece
vocabulary is rewritten the way llama.cpp expects it (word-initial pieces marked with "▁", "##" continuations
bare). Only numpy and the `gguf` package are used: no PyTorch, no transformers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CONVERTER_VERSION = "1"
SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
LAYER_TENSORS = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
EMBEDDING_TENSORS = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}


class ConvertError(Exception):
    """The input is not a BERT-family model this converter understands; the message says what is wrong."""


def cache_root() -> Path:
    return Path(os.environ.get("SLM_CACHE_DIR") or Path.home() / ".cache" / "slm-server")


def conversion_path(model_dir: Path, label: str) -> Path:
    """Where the GGUF converted from this version of `model_dir` is cached (whether or not it exists yet)."""
    fingerprint = hashlib.sha256(CONVERTER_VERSION.encode())
    for name in ("config.json", "vocab.txt", "model.safetensors", "1_Pooling/config.json"):
        path = model_dir / name
        if path.exists():
            stat = path.stat()
            fingerprint.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_root() / "converted" / f"{label}-{fingerprint.hexdigest()[:16]}.gguf"


def cached_conversion(model_dir: Path, label: str) -> Path:
    """The GGUF converted from `model_dir`, converting it first if this version of it was never converted."""
    output = conversion_path(model_dir, label)
    if not output.exists():
        logger.info("converting %s to GGUF at %s (once)", model_dir, output)
        convert_bert(model_dir, output, name=label)
    return output


def convert_bert(model_dir: Path, output: Path, *, name: str | None = None) -> Path:
    import gguf

    config = _read_json(model_dir / "config.json")
    if config.get("model_type") != "bert":
        raise ConvertError(f"{model_dir}/config.json: model_type is {config.get('model_type')!r}, not 'bert'")
    tokens, types, special = _vocabulary(model_dir)
    tensors = read_safetensors(model_dir / "model.safetensors")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(f".partial-{os.getpid()}")
    writer = gguf.GGUFWriter(str(partial), "bert")
    writer.add_name(name or model_dir.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config.get("layer_norm_eps", 1e-12))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(model_dir))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(config.get("type_vocab_size", 2))
    writer.add_bos_token_id(special["cls_token"])
    writer.add_sep_token_id(special["sep_token"])
    writer.add_eos_token_id(special["sep_token"])
    writer.add_unk_token_id(special["unk_token"])
    writer.add_pad_token_id(special["pad_token"])
    writer.add_mask_token_id(special["mask_token"])
    for source, target in _tensor_names(tensors, config["num_hidden_layers"]):
        writer.add_tensor(target, tensors[source].astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(output)
    return output


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file as numpy arrays (memory-mapped)."""
    with path.open("rb") as fh:
        (header_size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    arrays = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ConvertError(f"{path}: tensor {key} has dtype {info['dtype']}, which this converter does not read")
        start, end = info["data_offsets"]
        arrays[key] = data[start:end].view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return arrays


def _vocabulary(model_dir: Path) -> tuple[list[str], list[int], dict[str, int]]:
    import gguf

    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json", required=False)
    special_text = {key: tokenizer_config.get(key) or default for key, default in SPECIAL_TOKENS.items()}
    missing = [text for text in special_text.values() if text not in vocab]
    if missing:
        raise ConvertError(f"{model_dir}/vocab.txt lacks the special tokens {missing}")
    special = {key: vocab.index(text) for key, text in special_text.items()}
    tokens = [_phantom(token) for token in vocab]
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        duplicates = sorted({t for t in tokens if t in seen or seen.add(t)})  # type: ignore[func-returns-value]
        raise ConvertError(f"{model_dir}/vocab.txt has duplicate pieces {duplicates[:5]} (llama.cpp would abort)")
    control = set(special.values())
    types = [int(gguf.TokenType.CONTROL if i in control else gguf.TokenType.NORMAL) for i in range(len(tokens))]
    return tokens, types, special


def _phantom(token: str) -> str:
    """BERT's "cat" / "##s" in llama.cpp's WordPiece form: "▁cat" / "s"; bracketed specials unchanged."""
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def _pooling(model_dir: Path) -> Any:
    import gguf

    pooling = _read_json(model_dir / "1_Pooling" / "config.json", required=False)
    if pooling.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if pooling and not pooling.get("pooling_mode_mean_tokens", True):
        raise ConvertError(f"{model_dir}/1_Pooling/config.json: only mean or CLS pooling is supported")
    return gguf.PoolingType.MEAN


def _tensor_names(tensors: dict[str, np.ndarray], n_layer: int) -> list[tuple[str, str]]:
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    pairs = [(prefix + source, target) for source, target in EMBEDDING_TENSORS.items()]
    for i in range(n_layer):
        for source, target in LAYER_TENSORS.items():
            for kind in ("weight", "bias"):
                pairs.append((f"{prefix}encoder.layer.{i}.{source}.{kind}", f"blk.{i}.{target}.{kind}"))
    missing = [source for source, _ in pairs if source not in tensors]
    if missing:
        raise ConvertError(f"model.safetensors lacks {len(missing)} BERT tensors, for example {missing[:3]}")
    return pairs


def _read_json(path: Path, *, required: bool = True) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ConvertError(f"{path} does not exist") from None
        return {}
