"""The pre-load check of projector (mmproj) files: what it accepts, and each damage it refuses with a reason,
before llama.cpp's clip loader (which aborts the process on several of them) sees the file."""

from __future__ import annotations

import pytest

from server.engine.gguf_header import GGUFProblem
from server.engine.projector_check import ProjectorProblem, check_projector
from tests.gguf_factory import write_tiny_llama
from tests.gguf_projector import write_tiny_minicpmv_projector, write_tiny_mlp_projector


def test_a_minicpmv_projector_is_described(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf")
    info = check_projector(path, n_embd_text=128)
    assert (info.projector_type, info.n_embd_out, info.minicpmv_version, info.query_num) == ("resampler", 128, 2, 8)
    assert (info.image_size, info.patch_size) == (28, 14)


def test_minicpm_llama3_v_2_5s_metadata_without_a_query_count_means_96_queries(tmp_path):
    """The 2024 conversion of MiniCPM-Llama3-V 2.5 writes version 2 and no clip.minicpmv_query_num."""
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", query_num=None)
    info = check_projector(path)
    assert (info.minicpmv_version, info.query_num) == (2, 96)


def test_an_mlp_projector_is_described(tmp_path):
    info = check_projector(write_tiny_mlp_projector(tmp_path / "p.gguf", n_embd_text=64), n_embd_text=64)
    assert (info.projector_type, info.n_embd_out) == ("mlp", 64)


def refused(path, **kwargs) -> str:
    with pytest.raises(ProjectorProblem) as caught:
        check_projector(path, **kwargs)
    return str(caught.value)


def test_a_truncated_projector_is_refused(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GGUFProblem, match="truncated"):
        check_projector(path)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "p.gguf"
    path.write_bytes(b"PK\x03\x04 not a projector" * 10)
    with pytest.raises(GGUFProblem, match="not a GGUF file"):
        check_projector(path)


def test_a_language_model_given_as_projector_is_refused(tmp_path):
    assert "not a projector file" in refused(write_tiny_llama(tmp_path / "m.gguf"))


def test_a_projector_type_we_do_not_load_is_refused(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", projector_type="qwen2vl_merger")
    assert "projector type 'qwen2vl_merger' is not one this server loads" in refused(path)


def test_a_file_claiming_another_type_than_its_tensors_is_refused(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", projector_type="mlp")
    assert "no tensor mm.0.weight" in refused(path)


@pytest.mark.parametrize("missing", ["resampler.attn.q.weight", "v.blk.0.ffn_up.weight", "resampler.pos_embed_k"])
def test_a_missing_tensor_is_named(tmp_path, missing):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", omit=(missing,))
    assert f"no tensor {missing}" in refused(path)


def test_a_key_of_the_wrong_type_is_refused(tmp_path):
    """gguf_get_val_u32 asserts the type: llama.cpp would abort the process."""
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", keys={"clip.vision.patch_size": ("INT32", 14)})
    assert "clip.vision.patch_size is a int32, not a uint32" in refused(path)


def test_a_zero_patch_size_is_refused(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", keys={"clip.vision.patch_size": ("UINT32", 0)})
    assert "clip.vision.patch_size is 0" in refused(path)


def test_an_unknown_minicpmv_version_is_refused(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", minicpmv_version=1, query_num=None)
    assert "MiniCPM-V version 1" in refused(path)


def test_a_projector_without_a_vision_encoder_is_refused(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", keys={"clip.has_vision_encoder": ("BOOL", False)})
    assert "no vision encoder" in refused(path)


def test_an_audio_projector_is_refused(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", keys={"clip.has_audio_encoder": ("BOOL", True)})
    assert "audio encoder" in refused(path)


@pytest.mark.parametrize(
    ("name", "shape", "says"),
    [
        ("resampler.kv.weight", (128, 16), "resampler.kv.weight is [16, 128], not [32, 128]"),
        ("resampler.attn.k.bias", (64,), "resampler.attn.k.bias is [64], not [128]"),
        ("resampler.query", (8, 100), "it must be [width, 8]"),
        ("v.blk.0.attn_q.weight", (32, 16), "v.blk.0.attn_q.weight is [16, 32], not [32, 32]"),
        ("v.position_embd.weight", (100, 32), "v.position_embd.weight is [32, 100], not [32, 4900]"),
        ("v.blk.0.ffn_up.weight", (32, 48), "feed-forward tensors of layer 0 do not fit"),
        ("v.blk.0.ln1.bias", (16,), "v.blk.0.ln1.bias is [16], not [32]"),
    ],
)
def test_tensors_whose_shapes_do_not_fit_are_refused(tmp_path, name, shape, says):
    """ggml asserts matching shapes while building the encoder's graph: llama.cpp would abort the process."""
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", shapes={name: shape})
    assert says in refused(path)


def test_a_projector_of_another_width_than_the_model_is_refused(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf")
    assert "width 128 but the model's width is 4096" in refused(path, n_embd_text=4096)


def test_a_vector_in_another_type_than_f32_is_refused(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", f16=("resampler.ln_q.bias",))
    assert "tensor resampler.ln_q.bias has a ggml type (1)" in refused(path)


def test_matrices_in_f16_pass(tmp_path):
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", f16=("resampler.kv.weight", "v.blk.0.attn_q.weight"))
    assert check_projector(path).projector_type == "resampler"


def test_the_resampler_query_in_f16_is_refused(tmp_path):
    """An f16 query reaches a layer norm no CPU kernel runs in f16: llama.cpp aborts while encoding."""
    path = write_tiny_minicpmv_projector(tmp_path / "p.gguf", f16=("resampler.query",))
    assert "tensor resampler.query has a ggml type (1)" in refused(path)
