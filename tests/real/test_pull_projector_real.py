"""`slm-server pull` of a vision model fetches and verifies both its files, the model and its projector
(`mmproj`), from a local server speaking the Hub protocol; `list` counts the model present only with both."""

from __future__ import annotations

import pytest

from tests.fake_hub import FakeHub, HubFile
from tests.gguf_projector import write_vision_pair
from tests.real.test_pull_real import run

pytestmark = pytest.mark.real

REPO = "test-org/tiny-vision-gguf"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub():
    with FakeHub() as fake:
        yield fake


@pytest.fixture
def vision_files(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    return write_vision_pair(folder)


def models_file(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        f"""
models:
  - name: tiny-vision
    source: {{repo_id: {REPO}, filename: model.gguf, revision: {REVISION}}}
    mmproj: {{repo_id: {REPO}, filename: mmproj-model-f16.gguf, revision: {REVISION}}}
"""
    )
    return path


def test_pull_fetches_and_verifies_the_model_and_its_projector(tmp_path, hub, vision_files):
    model, projector = vision_files
    hub.add(REPO, "model.gguf", HubFile(model.read_bytes()))
    hub.add(REPO, "mmproj-model-f16.gguf", HubFile(projector.read_bytes()))
    home, models = tmp_path / "hf", models_file(tmp_path)
    code, out, _ = run(models, hub, home, "list")
    assert "not present: tiny-vision" in out
    code, out, err = run(models, hub, home, "pull", "tiny-vision")
    assert code == 0, err
    snapshot = home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / REVISION
    assert (snapshot / "model.gguf").read_bytes() == model.read_bytes()
    assert (snapshot / "mmproj-model-f16.gguf").read_bytes() == projector.read_bytes()
    code, out, _ = run(models, hub, home, "list")
    assert "not present" not in out


def test_a_corrupted_projector_fails_the_pull_and_leaves_the_model_not_present(tmp_path, hub, vision_files):
    model, projector = vision_files
    hub.add(REPO, "model.gguf", HubFile(model.read_bytes()))
    hub.add(REPO, "mmproj-model-f16.gguf", HubFile(projector.read_bytes(), advertised_sha256="0" * 64))
    home, models = tmp_path / "hf", models_file(tmp_path)
    code, _, err = run(models, hub, home, "pull", "tiny-vision")
    assert code == 1
    assert "does not match" in err
    code, out, _ = run(models, hub, home, "list")
    assert "not present: tiny-vision" in out
