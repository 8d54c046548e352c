"""An independent reference for a cross-encoder's relevance score: a plain numpy forward pass (float64) of the BERT
layers, the first token's hidden state through the classification head (dense, tanh, then one output), read
straight from the GGUF's tensors. It shares no code with llama.cpp."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGUFReader


class RerankerReference:
    def __init__(self, path: Path) -> None:
        reader = GGUFReader(path)
        self.weights = {tensor.name: np.array(tensor.data, dtype=np.float64) for tensor in reader.tensors}
        self.n_head = int(_field(reader, "bert.attention.head_count"))
        self.eps = float(_field(reader, "bert.attention.layer_norm_epsilon"))
        self.n_layer = int(_field(reader, "bert.block_count"))

    def score(self, ids: list[int]) -> float:
        """The relevance score of one pair's token ids, as rank pooling defines it."""
        w, n = self.weights, len(ids)
        x = w["token_embd.weight"][ids] + w["token_types.weight"][0] + w["position_embd.weight"][:n]
        x = self._norm(x, "token_embd_norm")
        width = x.shape[1]
        head = width // self.n_head
        for i in range(self.n_layer):
            p = f"blk.{i}."

            def linear(name: str, h: np.ndarray, p: str = p) -> np.ndarray:
                return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q, k, v = (
                linear(name, x).reshape(n, self.n_head, head).transpose(1, 0, 2)
                for name in ("attn_q", "attn_k", "attn_v")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            attended = (scores @ v).transpose(1, 0, 2).reshape(n, width)
            x = self._norm(x + linear("attn_output", attended), p + "attn_output_norm")
            hidden = _gelu(linear("ffn_up", x))
            x = self._norm(x + linear("ffn_down", hidden), p + "layer_output_norm")
        pooled = np.tanh(w["cls.weight"] @ x[0] + w["cls.bias"])
        return float((w["cls.output.weight"] @ pooled + w["cls.output.bias"])[0])

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * self.weights[name + ".weight"] + self.weights[name + ".bias"]


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU as ggml computes it (the tanh approximation)."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _field(reader: GGUFReader, key: str) -> float:
    field = reader.fields[key]
    return field.parts[field.data[0]][0]
