"""`GET /admin/stats`: per-model figures from the counters that feed /metrics, rates over the recent window."""

from __future__ import annotations

from server.api.admin.stats import WINDOW_S, StatsWindow, Totals, admin_stats
from tests.api.openai.test_routes import CHAT, HELLO


def test_stats_count_requests_tokens_loads_and_events(client):
    first = client.get("/admin/stats").json()
    assert first["object"] == "admin.stats" and first["window_s"] is None
    rows = {row["id"]: row for row in first["data"]}
    assert list(rows) == ["fake-model", "other-model"]
    assert rows["fake-model"]["requests_per_s"] is None and rows["fake-model"]["loaded"] is False

    assert client.post(CHAT, json=HELLO).status_code == 200
    second = client.get("/admin/stats").json()
    assert second["window_s"] > 0
    row = {row["id"]: row for row in second["data"]}["fake-model"]
    assert row["loaded"] is True and row["loads"] == 1 and row["restarts"] == 0
    assert row["requests_total"] == 1 and row["generated_tokens_total"] == 4 and row["prompt_tokens_total"] > 0
    assert row["requests_per_s"] > 0 and row["generated_tokens_per_s"] > 0 and row["ttft_mean_s"] >= 0
    assert row["queue_depth"] == 0 and row["active_sequences"] == 0  # read from the live engine
    assert [(e["model"], e["data"]["status"]) for e in second["events"]] == [
        ("fake-model", "loading"),
        ("fake-model", "loaded"),
    ]
    metrics = client.get("/metrics").text  # the same counters
    assert 'slm_generated_tokens_total{model="fake-model"} 4.0' in metrics


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rates_are_over_the_recent_window_else_since_the_last_answer():
    clock = Clock()
    window = StatsWindow(clock)
    assert window.base_for(Totals(at=0.0, requests={"a": 10})) is None
    window.base_for(Totals(at=5.0, requests={"a": 20}))
    base = window.base_for(current := Totals(at=5.0 + WINDOW_S, requests={"a": 40}))
    assert base is not None and base.at == 5.0  # the oldest answer within the window
    stats = admin_stats(["a"], ["a"], current, base, {}, {}, [])
    assert stats.data[0].requests_per_s == 2.0 and stats.window_s == WINDOW_S
    assert stats.data[0].queue_depth is None  # no counters from its worker
    late = window.base_for(Totals(at=1000.0, requests={"a": 40}))
    assert late is not None and late.at == 5.0 + WINDOW_S  # nothing recent: the latest earlier answer


def test_the_mean_time_to_first_token_is_over_the_window():
    base = Totals(at=0.0, ttft_sum={"a": 10.0}, ttft_count={"a": 10})
    current = Totals(at=2.0, ttft_sum={"a": 10.5}, ttft_count={"a": 12})
    assert admin_stats(["a"], [], current, base, {}, {}, []).data[0].ttft_mean_s == 0.25
    idle = Totals(at=4.0, ttft_sum={"a": 10.5}, ttft_count={"a": 12})
    assert admin_stats(["a"], [], idle, current, {}, {}, []).data[0].ttft_mean_s is None
