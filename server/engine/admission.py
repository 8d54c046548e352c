"""The one admission policy: a model takes `parallel` requests decoding plus `max_queue` waiting; one more is
refused at once with a 429 (never queued without end), before any byte of its response is sent. Generation in
the HTTP process, the scheduler in a worker, and embeddings all ask this."""

from __future__ import annotations

from dataclasses import dataclass

from server.config import ModelSpec
from server.errors import OverloadedError

RETRY_AFTER_S = 1
# While interactive requests run, batch requests (priority "batch") may use at most this many sequences beside
# them: each batch sequence adds its token to every step, slowing every interactive stream
# (bench/batch_interference.py measures it). With no interactive request in flight, batch work takes every free
# sequence.
BATCH_SEQUENCES_BESIDE_INTERACTIVE = 1
# Interactive requests come in bursts: for this long after the last one, batch work still keeps to its share
# beside them, rather than filling every sequence in a gap between two requests and being preempted at once.
INTERACTIVE_GRACE_S = 2.0


@dataclass(frozen=True)
class Admission:
    parallel: int
    max_queue: int

    @classmethod
    def of(cls, spec: ModelSpec) -> Admission:
        return cls(spec.parallel, spec.max_queue)

    @property
    def limit(self) -> int:
        return self.parallel + self.max_queue

    def check(self, in_use: int) -> None:
        """Raise the 429 when `in_use` requests (running and waiting) already fill the model."""
        if in_use >= self.limit:
            raise OverloadedError("The model is overloaded; retry shortly.", retry_after=RETRY_AFTER_S)
