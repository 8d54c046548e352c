"""Prometheus metrics on the app's own registry, and the per-request record that feeds them and the request log.

Labels are low-cardinality only: a model label is always a configured model's name (never what a client sent),
an endpoint label is a route path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


@dataclass
class RequestRecord:
    """What one request did, filled in as it goes; logged and counted when it ends."""

    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.monotonic)
    model: str = ""
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    client_timed_out: bool = False

    def log_fields(self) -> dict[str, Any]:
        end = time.monotonic()
        ttft = None if self.first_token_at is None else round(self.first_token_at - self.started, 4)
        return {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "model": self.model or None,
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_s": ttft,
            "duration_s": round(end - self.started, 4),
        }


@dataclass(frozen=True)
class EngineSnapshot:
    """Counters of one loaded model's engine, as read at scrape time."""

    queue_depth: int
    active_sequences: int
    decode_steps: int
    batch_tokens_total: int
    prefix_cache_hit_tokens: int
    batch_preemptions: int = 0
    draft_tokens: int = 0
    draft_accepted_tokens: int = 0
    image_chunks_encoded: int = 0
    image_rows_evaluated: int = 0


class _EngineCollector:
    """Reports the engines' own counters, fetched just before each scrape."""

    def __init__(self, restarts: Callable[[], Mapping[str, int]]) -> None:
        self.snapshots: dict[str, EngineSnapshot] = {}
        self._restarts = restarts

    def collect(self) -> Iterable[Any]:
        queue = GaugeMetricFamily("slm_queue_depth", "Requests waiting for a sequence", labels=["model"])
        active = GaugeMetricFamily("slm_active_sequences", "Sequences being decoded", labels=["model"])
        hits = CounterMetricFamily(
            "slm_prefix_cache_hit_tokens", "Prompt tokens served from the KV cache", labels=["model"]
        )
        preemptions = CounterMetricFamily(
            "slm_batch_preemptions", "Batch requests that gave their sequence to interactive ones", labels=["model"]
        )
        drafted = CounterMetricFamily(
            "slm_draft_tokens", "Tokens drafted by speculative decoding and verified by the model", labels=["model"]
        )
        accepted = CounterMetricFamily(
            "slm_draft_accepted_tokens", "Drafted tokens the model agreed with (kept)", labels=["model"]
        )
        encoded = CounterMetricFamily(
            "slm_image_chunks_encoded", "Image chunks the vision projector encoded", labels=["model"]
        )
        image_rows = CounterMetricFamily(
            "slm_image_rows_evaluated", "Rows of image embeddings decoded into the KV cache", labels=["model"]
        )
        batch = SummaryMetricFamily("slm_batch_tokens", "Tokens evaluated per decode step", labels=["model"])
        loaded = GaugeMetricFamily("slm_models_loaded", "Models loaded in a worker")
        restarts = CounterMetricFamily("slm_worker_restarts", "Model workers restarted after dying", labels=["model"])
        for model, snap in sorted(self.snapshots.items()):
            queue.add_metric([model], snap.queue_depth)
            active.add_metric([model], snap.active_sequences)
            hits.add_metric([model], snap.prefix_cache_hit_tokens)
            preemptions.add_metric([model], snap.batch_preemptions)
            drafted.add_metric([model], snap.draft_tokens)
            accepted.add_metric([model], snap.draft_accepted_tokens)
            encoded.add_metric([model], snap.image_chunks_encoded)
            image_rows.add_metric([model], snap.image_rows_evaluated)
            batch.add_metric([model], count_value=snap.decode_steps, sum_value=snap.batch_tokens_total)
        loaded.add_metric([], len(self.snapshots))
        for model, count in sorted(self._restarts().items()):
            restarts.add_metric([model], count)
        return [queue, active, hits, preemptions, drafted, accepted, encoded, image_rows, batch, loaded, restarts]


class Metrics:
    def __init__(self, restarts: Callable[[], Mapping[str, int]] = dict) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("slm_requests", "HTTP requests on /v1", ["model", "endpoint", "status"], registry=r)
        self.request_duration = Histogram(
            "slm_request_duration_seconds",
            "Request duration, to the last byte",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "slm_time_to_first_token_seconds",
            "Time to the first generated token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "slm_inter_token_latency_seconds",
            "Time between generated tokens",
            ["model"],
            buckets=TOKEN_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("slm_prompt_tokens", "Prompt tokens", ["model"], registry=r)
        self.generated_tokens = Counter("slm_generated_tokens", "Generated tokens", ["model"], registry=r)
        self.model_load = Histogram(
            "slm_model_load_seconds",
            "Time to load a model into a worker",
            ["model"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.client_timeouts = Counter(
            "slm_client_timeouts",
            "Streams ended because the client stopped reading them (a send timed out, or it fell too far behind)",
            ["model"],
            registry=r,
        )
        self.batch_lines = Counter(
            "slm_batch_lines", "Batch lines run to an outcome (failed: an error line)", ["outcome"], registry=r
        )
        self.batch_queue_depth = Gauge("slm_batch_queue_depth", "Lines of open batches not yet run", registry=r)
        self.engines = _EngineCollector(restarts)
        r.register(self.engines)

    def observe_request(self, record: RequestRecord, endpoint: str) -> None:
        model = record.model or "none"
        self.requests.labels(model, endpoint, str(record.status)).inc()
        self.request_duration.labels(model, endpoint).observe(time.monotonic() - record.started)

    def observe_tokens(self, record: RequestRecord, new: int, now: float, previous_at: float | None) -> None:
        """`new` tokens of one choice arrived at `now`; its previous tokens arrived at `previous_at`."""
        if new <= 0:
            return
        gaps = new
        if record.first_token_at is None:
            record.first_token_at = now
            self.ttft.labels(record.model).observe(now - record.started)
        if previous_at is None:
            gaps -= 1
        elif gaps:
            for _ in range(gaps):
                self.inter_token.labels(record.model).observe((now - previous_at) / gaps)
        record.completion_tokens += new
        self.generated_tokens.labels(record.model).inc(new)

    def observe_client_timeout(self, record: RequestRecord) -> None:
        """Count a stream whose client stopped reading, once, however many ways it was caught."""
        if not record.client_timed_out:
            record.client_timed_out = True
            self.client_timeouts.labels(record.model or "none").inc()

    def observe_prompt(self, record: RequestRecord, prompt_tokens: int) -> None:
        record.prompt_tokens = prompt_tokens
        self.prompt_tokens.labels(record.model).inc(prompt_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
