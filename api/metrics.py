"""Prometheus metrics of one app instance (its own registry, so several apps in one process never clash)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _Callback(Collector):
    """A gauge family computed at scrape time (e.g. open regressions by label, read from the DB)."""

    def __init__(self, name: str, doc: str, label: str, read: Callable[[], dict[str, float]]) -> None:
        self.name, self.doc, self.label, self.read = name, doc, label, read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.doc, labels=[self.label])
        for value, count in sorted(self.read().items()):
            family.add_metric([value], count)
        yield family


class Metrics:
    """Every metric the service exports; components update them, ``GET /metrics`` renders the registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.spans_received = Counter("spanprism_spans_received", "Spans received by the OTLP receiver and uploads.",
                                      registry=r)  # fmt: skip
        self.spans_stored = Counter("spanprism_calls_stored", "LLM calls stored.", registry=r)
        self.spans_quarantined = Counter("spanprism_spans_quarantined", "Records quarantined.", registry=r)
        self.requests_rejected = Counter("spanprism_otlp_rejected_requests", "OTLP requests answered 4xx/5xx.",
                                         ["code"], registry=r)  # fmt: skip
        self.queue_depth = Gauge("spanprism_ingest_queue_spans", "Spans waiting for the writer.", registry=r)
        self.job_seconds = Histogram("spanprism_job_duration_seconds", "Attribution pass duration.", ["kind"],
                                     buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800), registry=r)  # fmt: skip
        self.job_runs = Counter("spanprism_job_runs", "Attribution passes by kind and status.", ["kind", "status"],
                                registry=r)  # fmt: skip
        self.alerts = Counter("spanprism_alert_deliveries", "Alert delivery attempts by kind and outcome.",
                              ["kind", "outcome"], registry=r)  # fmt: skip

    def gauge_callback(self, name: str, doc: str, label: str, read: Callable[[], dict[str, float]]) -> None:
        """Register a gauge family whose values ``read()`` returns at each scrape."""
        self.registry.register(_Callback(name, doc, label, read))
