"""The scheduler's per-token limit on a grammar's work: a token past it ends the sequence, and while the parse stacks
keep multiplying, an accept foreseen to pass it is refused before llama.cpp starts it."""

from __future__ import annotations

import pytest

from server.engine.grammar_guard import GrammarStepTooSlow, StepGuard


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def token(guard: StepGuard, clock: Clock, check_s: float, accept_s: float) -> None:
    """One token's work: its check, then (unless refused) its accept."""
    guard.start()
    clock.now += check_s
    guard.before_accept(check_s)
    clock.now += accept_s
    guard.after_accept(accept_s)


def test_tokens_under_the_limit_go_on():
    clock = Clock()
    guard = StepGuard(0.25, clock)
    for _ in range(100):
        token(guard, clock, check_s=0.01, accept_s=0.2)


def test_a_token_past_the_limit_ends_the_sequence():
    clock = Clock()
    guard = StepGuard(0.25, clock)
    token(guard, clock, check_s=0.001, accept_s=0.01)
    with pytest.raises(GrammarStepTooSlow) as caught:
        token(guard, clock, check_s=0.001, accept_s=0.3)
    assert caught.value.seconds == pytest.approx(0.301)


def test_an_accept_foreseen_past_the_limit_is_refused_before_it_runs():
    # The check doubles token after token: so do the stacks, and the accept (quadratic) quadruples.
    clock = Clock()
    guard = StepGuard(0.25, clock)
    token(guard, clock, check_s=0.001, accept_s=0.02)
    token(guard, clock, check_s=0.002, accept_s=0.08)
    guard.start()
    clock.now += 0.004
    with pytest.raises(GrammarStepTooSlow) as caught:
        guard.before_accept(0.004)  # 0.08 * 2^2 = 0.32 foreseen
    assert caught.value.seconds == pytest.approx(0.324)


def test_a_one_time_jump_in_the_stacks_is_not_taken_for_a_trend():
    # A wide enum begins: the check grows a hundredfold once, then stays.
    clock = Clock()
    guard = StepGuard(0.25, clock)
    token(guard, clock, check_s=0.0001, accept_s=0.05)
    token(guard, clock, check_s=0.0001, accept_s=0.05)
    token(guard, clock, check_s=0.01, accept_s=0.05)
    token(guard, clock, check_s=0.01, accept_s=0.05)
