"""Embedding admission at both priorities: batch requests take only the slots interactive ones leave (one beside
interactive work), wait for a release rather than fail, and never make an interactive request 429."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from server.errors import NoRoomForBatch, OverloadedError
from server.generation.embedding import EmbeddingAdmission
from tests.fakes import fake_spec

SPEC = fake_spec("e").model_copy(update={"parallel": 2, "max_queue": 0})


def refusal(admission: EmbeddingAdmission, priority: str) -> Exception:
    """What admitting one more request at `priority` raises (it must raise)."""
    with pytest.raises((NoRoomForBatch, OverloadedError)) as refused, admission.admit(SPEC, priority):
        pass
    return refused.value


def test_batch_requests_fill_free_slots_then_wait_for_a_release():
    async def scenario() -> None:
        admission = EmbeddingAdmission()
        with contextlib.ExitStack() as held, contextlib.ExitStack() as second:
            held.enter_context(admission.admit(SPEC, "batch"))
            second.enter_context(admission.admit(SPEC, "batch"))  # no interactive work: both slots
            refused = refusal(admission, "batch")
            assert isinstance(refused, NoRoomForBatch)
            waiter = asyncio.ensure_future(refused.wait())
            done, _ = await asyncio.wait({waiter}, timeout=0.05)
            assert not done
            second.close()  # a release wakes the waiter
            await asyncio.wait_for(waiter, 30)

    asyncio.run(scenario())


def test_beside_interactive_work_batch_keeps_to_one_slot_and_never_causes_a_429():
    admission = EmbeddingAdmission()
    with admission.admit(SPEC), admission.admit(SPEC, "batch"):
        assert isinstance(refusal(admission, "batch"), NoRoomForBatch)  # the share beside interactive work: 1
        with admission.admit(SPEC):  # parallel + max_queue = 2 interactive: the batch one is not counted
            assert isinstance(refusal(admission, "interactive"), OverloadedError)
    with admission.admit(SPEC), admission.admit(SPEC, "batch"):
        pass  # all released: the same again is admitted
