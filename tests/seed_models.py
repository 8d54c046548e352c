"""Tiny random-weight GGUFs of the seed models' architectures, each with its family's vocabulary specials and
chat template: Llama 3 (llama, byte-level BPE), Phi-3 (phi3: fused qkv and gate_up), Mixtral (llama with 4
experts, 2 used), DeepSeek-Coder-V2 (deepseek2: MLA attention, a dense leading block, shared experts), and the
reasoning models Qwen3 (qwen3: per-head query and key norms) and DeepSeek-R1-Distill-Qwen (qwen2: q, k, v biases),
whose <think> and </think> are added tokens written out as text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np

from tests.gguf_factory import bpe_vocab

# DeepSeek's specials are spelled with fullwidth bars and "▁", as in its vocabulary.
DEEPSEEK_BOS = "<｜begin▁of▁sentence｜>"  # noqa: RUF001
DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"  # noqa: RUF001
N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, CONTEXT = 64, 4, 2, 128, 2, 1024
HEAD_DIM = N_EMBD // N_HEAD
TEMPLATES = Path(__file__).parent / "seed_templates"

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\\n' + message['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)
DEEPSEEK_CODER_V2_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


# Reasoning models' templates, exactly as their GGUFs carry them, are kept beside this file (too wide for Python).
# Qwen3's, as published with the Qwen3 models (their tokenizer_config.json, which the GGUF conversion copies into
# `tokenizer.chat_template`; Qwen/Qwen3-1.7B-GGUF, the seed entry `qwen3-1.7b`, ships it), text as vendored by
# llama.cpp in models/templates/Qwen-Qwen3-0.6B.jinja (one template for every Qwen3 size). The model opens its own
# <think> block; `enable_thinking` false closes an empty one in the prompt.
QWEN3_TEMPLATE = (TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8")
# DeepSeek-R1-Distill-Qwen's, as DeepSeek publishes it (tokenizer_config.json, carried into the GGUFs), text as
# vendored by llama.cpp (ggml-org/llama.cpp@20bdc4f, models/templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja;
# the 1.5B's is the same). The generation prompt opens the <think> block; there is no switch to turn thinking off.
DEEPSEEK_R1_DISTILL_TEMPLATE = (TEMPLATES / "deepseek-r1-distill-qwen.jinja").read_text(encoding="utf-8")
# The form DeepSeek first uploaded (January 2025): derived from the one above by removing the `<think>\n` its
# generation prompt ends with, so the template mentions only </think>; the model begins thinking without writing
# <think> (the block opens implicitly).
DEEPSEEK_R1_DISTILL_EARLY_TEMPLATE = (TEMPLATES / "deepseek-r1-distill-qwen-early.jinja").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Family:
    arch: str
    specials: tuple[str, ...]
    bos: str
    eos: str
    template: str | None  # None: the GGUF ships no template (models.yaml supplies one)
    tokenizer_pre: str
    tensors: Callable[[Callable[..., None], np.random.Generator], None]
    extra_kv: Callable[[gguf.GGUFWriter], None] = lambda writer: None
    user_defined: tuple[str, ...] = ()  # added tokens that are not control tokens (<think>: its text is output)


def _weight(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.2).astype(np.float32)


def _norm(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float32)


def _llama_attention(add, rng, i: int) -> None:
    add(f"blk.{i}.attn_norm.weight", _norm(N_EMBD))
    add(f"blk.{i}.attn_q.weight", _weight(rng, N_EMBD, N_EMBD))
    add(f"blk.{i}.attn_k.weight", _weight(rng, N_HEAD_KV * HEAD_DIM, N_EMBD))
    add(f"blk.{i}.attn_v.weight", _weight(rng, N_HEAD_KV * HEAD_DIM, N_EMBD))
    add(f"blk.{i}.attn_output.weight", _weight(rng, N_EMBD, N_EMBD))
    add(f"blk.{i}.ffn_norm.weight", _norm(N_EMBD))


def _llama3_tensors(add, rng) -> None:
    for i in range(N_LAYER):
        _llama_attention(add, rng, i)
        add(f"blk.{i}.ffn_gate.weight", _weight(rng, N_FF, N_EMBD))
        add(f"blk.{i}.ffn_up.weight", _weight(rng, N_FF, N_EMBD))
        add(f"blk.{i}.ffn_down.weight", _weight(rng, N_EMBD, N_FF))


N_EXPERT, N_EXPERT_USED = 4, 2


def _mixtral_tensors(add, rng) -> None:
    for i in range(N_LAYER):
        _llama_attention(add, rng, i)
        add(f"blk.{i}.ffn_gate_inp.weight", _weight(rng, N_EXPERT, N_EMBD))  # stays F32 (llama.cpp requires it)
        add(f"blk.{i}.ffn_gate_exps.weight", _weight(rng, N_EXPERT, N_FF, N_EMBD))
        add(f"blk.{i}.ffn_up_exps.weight", _weight(rng, N_EXPERT, N_FF, N_EMBD))
        add(f"blk.{i}.ffn_down_exps.weight", _weight(rng, N_EXPERT, N_EMBD, N_FF))


def _mixtral_kv(writer: gguf.GGUFWriter) -> None:
    writer.add_expert_count(N_EXPERT)
    writer.add_expert_used_count(N_EXPERT_USED)


def _phi3_tensors(add, rng) -> None:
    gqa = N_HEAD_KV * HEAD_DIM
    for i in range(N_LAYER):
        add(f"blk.{i}.attn_norm.weight", _norm(N_EMBD))
        add(f"blk.{i}.attn_qkv.weight", _weight(rng, N_EMBD + 2 * gqa, N_EMBD))  # q, k and v fused
        add(f"blk.{i}.attn_output.weight", _weight(rng, N_EMBD, N_EMBD))
        add(f"blk.{i}.ffn_norm.weight", _norm(N_EMBD))
        add(f"blk.{i}.ffn_up.weight", _weight(rng, 2 * N_FF, N_EMBD))  # gate and up fused
        add(f"blk.{i}.ffn_down.weight", _weight(rng, N_EMBD, N_FF))


# DeepSeek-V2 attention (MLA without the q low-rank path, as in the Lite model) and its mixture of experts.
QK_NOPE, QK_ROPE, V_HEAD, KV_LORA, FF_EXP, N_SHARED = 16, 8, 16, 32, 32, 1


def _deepseek2_tensors(add, rng) -> None:
    for i in range(N_LAYER):
        add(f"blk.{i}.attn_norm.weight", _norm(N_EMBD))
        add(f"blk.{i}.attn_q.weight", _weight(rng, N_HEAD * (QK_NOPE + QK_ROPE), N_EMBD))
        add(f"blk.{i}.attn_kv_a_mqa.weight", _weight(rng, KV_LORA + QK_ROPE, N_EMBD))
        add(f"blk.{i}.attn_kv_a_norm.weight", _norm(KV_LORA))
        add(f"blk.{i}.attn_kv_b.weight", _weight(rng, N_HEAD * (QK_NOPE + V_HEAD), KV_LORA))
        add(f"blk.{i}.attn_output.weight", _weight(rng, N_EMBD, N_HEAD * V_HEAD))
        add(f"blk.{i}.ffn_norm.weight", _norm(N_EMBD))
        if i == 0:  # the dense leading block
            add(f"blk.{i}.ffn_gate.weight", _weight(rng, N_FF, N_EMBD))
            add(f"blk.{i}.ffn_up.weight", _weight(rng, N_FF, N_EMBD))
            add(f"blk.{i}.ffn_down.weight", _weight(rng, N_EMBD, N_FF))
            continue
        add(f"blk.{i}.ffn_gate_inp.weight", _weight(rng, N_EXPERT, N_EMBD))
        add(f"blk.{i}.ffn_gate_exps.weight", _weight(rng, N_EXPERT, FF_EXP, N_EMBD))
        add(f"blk.{i}.ffn_up_exps.weight", _weight(rng, N_EXPERT, FF_EXP, N_EMBD))
        add(f"blk.{i}.ffn_down_exps.weight", _weight(rng, N_EXPERT, N_EMBD, FF_EXP))
        add(f"blk.{i}.ffn_gate_shexp.weight", _weight(rng, FF_EXP * N_SHARED, N_EMBD))
        add(f"blk.{i}.ffn_up_shexp.weight", _weight(rng, FF_EXP * N_SHARED, N_EMBD))
        add(f"blk.{i}.ffn_down_shexp.weight", _weight(rng, N_EMBD, FF_EXP * N_SHARED))


def _deepseek2_kv(writer: gguf.GGUFWriter) -> None:
    writer.add_leading_dense_block_count(1)
    writer.add_q_lora_rank(0)  # written explicitly: a 2-layer deepseek2 is not taken for the Lite model
    writer.add_kv_lora_rank(KV_LORA)
    writer.add_key_length(QK_NOPE + QK_ROPE)
    writer.add_value_length(V_HEAD)
    writer.add_expert_count(N_EXPERT)
    writer.add_expert_used_count(N_EXPERT_USED)
    writer.add_expert_shared_count(N_SHARED)
    writer.add_expert_feed_forward_length(FF_EXP)
    writer.add_expert_weights_scale(1.0)


def _qwen3_tensors(add, rng) -> None:
    for i in range(N_LAYER):
        _llama_attention(add, rng, i)
        add(f"blk.{i}.attn_q_norm.weight", _norm(HEAD_DIM))  # Qwen3 normalises each head's queries and keys
        add(f"blk.{i}.attn_k_norm.weight", _norm(HEAD_DIM))
        add(f"blk.{i}.ffn_gate.weight", _weight(rng, N_FF, N_EMBD))
        add(f"blk.{i}.ffn_up.weight", _weight(rng, N_FF, N_EMBD))
        add(f"blk.{i}.ffn_down.weight", _weight(rng, N_EMBD, N_FF))


def _qwen2_tensors(add, rng) -> None:
    _llama3_tensors(add, rng)
    for i in range(N_LAYER):  # Qwen2 (DeepSeek-R1-Distill-Qwen's architecture) has q, k and v biases
        add(f"blk.{i}.attn_q.bias", np.zeros(N_EMBD, dtype=np.float32))
        add(f"blk.{i}.attn_k.bias", np.zeros(N_HEAD_KV * HEAD_DIM, dtype=np.float32))
        add(f"blk.{i}.attn_v.bias", np.zeros(N_HEAD_KV * HEAD_DIM, dtype=np.float32))


QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_TOKENS = ("<think>", "</think>")  # in Qwen3's and DeepSeek-R1-Distill's vocabularies, as added tokens
R1_SPECIALS = (DEEPSEEK_BOS, DEEPSEEK_EOS, "<｜User｜>", "<｜Assistant｜>")  # noqa: RUF001

FAMILIES = {
    "llama3": Family(
        "llama",
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        template=LLAMA3_TEMPLATE,
        tokenizer_pre="llama-bpe",
        tensors=_llama3_tensors,
    ),
    "phi3": Family(
        "phi3",
        # <unk>, <s>, </s> as in Phi-3's SentencePiece vocabulary: llama.cpp looks them up for "phi3" models
        ("<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"),
        bos="<s>",
        eos="<|end|>",
        template=PHI3_TEMPLATE,
        tokenizer_pre="default",
        tensors=_phi3_tensors,
    ),
    "mixtral": Family(
        "llama",
        ("<s>", "</s>", "[INST]", "[/INST]"),
        bos="<s>",
        eos="</s>",
        template=None,  # like TheBloke's Mixtral GGUF: the template comes from models.yaml
        tokenizer_pre="default",
        tensors=_mixtral_tensors,
        extra_kv=_mixtral_kv,
    ),
    "deepseek2": Family(
        "deepseek2",
        (DEEPSEEK_BOS, DEEPSEEK_EOS),
        bos=DEEPSEEK_BOS,
        eos=DEEPSEEK_EOS,
        template=DEEPSEEK_CODER_V2_TEMPLATE,
        tokenizer_pre="default",
        tensors=_deepseek2_tensors,
        extra_kv=_deepseek2_kv,
    ),
    "qwen3": Family(
        "qwen3",
        QWEN_SPECIALS,
        bos="<|endoftext|>",
        eos="<|im_end|>",
        template=QWEN3_TEMPLATE,
        tokenizer_pre="qwen2",
        tensors=_qwen3_tensors,
        user_defined=(*THINK_TOKENS, "<tool_call>", "</tool_call>"),
    ),
    "r1distill": Family(
        "qwen2",
        R1_SPECIALS,
        bos=DEEPSEEK_BOS,
        eos=DEEPSEEK_EOS,
        template=DEEPSEEK_R1_DISTILL_TEMPLATE,
        tokenizer_pre="deepseek-r1-qwen",
        tensors=_qwen2_tensors,
        user_defined=THINK_TOKENS,
    ),
}
FAMILIES["r1distill-early"] = replace(FAMILIES["r1distill"], template=DEEPSEEK_R1_DISTILL_EARLY_TEMPLATE)


def write_seed_model(path: Path, family_name: str, seed: int = 0) -> Path:
    family = FAMILIES[family_name]
    rng = np.random.default_rng(seed)
    tokens, types, merges = bpe_vocab(specials=family.specials + family.user_defined)
    for token in family.user_defined:
        types[tokens.index(token)] = int(gguf.TokenType.USER_DEFINED)
    writer = gguf.GGUFWriter(str(path), family.arch)
    writer.add_name(f"tiny-{family_name}")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD if family.arch == "deepseek2" else N_HEAD_KV)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(QK_ROPE if family.arch == "deepseek2" else HEAD_DIM)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    family.extra_kv(writer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(family.tokenizer_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(family.bos))
    writer.add_eos_token_id(tokens.index(family.eos))
    writer.add_add_bos_token(False)
    if family.template is not None:
        writer.add_chat_template(family.template)
    writer.add_tensor("token_embd.weight", _weight(rng, len(tokens), N_EMBD))
    writer.add_tensor("output_norm.weight", _norm(N_EMBD))
    writer.add_tensor("output.weight", _weight(rng, len(tokens), N_EMBD))
    family.tensors(writer.add_tensor, rng)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
