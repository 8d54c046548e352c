"""Tiny GGUF models written by the test suite: random weights, a real byte-level BPE tokenizer, a real template.

They load and generate in llama.cpp like any model, at a few hundred KB, so tests can serve a model other than
the embedded default without downloading anything.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf.quants import quantize

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"))


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which byte-level BPE vocabularies use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def bpe_vocab(
    *, duplicate_token: bool = False, specials: tuple[str, ...] = SPECIAL_TOKENS
) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges of a small byte-level BPE vocabulary, special tokens first.

    `duplicate_token` repeats a token string, which makes llama.cpp abort the whole process while loading."""
    tokens = list(specials)
    types = [gguf.TokenType.CONTROL] * len(specials)
    tokens += [byte_to_unicode()[b] for b in range(256)]
    types += [gguf.TokenType.NORMAL] * 256
    for left, right in MERGES:
        tokens.append(left + right)
        types.append(gguf.TokenType.NORMAL)
    if duplicate_token:
        tokens[-1] = tokens[-2]
    else:
        assert len(set(tokens)) == len(tokens)
    return tokens, [int(t) for t in types], [f"{a} {b}" for a, b in MERGES]


def write_tiny_llama(
    path: Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    context_length: int = 2048,
    seed: int = 0,
    chat_template: str = CHATML_TEMPLATE,
    quant: str = "F32",
    duplicate_token: bool = False,
    specials: tuple[str, ...] = SPECIAL_TOKENS,
    bos: str = "<|endoftext|>",
    eos: str = "<|im_end|>",
    user_defined: tuple[str, ...] = (),
    add_bos: bool = False,
) -> Path:
    """A llama-architecture model with random weights and a ChatML template; <|im_end|> ends a turn (`add_bos`:
    the tokenizer starts every prompt with `bos`, as Llama 3's does).

    `specials` (control tokens), `bos`, `eos` and `user_defined` (added tokens written out as text) give it
    another family's vocabulary markers, for that family's template (their own tokens, as in the real vocabulary).

    `quant` is the type of the matrices (layers and output): "F32", "Q4_0" (which llama.cpp repacks into its
    extra CPU buffers) or "Q4_1" (which, like SmolLM2, llama.cpp multiplies row by row, so a sequence's logits
    are bitwise the same whatever else shares its batch; F32 matrices take different kernels for one row and
    for several, which can flip a sampled token at a near-tie)."""
    rng = np.random.default_rng(seed)
    tokens, types, merges = bpe_vocab(duplicate_token=duplicate_token, specials=specials + user_defined)
    for token in user_defined:
        types[tokens.index(token)] = int(gguf.TokenType.USER_DEFINED)
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if quant == "F32" else gguf.LlamaFileType[f"MOSTLY_{quant}"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(bos))
    writer.add_eos_token_id(tokens.index(eos))
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(chat_template)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def add_matrix(name: str, rows: int, cols: int) -> None:
        data = weight(rows, cols)
        if quant == "F32":
            writer.add_tensor(name, data)
        else:
            qtype = gguf.GGMLQuantizationType[quant]
            writer.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    add_matrix("output.weight", n_vocab, n_embd)
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        add_matrix(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        add_matrix(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
        add_matrix(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
        add_matrix(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        add_matrix(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        add_matrix(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        add_matrix(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


WORDPIECE_WORDS = ("the", "cat", "dog", "sat", "on", "mat", "car", "red", "blue", "runs", "fast")


def write_tiny_bert(
    path: Path,
    *,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 2,
    n_ff: int = 64,
    context_length: int = 128,
    seed: int = 0,
) -> Path:
    """A BERT embedding model (mean pooling) with random weights and a small WordPiece vocabulary."""
    rng = np.random.default_rng(seed)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    # llama.cpp's WordPiece vocabularies mark word-initial pieces with "▁" and leave continuations bare
    # (its converter turns BERT's "cat" / "##s" into "▁cat" / "s").
    words = [*letters, *WORDPIECE_WORDS, ".", ",", "?", "!"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"▁{w}" for w in words), *letters]
    types = [gguf.TokenType.CONTROL] * 5 + [gguf.TokenType.NORMAL] * (len(tokens) - 5)
    assert len(set(tokens)) == len(tokens)
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name("tiny-test-bert")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_type_count(2)
    writer.add_bos_token_id(tokens.index("[CLS]"))
    writer.add_sep_token_id(tokens.index("[SEP]"))
    writer.add_eos_token_id(tokens.index("[SEP]"))
    writer.add_unk_token_id(tokens.index("[UNK]"))
    writer.add_pad_token_id(tokens.index("[PAD]"))
    writer.add_mask_token_id(tokens.index("[MASK]"))

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), n_embd))
    writer.add_tensor("token_types.weight", weight(2, n_embd))
    writer.add_tensor("position_embd.weight", weight(context_length, n_embd))
    writer.add_tensor("token_embd_norm.weight", ones(n_embd))
    writer.add_tensor("token_embd_norm.bias", zeros(n_embd))
    for i in range(n_layer):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(n_embd, n_embd))
            writer.add_tensor(f"blk.{i}.{name}.bias", zeros(n_embd))
        writer.add_tensor(f"blk.{i}.attn_output_norm.weight", ones(n_embd))
        writer.add_tensor(f"blk.{i}.attn_output_norm.bias", zeros(n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.bias", zeros(n_ff))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
        writer.add_tensor(f"blk.{i}.ffn_down.bias", zeros(n_embd))
        writer.add_tensor(f"blk.{i}.layer_output_norm.weight", ones(n_embd))
        writer.add_tensor(f"blk.{i}.layer_output_norm.bias", zeros(n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_reranker(
    path: Path,
    *,
    vocab: str = "xlm-roberta",
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 2,
    n_ff: int = 64,
    context_length: int = 128,
    seed: int = 0,
    rerank_template: str | None = None,
) -> Path:
    """A cross-encoder reranker as llama.cpp's converter writes one: BERT layers, rank pooling and the
    classification head on the first token (`cls`: dense + tanh, `cls.output`: one score), random weights.

    `vocab` "xlm-roberta" is bge-reranker-v2-m3's kind (a SentencePiece unigram vocabulary; pairs are
    <s> q </s> </s> d </s>); "wordpiece" is a BERT cross-encoder's (ms-marco-MiniLM; [CLS] q [SEP] d [SEP]);
    "bpe" a byte-level BPE one's, with ChatML's control tokens (Qwen3-Reranker's kind, which has a template).
    `rerank_template` is written as the file's `rerank` template (as Qwen3-Reranker GGUFs carry one)."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name(f"tiny-test-reranker-{vocab}")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(1e-5)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    n_tokens = _reranker_vocab(writer, vocab)
    if rerank_template is not None:
        writer.add_chat_template([{"name": "rerank", "template": rerank_template}])

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weight(n_tokens, n_embd))
    writer.add_tensor("token_types.weight", weight(1 if vocab == "xlm-roberta" else 2, n_embd))
    writer.add_tensor("position_embd.weight", weight(context_length, n_embd))
    writer.add_tensor("token_embd_norm.weight", ones(n_embd))
    writer.add_tensor("token_embd_norm.bias", weight(n_embd))
    for i in range(n_layer):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(n_embd, n_embd))
            writer.add_tensor(f"blk.{i}.{name}.bias", weight(n_embd))
        writer.add_tensor(f"blk.{i}.attn_output_norm.weight", ones(n_embd))
        writer.add_tensor(f"blk.{i}.attn_output_norm.bias", weight(n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.bias", weight(n_ff))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
        writer.add_tensor(f"blk.{i}.ffn_down.bias", weight(n_embd))
        writer.add_tensor(f"blk.{i}.layer_output_norm.weight", ones(n_embd))
        writer.add_tensor(f"blk.{i}.layer_output_norm.bias", weight(n_embd))
    writer.add_tensor("cls.weight", weight(n_embd, n_embd))  # RoBERTa's classifier.dense
    writer.add_tensor("cls.bias", weight(n_embd))
    writer.add_tensor("cls.output.weight", weight(1, n_embd) * 5)  # classifier.out_proj: one relevance logit
    writer.add_tensor("cls.output.bias", weight(1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _reranker_vocab(writer: gguf.GGUFWriter, vocab: str) -> int:
    """The tokenizer of a tiny reranker, with the special-token flags llama.cpp's converter sets; its size."""
    words = [*WORDPIECE_WORDS, "query", "document", "is", "a", "about", "cats", "dogs", "cars"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    if vocab == "wordpiece":
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tokens += [f"▁{w}" for w in dict.fromkeys([*letters, *words, ".", ",", "?", "!"])] + letters
        types = [gguf.TokenType.CONTROL] * 5 + [gguf.TokenType.NORMAL] * (len(tokens) - 5)
        writer.add_tokenizer_model("bert")
        writer.add_token_type_count(2)
        writer.add_bos_token_id(tokens.index("[CLS]"))
        writer.add_sep_token_id(tokens.index("[SEP]"))
        writer.add_eos_token_id(tokens.index("[SEP]"))
        writer.add_unk_token_id(tokens.index("[UNK]"))
        writer.add_pad_token_id(tokens.index("[PAD]"))
        writer.add_mask_token_id(tokens.index("[MASK]"))
        writer.add_add_bos_token(True)  # [CLS] q [SEP] d [SEP]: the second [SEP] is the "EOS"
        writer.add_add_eos_token(True)
        writer.add_add_sep_token(False)
    elif vocab == "xlm-roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        pieces = list(dict.fromkeys([*(f"▁{w}" for w in words), "▁", *letters, ".", ",", "?", "!", "{", "}"]))
        tokens = specials + pieces
        types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.UNKNOWN] + [gguf.TokenType.NORMAL] * len(pieces)
        # unigram log-probabilities: longer pieces are likelier than spelling them out
        scores = [0.0] * len(specials) + [-10.0 / len(piece) for piece in pieces]
        writer.add_tokenizer_model("t5")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(True)
        writer.add_token_type_count(1)
        writer.add_bos_token_id(tokens.index("<s>"))
        writer.add_eos_token_id(tokens.index("</s>"))
        writer.add_sep_token_id(tokens.index("</s>"))
        writer.add_unk_token_id(tokens.index("<unk>"))
        writer.add_pad_token_id(tokens.index("<pad>"))
        writer.add_add_bos_token(True)  # <s> q </s> </s> d </s>, as bge-reranker-v2-m3's GGUF says
        writer.add_add_eos_token(True)
        writer.add_add_sep_token(True)
    elif vocab == "bpe":  # byte-level BPE, as Qwen3-Reranker's (whose pairs come from its `rerank` template)
        tokens, types, merges = bpe_vocab()
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_merges(merges)
        writer.add_token_type_count(2)
        writer.add_bos_token_id(tokens.index("<|endoftext|>"))
        writer.add_eos_token_id(tokens.index("<|im_end|>"))
        writer.add_add_bos_token(False)
    else:
        raise ValueError(f"unknown vocabulary kind {vocab!r}")
    assert len(set(tokens)) == len(tokens)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    return len(tokens)
