"""A model entry's projector (`mmproj`): its sources, where its file is, and the `vision` capability on
/v1/models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import ConfigError, HubSource, ModelSpec, PathSource, Settings, load_models_file
from server.engine.memory import estimate_memory
from server.engine.template import ChatTemplate
from server.models.hub import file_status
from server.models.registry import ModelRegistry
from server.models.sources import files_present, resolved
from tests.conftest import FakeLoader
from tests.fakes import fake_spec
from tests.gguf_projector import write_vision_pair


def write_models(tmp_path, entry: str):
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n{entry}")
    return path


def test_a_projector_path_is_read_beside_the_models_file(tmp_path):
    models = write_models(tmp_path, "  - name: v\n    source: {path: m.gguf}\n    mmproj: {path: sub/mmproj.gguf}\n")
    [spec] = load_models_file(models).models
    assert spec.mmproj == PathSource(path=tmp_path / "sub" / "mmproj.gguf")
    assert spec.projector_path() == tmp_path / "sub" / "mmproj.gguf"


def test_a_projector_can_come_from_the_hub_pinned(tmp_path):
    models = write_models(
        tmp_path,
        "  - name: v\n    source: {path: m.gguf}\n"
        "    mmproj: {repo_id: org/repo-gguf, filename: mmproj-model-f16.gguf, revision: " + "a" * 40 + "}\n",
    )
    [spec] = load_models_file(models).models
    assert spec.mmproj == HubSource(repo_id="org/repo-gguf", filename="mmproj-model-f16.gguf", revision="a" * 40)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("    embedding: true\n    mmproj: {path: p.gguf}\n", "applies to generative models only"),
        ("    mmproj: {safetensors: {dir: x}}\n", "mmproj"),
        ("    mmproj: {path: p.gguf, extra: 1}\n", "mmproj"),
        ("    mmproj: 7\n", "mmproj"),
    ],
)
def test_a_wrong_projector_entry_is_refused_naming_it(tmp_path, entry, says):
    models = write_models(tmp_path, "  - name: v\n    source: {path: m.gguf}\n" + entry)
    with pytest.raises(ConfigError, match=says):
        load_models_file(models)


def test_a_model_with_its_projector_missing_is_not_present(tmp_path):
    model, projector = write_vision_pair(tmp_path)
    spec = ModelSpec(name="v", source=PathSource(path=model), mmproj=PathSource(path=projector))
    assert files_present(spec)
    assert file_status(spec).size == model.stat().st_size + projector.stat().st_size
    assert resolved(spec).mmproj == PathSource(path=projector)
    projector.unlink()
    assert not files_present(spec)
    status = file_status(spec)
    assert not status.present and "projector" in (status.problem or "")


def test_the_cards_say_which_models_take_images(tmp_path):
    model, projector = write_vision_pair(tmp_path)
    vision = ModelSpec(name="seer", source=PathSource(path=model), mmproj=PathSource(path=projector))
    registry = ModelRegistry([vision, fake_spec("plain")], FakeLoader())
    app = create_app(Settings(models_file=tmp_path / "unused.yaml"), registry=registry)
    with TestClient(app) as client:
        cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
        assert cards["seer"]["capabilities"] == ["vision"]
        assert cards["plain"]["capabilities"] == []
        assert client.get("/v1/models/seer").json()["capabilities"] == ["vision"]


def test_the_memory_estimate_counts_the_projector(tmp_path):
    model, projector = write_vision_pair(tmp_path)
    plain = ModelSpec(name="v", source=PathSource(path=model))
    vision = ModelSpec(name="v", source=PathSource(path=model), mmproj=PathSource(path=projector))
    assert estimate_memory(vision, model).weights == estimate_memory(plain, model).weights + projector.stat().st_size
    pulled_later = ModelSpec(
        name="v", source=PathSource(path=model), mmproj=HubSource(repo_id="o/r", filename="p.gguf", revision="a" * 40)
    )
    assert estimate_memory(pulled_later, model).weights == model.stat().st_size


def test_the_minicpm_llama3_v_2_5_seed_entry(tmp_path):
    """Both files from openbmb's GGUF repository at one revision, its projector the `vision` capability, and
    Llama 3's prompt format (the projector's metadata: tests/engine/test_projector_check.py)."""
    models = {spec.name: spec for spec in load_models_file(Path(__file__).parents[1] / "models.yaml").models}
    spec = models["minicpm-llama3-v-2.5"]
    assert isinstance(spec.source, HubSource) and isinstance(spec.mmproj, HubSource)
    assert spec.source.repo_id == spec.mmproj.repo_id == "openbmb/MiniCPM-Llama3-V-2_5-gguf"
    assert (spec.source.filename, spec.mmproj.filename) == ("ggml-model-Q4_K_M.gguf", "mmproj-model-f16.gguf")
    assert spec.source.revision == spec.mmproj.revision  # the pair is pinned together
    template = ChatTemplate(spec.chat_template, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    prompt, _ = template.render_segments(
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is in the picture?"}]
    )
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is in the picture?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


@pytest.mark.xfail(
    strict=True,
    reason="issue 13: openbmb's GGUF repository has no commit id reachable from this machine (no Hugging Face "
    "access); the entry follows `main` until one is pinned",
)
def test_the_minicpm_llama3_v_2_5_seed_entry_is_pinned_to_a_commit():
    models = {spec.name: spec for spec in load_models_file(Path(__file__).parents[1] / "models.yaml").models}
    spec = models["minicpm-llama3-v-2.5"]
    assert re.fullmatch(r"[0-9a-f]{40}", spec.source.revision) and spec.mmproj.revision == spec.source.revision
