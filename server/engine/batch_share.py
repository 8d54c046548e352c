"""What batch work (priority "batch", from the Batch API) may take of the scheduler's steps: pure decisions over
the sequences' state, made by the scheduler thread each step (server/engine/batching.py).

On a CPU each sequence in a step adds to that step's time about in proportion, and a step under way cannot be
cut short. So beside interactive requests (running or waiting, or seen within INTERACTIVE_GRACE_S: they come in
bursts), batch sequences step only one step in BATCH_STEP_EVERY_BESIDE_INTERACTIVE, at most
BATCH_SEQUENCES_BESIDE_INTERACTIVE of them (the nearest to done), and batch prefill is cut into small chunks.
Without interactive requests batch work takes every sequence and a bounded prefill share of each step, so an
interactive request that arrives waits at most one short step. The numbers are measured choices
(bench/batch_interference.py, docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from server.engine.admission import BATCH_SEQUENCES_BESIDE_INTERACTIVE, INTERACTIVE_GRACE_S

BATCH_STEP_EVERY_BESIDE_INTERACTIVE = 2
BATCH_PREFILL_BESIDE_INTERACTIVE = 16  # prompt tokens of batch requests one step evaluates beside interactive ones
BATCH_PREFILL_PER_STEP = 64  # and otherwise


@dataclass(frozen=True)
class BatchSequence:
    seq_id: int
    generated: int  # tokens generated so far
    cached: int  # tokens in its KV


class BatchShare:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._interactive_at = -INTERACTIVE_GRACE_S  # when an interactive request was last seen
        self._turn = 0  # steps since batch sequences last stepped beside interactive ones

    def beside_interactive(self, interactive_now: bool) -> bool:
        """Whether this step is shared with interactive work: some runs or waits now, or did lately."""
        now = self._clock()
        if interactive_now:
            self._interactive_at = now
        return now - self._interactive_at < INTERACTIVE_GRACE_S

    def paused(self, batch: Sequence[BatchSequence], beside_interactive: bool) -> frozenset[int]:
        """The batch sequences that sit this step out (keeping their sequence and KV)."""
        if not beside_interactive:
            return frozenset()
        self._turn = (self._turn + 1) % BATCH_STEP_EVERY_BESIDE_INTERACTIVE
        nearest_done = sorted(batch, key=lambda s: (s.generated, s.cached), reverse=True)
        stepping = BATCH_SEQUENCES_BESIDE_INTERACTIVE if self._turn == 0 else 0
        return frozenset(s.seq_id for s in nearest_done[stepping:])

    @staticmethod
    def prefill_budget(beside_interactive: bool) -> int:
        return BATCH_PREFILL_BESIDE_INTERACTIVE if beside_interactive else BATCH_PREFILL_PER_STEP

    @staticmethod
    def victim(batch: Sequence[BatchSequence]) -> int | None:
        """The batch sequence to give up to a waiting interactive request: the one that generated the least (the
        least work lost)."""
        return min(batch, key=lambda s: (s.generated, s.cached)).seq_id if batch else None
