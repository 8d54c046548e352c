"""What batch work may take of each scheduler step (server/engine/batch_share.py): pure decisions, a fake clock."""

from __future__ import annotations

from server.engine.admission import INTERACTIVE_GRACE_S
from server.engine.batch_share import (
    BATCH_PREFILL_BESIDE_INTERACTIVE,
    BATCH_PREFILL_PER_STEP,
    BATCH_STEP_EVERY_BESIDE_INTERACTIVE,
    BatchSequence,
    BatchShare,
)

BATCH = [BatchSequence(0, generated=5, cached=40), BatchSequence(3, generated=30, cached=70), BatchSequence(5, 1, 9)]


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_without_interactive_work_every_batch_sequence_steps_with_a_bounded_prefill():
    share = BatchShare(Clock())
    assert not share.beside_interactive(False)
    assert share.paused(BATCH, False) == frozenset()
    assert share.prefill_budget(False) == BATCH_PREFILL_PER_STEP


def test_beside_interactive_work_one_batch_sequence_steps_one_step_in_n():
    share = BatchShare(Clock())
    assert share.beside_interactive(True)
    turns = [share.paused(BATCH, True) for _ in range(BATCH_STEP_EVERY_BESIDE_INTERACTIVE * 3)]
    stepping = [frozenset({0, 3, 5}) - paused for paused in turns]
    assert stepping.count(frozenset({3})) == 3  # the nearest to done, once every N steps
    assert stepping.count(frozenset()) == len(turns) - 3
    assert share.prefill_budget(True) == BATCH_PREFILL_BESIDE_INTERACTIVE


def test_interactive_work_counts_for_a_grace_period_after_it_ends():
    clock = Clock()
    share = BatchShare(clock)
    share.beside_interactive(True)
    clock.now += INTERACTIVE_GRACE_S / 2
    assert share.beside_interactive(False)
    clock.now += INTERACTIVE_GRACE_S
    assert not share.beside_interactive(False)


def test_the_batch_sequence_given_up_is_the_one_that_did_least():
    assert BatchShare.victim(BATCH) == 5
    assert BatchShare.victim([]) is None
