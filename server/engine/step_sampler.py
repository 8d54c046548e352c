"""What a decode step gives each sequence: its next token sampled from its logits (with its grammar, thinking
budget and stop strings), the tokens it drafted kept up to the first the model disagrees with, and the step's
text sent in one delta (or the reply's end)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import llama_cpp

from server.engine.base import EngineCounters, GenerationDelta, TokenLogprob
from server.engine.batch_slots import Slot
from server.engine.grammar import ConstrainedSampler
from server.engine.grammar_guard import GrammarStepTooSlow
from server.engine.native import NativeModel
from server.errors import GrammarTooComplexError

logger = logging.getLogger(__name__)


class StepSampler:
    def __init__(
        self,
        native: NativeModel,
        memory: llama_cpp.llama_memory_t,
        counters: EngineCounters,
        *,
        n_ctx: int,
        finish: Callable[..., None],
    ) -> None:
        self._native = native
        self._memory = memory
        self._n_ctx = n_ctx
        self._finish = finish  # frees a sequence whose reply ended: finish(slot, keep_cache=...)
        self.counters = counters
        self._constrained = ConstrainedSampler(native.n_vocab)

    def take_step(self, slot: Slot) -> None:
        """Sample the sequence's next token, then, while it equals the drafted one, the token after that from the
        draft's own logits: the draft is kept up to its first wrong token, whose KV (and the rest) is dropped.
        The step's text goes out in one delta."""
        draft, places = slot.draft, [slot.batch_index, *slot.draft_indices]
        slot.draft, slot.draft_indices = [], []
        accepted = 0
        for i, place_ in enumerate(places):
            slot.batch_index, slot.ahead = place_, len(draft) - i
            token = self._sample(slot)
            if token is None:  # the sequence ended (its cached draft KV stays: valid for the tokens it holds)
                break
            if i < len(draft) and token == draft[i]:
                accepted += 1
                continue
            wrong = len(draft) - i  # drafted tokens after this position, all now in the KV cache
            if wrong:
                keep = len(slot.cached) - wrong
                if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
                    raise RuntimeError("llama.cpp could not drop a rejected draft's KV")
                del slot.cached[keep:]
            slot.next_token = token
            break
        if draft:
            self.counters.draft_accepted_tokens += accepted
            if slot.drafter is not None and slot.drafted_by_lookup:
                slot.drafter.verified(len(draft), accepted)
        if slot.job is not None and slot.unsent:
            slot.job.emit(GenerationDelta(slot.unsent, slot.generated, logprobs=self._take_logprobs(slot)))
            slot.unsent = ""

    def _sample(self, slot: Slot) -> int | None:
        """Sample the token at the sequence's batch position and take it into the reply; None when the reply
        ended with it (the last delta sent)."""
        assert slot.job is not None and slot.assembler is not None
        forced = None if slot.thinking is None else slot.thinking.forced()
        try:
            if forced is not None and self._constrained.force(slot.sampler, slot.grammar, forced, slot.guard):
                token = forced  # the thinking budget is spent: its end marker, not a sampled token
            elif slot.grammar is None:
                token = llama_cpp.llama_sampler_sample(slot.sampler, self._native.ctx, slot.batch_index)
            else:
                sampling = slot.job.request.sampling
                chosen = self._constrained.sample(
                    self._native.ctx, slot.batch_index, slot.sampler, slot.grammar, sampling, slot.guard
                )
                if chosen is None:  # the grammar allows nothing more (complete, and the end token is banned)
                    self._emit_last(slot, slot.assembler.finish(), "stop")
                    return None
                token = chosen
        except GrammarStepTooSlow as slow:
            self._grammar_too_slow(slot, slow.seconds)
            return None
        slot.generated += 1
        self.counters.generated_tokens += 1
        if token in self._native.eog_tokens:
            self._emit_last(slot, slot.assembler.finish(), "stop")
            return None
        if slot.job.request.logprobs is not None:
            slot.logprobs.append(self._native.logprobs(slot.batch_index, token, slot.job.request.logprobs))
        piece = self._native.piece(token, special=token in slot.shown)
        if slot.thinking is not None:
            slot.thinking.push(token, piece)
        step = slot.assembler.push(piece)
        if step.stopped:
            self._emit_last(slot, step.text, "stop", step.stop)
            return None
        # The context is full when this token's KV would not fit.
        if slot.generated >= slot.job.request.max_tokens or self._context_full(slot):
            self._emit_last(slot, step.text + slot.assembler.finish(), "length")
            return None
        slot.unsent += step.text
        if slot.drafter is not None:
            slot.drafter.take(token)
        return token

    def _context_full(self, slot: Slot) -> bool:
        return len(slot.cached) - slot.ahead >= self._n_ctx

    def _grammar_too_slow(self, slot: Slot, spent: float) -> None:
        """End a sequence whose grammar took (or would take) longer than its limit for one token, with an error,
        before it stalls every other sequence (server/engine/grammar_guard.py); the others go on."""
        job = slot.job
        assert job is not None
        limit = job.request.grammar_step_limit_s
        logger.warning("a token's output grammar took %.2f s (limit %g s): its request ended", spent, limit)
        self._finish(slot, keep_cache=True)
        job.emit(
            GrammarTooComplexError(
                f"One token of the output grammar took (or, its parse stacks multiplying, would take) {spent:.2f} s "
                f"of the model's time, more than this server's limit of {limit:g} s: the grammar is too ambiguous "
                "for llama.cpp, whose work grows with each way the output so far can be parsed. Simplify it."
            )
        )

    def _emit_last(self, slot: Slot, text: str, reason: str, stop: str | None = None) -> None:
        job = slot.job
        assert job is not None
        text, slot.unsent = slot.unsent + text, ""
        delta = GenerationDelta(text, slot.generated, reason, self._take_logprobs(slot), stop)  # type: ignore[arg-type]
        self._finish(slot, keep_cache=True)  # first, so counters are settled when the client sees the end
        job.emit(delta)

    @staticmethod
    def _take_logprobs(slot: Slot) -> tuple[TokenLogprob, ...]:
        taken, slot.logprobs = tuple(slot.logprobs), []
        return taken
