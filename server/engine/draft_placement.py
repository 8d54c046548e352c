"""Which tokens each decoding sequence drafts in a step (speculative decoding): by prompt lookup, else, where
none is found, by the draft model; within the batch's room, the context, and the tokens the request may still
generate (the step samples one more token than it drafts)."""

from __future__ import annotations

from collections.abc import Sequence

from server.config import SpeculativeSpec
from server.engine.batch_slots import Slot
from server.engine.draft_model import DraftModel, DraftRequest
from server.engine.speculative import Drafter


class DraftPlacement:
    def __init__(self, speculative: SpeculativeSpec | None, draft_model: DraftModel | None, n_ctx: int) -> None:
        self._speculative = speculative
        self._draft_model = draft_model
        self._n_ctx = n_ctx

    def start(self, slot: Slot, prompt: list[int]) -> None:
        """A sequence's request begins: its prompt-lookup index, where the model drafts by lookup."""
        spec = self._speculative
        slot.drafter = Drafter(prompt, spec) if spec is not None and spec.prompt_lookup else None

    def propose(self, decoding: Sequence[Slot], room: int) -> dict[int, list[int]]:
        """Each decoding sequence's draft (by seq_id), `room` tokens at most in all; resets each slot's draft."""
        drafts: dict[int, list[int]] = {}
        asks: list[DraftRequest] = []
        for slot in decoding:
            slot.draft, slot.draft_indices, slot.drafted_by_lookup = [], [], False
            assert slot.job is not None
            limit = min(room, self._n_ctx - len(slot.cached) - 1, slot.job.request.max_tokens - slot.generated - 1)
            if slot.drafter is not None:
                drafts[slot.seq_id] = slot.drafter.propose(limit)
                slot.drafted_by_lookup = bool(drafts[slot.seq_id])
            # the draft model has not seen a request's images: it drafts for text-only prompts
            if not drafts.get(slot.seq_id) and self._draft_model is not None and slot.job.images is None:
                assert self._speculative is not None
                asks.append(DraftRequest(slot.seq_id, slot.cached, min(limit, self._speculative.max_draft_tokens)))
            room -= len(drafts.get(slot.seq_id, ()))
        if asks:
            assert self._draft_model is not None
            guessed = self._draft_model.propose(asks)
            for ask in asks:  # the draft model's guesses share what room the lookup drafts left
                drafts[ask.seq_id] = guessed[ask.seq_id][: max(0, room)]
                room -= len(drafts[ask.seq_id])
        return drafts
