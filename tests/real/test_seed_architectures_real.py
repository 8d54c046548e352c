"""The seed models' architectures, as tiny random-weight GGUFs served like any registry entry: each renders a
system + two-turn conversation in exactly its family's prompt format and generates through the HTTP API."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.real.conftest import ServerProcess
from tests.seed_models import DEEPSEEK_BOS, DEEPSEEK_EOS, write_seed_model

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a colour"},
]
EXPECTED_PROMPTS = {
    "tiny-llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a colour<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "tiny-phi3": (
        "<s><|system|>\nYou are terse.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello.<|end|>\n"
        "<|user|>\nName a colour<|end|>\n<|assistant|>\n"
    ),
    "tiny-mixtral": "<s> [INST] You are terse.\n\nHi there [/INST] Hello.</s> [INST] Name a colour [/INST]",
    "tiny-deepseek2": (
        f"{DEEPSEEK_BOS}You are terse.\n\nUser: Hi there\n\nAssistant: Hello.{DEEPSEEK_EOS}"
        "User: Name a colour\n\nAssistant:"
    ),
}
REPO_MODELS = Path(__file__).parents[2] / "models.yaml"


@pytest.fixture(scope="module")
def seed_server(tmp_path_factory) -> ServerProcess:
    folder = tmp_path_factory.mktemp("seeds")
    repo_entries = {entry["name"]: entry for entry in yaml.safe_load(REPO_MODELS.read_text())["models"]}
    entries = []
    for family in ("llama3", "phi3", "mixtral", "deepseek2"):
        path = write_seed_model(folder / f"{family}.gguf", family)
        entry = {"name": f"tiny-{family}", "source": {"path": str(path)}, "n_ctx": 256, "n_threads": 1}
        if family == "mixtral":  # the GGUF has no template: the one in the repository's models.yaml is used
            entry["chat_template"] = repo_entries["mixtral-8x7b-instruct"]["chat_template"]
        entries.append(entry)
    models_file = folder / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": entries}, allow_unicode=True))
    process = ServerProcess(models_file)
    yield process
    process.stop()


@pytest.mark.parametrize("model", sorted(EXPECTED_PROMPTS))
def test_the_family_prompt_format_is_rendered_exactly(seed_server, model):
    reply = httpx.post(
        seed_server.url + "/apply-template", json={"model": model, "messages": CONVERSATION}, timeout=120
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["prompt"] == EXPECTED_PROMPTS[model]


@pytest.mark.parametrize("model", sorted(EXPECTED_PROMPTS))
def test_each_architecture_generates_through_chat_completions(seed_server, model):
    api = openai.OpenAI(base_url=seed_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    reply = api.chat.completions.create(model=model, messages=CONVERSATION, max_tokens=8, temperature=0)
    assert reply.usage.completion_tokens > 0
    assert reply.choices[0].finish_reason in ("stop", "length")
    stream = api.chat.completions.create(model=model, messages=CONVERSATION, max_tokens=8, temperature=0, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == reply.choices[0].message.content  # greedy: the stream says the same


def test_the_repository_models_file_is_valid_and_lists_the_seed_models():
    from server.config import HubSource, load_models_file

    models = {spec.name: spec for spec in load_models_file(REPO_MODELS).models}
    seeds = (
        "phi-3-mini-4k-instruct",
        "llama-3-8b-instruct",
        "mixtral-8x7b-instruct",
        "deepseek-coder-v2-lite-instruct",
    )
    for name in seeds:
        source = models[name].source
        assert isinstance(source, HubSource) and len(source.revision) == 40, name  # pinned to a commit
    assert len(models["deepseek-coder-v2-lite-instruct"].source.revision) == 40
    assert models["bge-small-en-v1.5"].embedding and models["all-minilm-l6-v2"].embedding
    assert "gpt-4o-mini" in models["smollm2-135m-instruct"].aliases
