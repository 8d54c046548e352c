"""Tiny random-weight GGUFs of the seed models' architectures, each with its family's vocabulary specials and
chat template: Llama 3 (llama, byte-level BPE), Phi-3 (phi3: fused qkv and gate_up), Mixtral (llama with 4
experts, 2 used), DeepSeek-Coder-V2 (deepseek2: MLA attention, a dense leading block, shared experts)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from tests.gguf_factory import bpe_vocab

# DeepSeek's specials are spelled with fullwidth bars and "▁", as in its vocabulary.
DEEPSEEK_BOS = "<｜begin▁of▁sentence｜>"  # noqa: RUF001
DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"  # noqa: RUF001
N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, CONTEXT = 64, 4, 2, 128, 2, 1024
HEAD_DIM = N_EMBD // N_HEAD

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
}


def write_seed_model(path: Path, family_name: str, seed: int = 0) -> Path:
    family = FAMILIES[family_name]
    rng = np.random.default_rng(seed)
    tokens, types, merges = bpe_vocab(specials=family.specials)
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
