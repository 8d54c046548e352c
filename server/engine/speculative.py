"""Speculative decoding's drafts: tokens guessed cheaply, then verified by the model in one decode step.

Prompt lookup (n-gram drafting) guesses that the reply goes on as it did the last time its last few tokens
appeared in the prompt or the reply so far: editing a given file or quoting a document repeats long runs. It
needs no second model. The scheduler puts a sequence's next token and its draft in the same batch as the other
sequences' tokens, samples each position in turn as it would without a draft and keeps the draft up to the first
token that differs (server/engine/batching.py).

Why sampling stays exact: a draft is one token per position, with probability 1 under the drafter, so the standard
acceptance rule (accept draft token d with probability min(1, p(d)/q(d)) = p(d); on rejection sample from the
residual max(0, p - q), normalized, which is p without d) is the same as sampling the position from p and keeping
d only when the sample is d. The sampler chain therefore sees exactly the tokens it would have seen without drafts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from server.config import SpeculativeSpec

# What verifying one drafted token costs, as a share of a one-token decode step: 0.47-0.59 measured with
# SmolLM2-135M on 2 threads (bench/speculative.py, docs/benchmarks.md; a small model on a CPU computes rather than
# waits for its weights). A drafted token is worth it while the chance it is kept exceeds this.
DRAFT_TOKEN_COST = 0.5
INITIAL_AGREEMENT = 0.6  # drafts one token until the reply shows how well drafts agree
AGREEMENT_WEIGHT = 0.15  # of the latest drafted token in the running average
SHADOW_TOKENS = 4


class PromptLookup:
    """The n-gram index of one sequence's tokens (prompt, then the reply as it is accepted): for each n-gram size,
    where each n-gram was last followed by a token. A lookup costs O(sizes), a new token O(sizes)."""

    def __init__(self, tokens: Sequence[int], spec: SpeculativeSpec) -> None:
        self._sizes = range(spec.ngram_max, spec.ngram_min - 1, -1)
        self._tokens: list[int] = []
        self._last: dict[tuple[int, ...], int] = {}  # n-gram -> the position after its latest occurrence
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self._append(token)

    def _append(self, token: int) -> None:
        # The n-grams ending at the current last token get a follower now: index them before appending.
        tokens = self._tokens
        end = len(tokens)
        for n in self._sizes:
            if end >= n:
                self._last[tuple(tokens[end - n : end])] = end
        tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest n-gram ending here."""
        if limit <= 0:
            return []
        tokens = self._tokens
        end = len(tokens)
        for n in self._sizes:
            if end < n:
                continue
            start = self._last.get(tuple(tokens[end - n : end]))
            if start is not None:
                found = tokens[start : min(start + limit, end)]
                # an image's rows stand in the prompt as negative ids (server/engine/vision.py): never a draft
                return next((found[:i] for i, token in enumerate(found) if token < 0), found)
        return []


class Drafter:
    """One sequence's drafts by prompt lookup, as many as pay for themselves.

    A drafted token costs about `DRAFT_TOKEN_COST` of a decode step to verify (a small model on a CPU is not
    bound by reading its weights alone), and the k-th token of a draft is kept only if the k-1 before it were, so
    with each token agreeing with probability p the k-th is worth drafting while p**k > cost. p is a running
    average of how often drafted tokens agreed; while it is too low to draft at all, drafts are still looked up
    and compared with the tokens the model writes, unverified and free, so drafting resumes where the reply starts
    repeating its context."""

    def __init__(self, prompt: Sequence[int], spec: SpeculativeSpec) -> None:
        self._lookup = PromptLookup(prompt, spec)
        self._most = spec.max_draft_tokens
        self.agreement = INITIAL_AGREEMENT
        self._shadow: list[int] = []  # a draft not verified, compared with the tokens as they come

    def length(self) -> int:
        """Tokens worth drafting now."""
        p = self.agreement
        if p <= DRAFT_TOKEN_COST:
            return 0
        if p >= 1.0:
            return self._most
        return min(self._most, int(math.log(DRAFT_TOKEN_COST) / math.log(p)))

    def propose(self, limit: int) -> list[int]:
        """The draft to verify after the sequence's next token (empty when drafting does not pay now)."""
        worth = min(limit, self.length())
        if worth <= 0:
            if not self._shadow and limit > 0:
                self._shadow = self._lookup.draft(min(limit, SHADOW_TOKENS))
            return []
        self._shadow = []
        return self._lookup.draft(worth)

    def verified(self, drafted: int, accepted: int) -> None:
        for _ in range(accepted):
            self._observe(1.0)
        if accepted < drafted:
            self._observe(0.0)

    def take(self, token: int) -> None:
        """A token of the reply, sampled by the model (drafted or not)."""
        self._lookup.extend((token,))
        if self._shadow:
            if token == self._shadow[0]:
                self._observe(1.0)
                self._shadow.pop(0)
            else:
                self._observe(0.0)
                self._shadow = []

    def _observe(self, agreed: float) -> None:
        self.agreement += AGREEMENT_WEIGHT * (agreed - self.agreement)
