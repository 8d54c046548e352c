"""The scheduler's per-token time limit on a grammar's work, for one sequence.

llama.cpp keeps a parse stack per way the output so far can be parsed, with no cap and no timeout, and a recursive
grammar (`s ::= "a" s "b" | "a" s "c" | "d"`) multiplies them with every character; all of it runs on the
scheduler thread, where every other sequence of the model waits. So each token's grammar work is timed (CPU time
of the thread: what the grammar costs, not how loaded the machine is), and a sequence whose token took longer than
the limit is ended with an error while the others go on.

Checking a token costs about a pass per parse stack; accepting it about the square of the stacks it leads to
(llama.cpp compares each new stack with the others), and a token of several characters can multiply them several
times over. Since llama.cpp cannot be stopped inside an accept, the guard also foresees it: while the stacks keep
multiplying from token to token (the check grows), the accept to come is taken as the last one times that growth
squared, and a token whose foreseen cost is past the limit is refused before it is accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class GrammarStepTooSlow(Exception):
    """One token's grammar work took, or would take, longer than the limit (seconds: how long)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"{seconds:.2f} s")
        self.seconds = seconds


class StepGuard:
    """One sequence's grammar costs at its last token, and its limit (scheduler thread only)."""

    def __init__(self, limit_s: float, clock: Callable[[], float] = time.thread_time) -> None:
        self.limit_s = limit_s
        self._clock = clock
        self._started = 0.0
        self._check_s = 0.0  # the last token's check
        self._growth = 1.0  # how much that check grew on the one before
        self._accept_s = 0.0  # the last token's accept

    def start(self) -> None:
        """A token's grammar work begins."""
        self._started = self._clock()

    def before_accept(self, check_s: float) -> None:
        """The chosen token passed its check (taking `check_s`); raise if accepting it would pass the limit."""
        growth = check_s / self._check_s if self._check_s > 0 else 1.0
        sustained = min(growth, self._growth)  # a one-time jump (a wide enum begins) is not a trend
        foreseen = self._accept_s * max(sustained, 1.0) ** 2
        self._check_s, self._growth = check_s, growth
        total = self._clock() - self._started + foreseen
        if total > self.limit_s:
            raise GrammarStepTooSlow(total)

    def after_accept(self, accept_s: float) -> None:
        """The token was accepted (taking `accept_s`); raise if the token's work passed the limit."""
        self._accept_s = accept_s
        total = self._clock() - self._started
        if total > self.limit_s:
            raise GrammarStepTooSlow(total)
