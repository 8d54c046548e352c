"""An independent reference for sentence embeddings: Hugging Face's `tokenizers` for the token ids and a plain
numpy forward pass of BERT (float64) with mean pooling and L2 normalisation, read straight from the original
model.safetensors. It shares no code with llama.cpp or with the GGUF converter's tensor mapping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from server.models.convert import read_safetensors

_erf = np.vectorize(math.erf)


class BertReference:
    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.weights = read_safetensors(model_dir / "model.safetensors")
        self.config = json.loads((model_dir / "config.json").read_text())

    def embed(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text).ids
        w, n = self.weights, len(ids)
        heads, width = self.config["num_attention_heads"], self.config["hidden_size"]
        head = width // heads
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        ).astype(np.float64)
        x = _norm(x, w, "embeddings.LayerNorm")
        for i in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def linear(name: str, h: np.ndarray, p: str = p) -> np.ndarray:
                return h @ w[p + name + ".weight"].astype(np.float64).T + w[p + name + ".bias"]

            q, k, v = (
                linear(f"attention.self.{name}", x).reshape(n, heads, head).transpose(1, 0, 2)
                for name in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            attended = (scores @ v).transpose(1, 0, 2).reshape(n, width)
            x = _norm(x + linear("attention.output.dense", attended), w, p + "attention.output.LayerNorm")
            hidden = linear("intermediate.dense", x)
            hidden = 0.5 * hidden * (1 + _erf(hidden / math.sqrt(2)))  # exact GELU, as BERT uses
            x = _norm(x + linear("output.dense", hidden), w, p + "output.LayerNorm")
        pooled = x.mean(axis=0)
        return pooled / np.linalg.norm(pooled)


def _norm(x: np.ndarray, w: dict[str, np.ndarray], name: str, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]
