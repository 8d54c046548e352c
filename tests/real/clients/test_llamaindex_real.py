"""LlamaIndex's `OpenAILike` against the embedded model: chat, streamed chat and structured_predict, at its default
temperature under three seeds. LlamaIndex's OpenAI integration needs openai < 3 while the rest of the suite runs on
openai 3, so the client runs in its own environment (`make setup-dev` builds .venv-llamaindex from
tests/real/clients/llamaindex-requirements.txt) and reports what it saw as JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.real.clients import SEEDS

ROOT = Path(__file__).parents[3]
PYTHON = ROOT / ".venv-llamaindex" / "bin" / "python"
CLIENT = Path(__file__).with_name("llamaindex_client.py")


@pytest.mark.parametrize("seed", SEEDS)
def test_chat_stream_and_structured_predict(server, seed):
    assert PYTHON.exists(), "LlamaIndex's environment is missing: run `make setup-dev`"
    run = subprocess.run(
        [str(PYTHON), str(CLIENT), server.url, str(seed)], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout)
    assert seen["chat"] and "".join(seen["stream_deltas"]) == seen["chat"]
    assert seen["type"] == "City"
    city = seen["structured"]
    assert set(city) == {"name", "country", "population_millions"} and isinstance(city["population_millions"], int)
    assert len(city["name"]) <= 40 and len(city["country"]) <= 40
