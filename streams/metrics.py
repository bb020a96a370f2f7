"""Streams' Prometheus metrics, on a registry of the app's own."""

from prometheus_client import CollectorRegistry, Counter, Histogram


class StreamsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.records = Counter(
            "streams_records", "pings.v1 records processed", registry=self.registry
        )
        self.pings = Counter(
            "streams_pings_written", "Pings written to history", registry=self.registry
        )
        self.poison = Counter("streams_poison", "Records sent to the DLQ", registry=self.registry)
        self.flagged = Counter(
            "streams_pings_flagged",
            "Pings kept in history but flagged",
            ["flag"],
            registry=self.registry,
        )
        self.batch_failures = Counter(
            "streams_batch_failures",
            "Failed attempts at a batch's write or sends (retried; the batch stays unacked)",
            ["step", "kind"],
            registry=self.registry,
        )
        for step in ("write", "send"):
            for kind in ("transient", "unexpected"):
                self.batch_failures.labels(step, kind)
        self.flush_latency = Histogram(
            "streams_flush_seconds",
            "Time to write one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
