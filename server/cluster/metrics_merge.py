"""One Prometheus exposition from the replicas' own: each sample labelled with the replica it came from, each
family described once (a scraper refuses a family whose HELP/TYPE lines repeat)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

REPLICA_LABEL = "replica"


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


REPORTED = "slm_replica_metrics_timestamp_seconds"


def merge_expositions(by_replica: Mapping[str, str], taken: Mapping[str, float] | None = None) -> bytes:
    """The replicas' expositions (replica id -> text) as one, every sample with a `replica` label; with `taken`
    (replica id -> Unix time its numbers were read), a gauge saying how fresh each replica's numbers are."""
    families: dict[str, Metric] = {}
    if taken:
        reported = families[REPORTED] = Metric(REPORTED, "When the replica's metrics were read (Unix time)", "gauge")
        for replica, when in sorted(taken.items()):
            reported.add_sample(REPORTED, {REPLICA_LABEL: replica}, when)
    for replica, text in sorted(by_replica.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labels = {**sample.labels, REPLICA_LABEL: replica}
                merged.samples.append(sample._replace(labels=labels))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))  # type: ignore[arg-type]
    return generate_latest(registry)
