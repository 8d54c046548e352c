"""The one admission policy: a model takes `parallel` requests decoding plus `max_queue` waiting; one more is
refused at once with a 429 (never queued without end), before any byte of its response is sent. Generation in
the HTTP process, the scheduler in a worker, and embeddings all ask this."""

from __future__ import annotations

from dataclasses import dataclass

from server.config import ModelSpec
from server.errors import OverloadedError

RETRY_AFTER_S = 1


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
