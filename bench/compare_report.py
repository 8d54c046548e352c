"""bench/compare.py's tables: per configuration (thread count x load level) the median over rounds of each figure,
and issue 15's goals as ratios ours/peer."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.load import LevelStats

PREFIX = "prefix"  # the level key of 8 streams that share a long system prompt


@dataclass(frozen=True)
class Goal:
    label: str
    level: str
    figure: str  # a LevelStats field
    better: str  # "higher" or "lower"


GOALS = (
    Goal("single stream tokens/s", "1", "tokens_per_s", "higher"),
    Goal("8 concurrent streams tokens/s", "8", "tokens_per_s", "higher"),
    Goal("TTFT p95 at concurrency 8", "8", "ttft_p95", "lower"),
    Goal("TTFT p95, 8 streams sharing a 1,000-token system prompt", PREFIX, "ttft_p95", "lower"),
)


def median_stats(runs: list[LevelStats]) -> LevelStats:
    """Each figure's median over the runs (figure by figure: not one run's numbers)."""
    if not runs:
        raise ValueError("no runs")
    return LevelStats(
        concurrency=runs[0].concurrency,
        requests=runs[0].requests,
        tokens_per_s=statistics.median(r.tokens_per_s for r in runs),
        ttft_p50=statistics.median(r.ttft_p50 for r in runs),
        ttft_p95=statistics.median(r.ttft_p95 for r in runs),
        latency_p50=statistics.median(r.latency_p50 for r in runs),
    )


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def level_label(key: str) -> str:
    return "8, shared 1,000-token system prompt" if key == PREFIX else key


def levels_table(ours: dict[str, list[LevelStats]], theirs: dict[str, list[LevelStats]]) -> list[str]:
    lines = [
        "| concurrency | tok/s ours | tok/s peer | ratio | TTFT p50 ours/peer (s) | TTFT p95 ours/peer (s) "
        "| p95 ratio | latency p50 ours/peer (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in ours:
        a, b = median_stats(ours[key]), median_stats(theirs[key])
        lines.append(
            f"| {level_label(key)} | {a.tokens_per_s:.1f} | {b.tokens_per_s:.1f} "
            f"| {ratio(a.tokens_per_s, b.tokens_per_s):.2f}x "
            f"| {a.ttft_p50:.3f} / {b.ttft_p50:.3f} | {a.ttft_p95:.3f} / {b.ttft_p95:.3f} "
            f"| {ratio(a.ttft_p95, b.ttft_p95):.2f}x | {a.latency_p50:.2f} / {b.latency_p50:.2f} |"
        )
    return lines


def goals_table(ours: dict[str, list[LevelStats]], theirs: dict[str, list[LevelStats]]) -> list[str]:
    """Each goal: the medians, their ratio ours/peer, and the spread of the per-round ratios (round i of ours
    against round i of the peer) as a sense of the noise."""
    lines = [
        "| goal | ours (median) | peer (median) | ratio ours/peer | better | per-round ratios (min-max) |",
        "|---|---|---|---|---|---|",
    ]
    for goal in GOALS:
        if goal.level not in ours or goal.level not in theirs:
            lines.append(f"| {goal.label} | not measured (add level {goal.level}) | | | | |")
            continue
        a = getattr(median_stats(ours[goal.level]), goal.figure)
        b = getattr(median_stats(theirs[goal.level]), goal.figure)
        rounds = [
            ratio(getattr(x, goal.figure), getattr(y, goal.figure))
            for x, y in zip(ours[goal.level], theirs[goal.level], strict=True)
        ]
        unit = "" if goal.figure == "tokens_per_s" else " s"
        digits = 1 if goal.figure == "tokens_per_s" else 3
        lines.append(
            f"| {goal.label} | {a:.{digits}f}{unit} | {b:.{digits}f}{unit} | {ratio(a, b):.2f}x | {goal.better} "
            f"| {min(rounds):.2f}x-{max(rounds):.2f}x |"
        )
    return lines


def report(
    threads: int, peer: str, rounds: int, ours: dict[str, list[LevelStats]], theirs: dict[str, list[LevelStats]]
) -> str:
    header = f"threads={threads}, peer={peer}, median of {rounds} round(s) per configuration"
    return "\n".join([header, "", *levels_table(ours, theirs), "", *goals_table(ours, theirs)])
