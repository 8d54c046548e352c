"""`GET /admin/stats`: live serving figures per model, read from the counters that feed `/metrics`.

Totals are the Prometheus counters' values. Rates (requests and generated tokens per second) and the mean time to
first token are taken over a recent window: between this answer and the oldest earlier answer of the last
WINDOW_S seconds (else the latest earlier one), so a console polling every few seconds sees the last ~10 s. The
first answer after start has no rates (null)."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter, Histogram
from pydantic import BaseModel

from server.engine import EngineCounters
from server.metrics import Metrics
from server.models.events import ModelEvent

WINDOW_S = 10.0
MAX_SAMPLES = 64  # earlier answers kept for the window, however often the stats are asked for


@dataclass(frozen=True)
class Totals:
    """Counter values by model at one moment (monotonic seconds)."""

    at: float
    requests: Mapping[str, float] = field(default_factory=dict)
    prompt_tokens: Mapping[str, float] = field(default_factory=dict)
    generated_tokens: Mapping[str, float] = field(default_factory=dict)
    ttft_sum: Mapping[str, float] = field(default_factory=dict)
    ttft_count: Mapping[str, float] = field(default_factory=dict)
    loads: Mapping[str, float] = field(default_factory=dict)


def read_totals(metrics: Metrics, at: float) -> Totals:
    return Totals(
        at=at,
        requests=_by_model(metrics.requests, "_total"),
        prompt_tokens=_by_model(metrics.prompt_tokens, "_total"),
        generated_tokens=_by_model(metrics.generated_tokens, "_total"),
        ttft_sum=_by_model(metrics.ttft, "_sum"),
        ttft_count=_by_model(metrics.ttft, "_count"),
        loads=_by_model(metrics.model_load, "_count"),
    )


def _by_model(metric: Counter | Histogram, suffix: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix) and "model" in sample.labels:
                totals[sample.labels["model"]] += sample.value
    return totals


class StatsWindow:
    """Earlier answers' totals, for rates over the recent window (built by create_app)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[Totals] = deque(maxlen=MAX_SAMPLES)

    def now(self) -> float:
        return self._clock()

    def base_for(self, current: Totals) -> Totals | None:
        """The totals to take rates against, then remember `current` for later answers."""
        earlier = [s for s in self._samples if s.at < current.at]
        recent = [s for s in earlier if current.at - s.at <= WINDOW_S]
        base = recent[0] if recent else (earlier[-1] if earlier else None)
        while self._samples and current.at - self._samples[0].at > WINDOW_S:
            self._samples.popleft()
        self._samples.append(current)
        return base


class ModelStats(BaseModel):
    id: str
    loaded: bool
    requests_total: int
    requests_per_s: float | None
    prompt_tokens_total: int
    generated_tokens_total: int
    generated_tokens_per_s: float | None
    ttft_mean_s: float | None  # over the window; null when no first token came in it
    queue_depth: int | None  # requests waiting for a sequence (null: not loaded, or its worker did not answer)
    active_sequences: int | None
    loads: int
    restarts: int


class AdminStats(BaseModel):
    object: str = "admin.stats"
    time: float
    window_s: float | None  # the span the rates and ttft_mean_s cover; null on the first answer
    data: list[ModelStats]
    events: list[dict[str, object]]  # the latest model events, oldest first (as /models/sse sends them)


def admin_stats(
    names: Iterable[str],
    loaded: Iterable[str],
    current: Totals,
    base: Totals | None,
    counters: Mapping[str, EngineCounters],
    restarts: Mapping[str, int],
    events: Iterable[ModelEvent],
) -> AdminStats:
    span = None if base is None else current.at - base.at
    loaded = set(loaded)

    def rate(values: str, model: str) -> float | None:
        if base is None or not span:
            return None
        now, then = getattr(current, values).get(model, 0.0), getattr(base, values).get(model, 0.0)
        return round(max(0.0, now - then) / span, 3)

    def ttft(model: str) -> float | None:
        if base is None:
            return None
        count = current.ttft_count.get(model, 0.0) - base.ttft_count.get(model, 0.0)
        total = current.ttft_sum.get(model, 0.0) - base.ttft_sum.get(model, 0.0)
        return round(total / count, 4) if count > 0 else None

    rows = []
    for name in names:
        engine = counters.get(name)
        rows.append(
            ModelStats(
                id=name,
                loaded=name in loaded,
                requests_total=int(current.requests.get(name, 0)),
                requests_per_s=rate("requests", name),
                prompt_tokens_total=int(current.prompt_tokens.get(name, 0)),
                generated_tokens_total=int(current.generated_tokens.get(name, 0)),
                generated_tokens_per_s=rate("generated_tokens", name),
                ttft_mean_s=ttft(name),
                queue_depth=None if engine is None else engine.queue_depth,
                active_sequences=None if engine is None else engine.active_sequences,
                loads=int(current.loads.get(name, 0)),
                restarts=restarts.get(name, 0),
            )
        )
    return AdminStats(
        time=round(time.time(), 3),
        window_s=None if span is None else round(span, 3),
        data=rows,
        events=[event.wire() for event in events],
    )
