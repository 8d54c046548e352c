"""The prompt cache's settings: SLM_PROMPT_CACHE_DIR / SLM_PROMPT_CACHE_BYTES and a model's `prompt_cache`."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, Settings, load_models_file
from server.engine.prompt_store import MIN_SAVED_TOKENS, PromptCacheConfig
from server.models.loaders import prompt_cache_of

MODELS = """
models:
  - name: local
    source: {path: weights/tiny.gguf}
"""


def test_the_prompt_cache_defaults_to_2_gib_under_the_data_dir(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    assert (settings.prompt_cache_dir, settings.prompt_cache_bytes) == (None, 2 * 1024**3)
    assert prompt_cache_of(settings) == PromptCacheConfig(tmp_path / "data" / "prompt-cache", 2 * 1024**3)
    assert prompt_cache_of(settings).min_tokens == MIN_SAVED_TOKENS  # type: ignore[union-attr]
    assert prompt_cache_of(settings).max_age_s == 7 * 24 * 3600  # type: ignore[union-attr]


def test_the_prompt_cache_settings_come_from_the_environment(tmp_path):
    env = {"SLM_PROMPT_CACHE_DIR": str(tmp_path / "kv"), "SLM_PROMPT_CACHE_BYTES": "1048576"}
    settings = Settings.from_env(env)
    assert prompt_cache_of(settings) == PromptCacheConfig(tmp_path / "kv", 1024 * 1024)
    assert prompt_cache_of(Settings.from_env({"SLM_PROMPT_CACHE_BYTES": "0"})) is None  # 0: off
    aged = prompt_cache_of(Settings.from_env({**env, "SLM_PROMPT_CACHE_MAX_AGE_S": "3600"}))
    assert aged == PromptCacheConfig(tmp_path / "kv", 1024 * 1024, max_age_s=3600)


@pytest.mark.parametrize("value", ["-1", "a week", "7d", str(11 * 365 * 24 * 3600)])
def test_a_wrong_prompt_cache_age_is_a_config_error_naming_it(value):
    with pytest.raises(ConfigError, match="prompt_cache_max_age_s"):
        Settings.from_env({"SLM_PROMPT_CACHE_MAX_AGE_S": value})


@pytest.mark.parametrize("value", ["-1", "lots", "2GiB", "1.5", str(1024**4 + 1)])
def test_a_wrong_prompt_cache_size_is_a_config_error_naming_it(value):
    with pytest.raises(ConfigError, match="prompt_cache_bytes"):
        Settings.from_env({"SLM_PROMPT_CACHE_BYTES": value})


def test_a_models_prompt_cache_is_on_by_default_and_can_be_turned_off(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(MODELS)
    assert load_models_file(path).models[0].prompt_cache is True
    path.write_text(MODELS + "    prompt_cache: false\n")
    assert load_models_file(path).models[0].prompt_cache is False


@pytest.mark.parametrize("value", ["maybe", "[true]", "{on: true}", "2", "null"])
def test_a_wrong_prompt_cache_switch_is_a_config_error_naming_the_entry(tmp_path, value):
    path = tmp_path / "models.yaml"
    path.write_text(MODELS + f"    prompt_cache: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_models_file(path)
    assert "model 'local': prompt_cache:" in str(info.value)


def test_the_worker_gets_the_prompt_cache_through_the_loader(tmp_path, monkeypatch):
    from server.engine import process
    from server.models import loaders

    seen: list[tuple[object, ...]] = []
    monkeypatch.setattr(process.ProcessEngine, "load", classmethod(lambda cls, *args: seen.append(args)))
    loader = loaders.worker_loader(Settings(data_dir=tmp_path, prompt_cache_bytes=4096))
    loader(None)  # type: ignore[arg-type]
    assert seen[0][2] == PromptCacheConfig(Path(tmp_path) / "prompt-cache", 4096)
