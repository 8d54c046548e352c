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

    def batch_share(self, interactive: bool) -> int:
        """The sequences batch requests may hold in all: every one, or beside interactive work (`interactive`:
        in flight or recent) BATCH_SEQUENCES_BESIDE_INTERACTIVE."""
        return BATCH_SEQUENCES_BESIDE_INTERACTIVE if interactive else self.parallel

    def batch_room(self, in_use: int, batch_in_use: int, interactive: bool) -> int:
        """How many more sequences a batch request may take now: free ones, within the batch share."""
        return min(self.parallel - in_use, self.batch_share(interactive) - batch_in_use)

    def check(self, in_use: int) -> None:
        """Raise the 429 when `in_use` requests (running and waiting) already fill the model."""
        if in_use >= self.limit:
            raise OverloadedError("The model is overloaded; retry shortly.", retry_after=RETRY_AFTER_S)
