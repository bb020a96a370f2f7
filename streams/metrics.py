"""Streams' Prometheus metrics, on a registry of the app's own."""

from prometheus_client import CollectorRegistry, Counter, Histogram

from runtime.request_metrics import RequestMetrics, process_metrics

# Freshness, from a second (the live pipeline) to the 10 minutes a buffered ping may be late.
FRESHNESS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class StreamsMetrics:
    """The stream's Prometheus metrics: batches, pings by outcome, flush time, dead letters,
    aggregates, its pages' requests."""

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
        self.aggregate_minutes = Counter(
            "streams_aggregate_minutes",
            "Driver minutes changed, by path: increments, or an exact recount (late pings)",
            ["path"],
            registry=self.registry,
        )
        for path in ("increment", "recount"):
            self.aggregate_minutes.labels(path)
        self.flush_latency = Histogram(
            "streams_flush_seconds",
            "Time to write one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        # Freshness (docs/ops.md): how old a record's newest ping is when its rows commit,
        # from the device's fix (delays on the phone included) and from ingest's receipt
        # (ours only). One observation per record, not per ping: cheaper, and a record's
        # pings are stored together.
        self.fix_to_stored = Histogram(
            "streams_fix_to_stored_seconds",
            "From a record's newest fix to its rows committed",
            buckets=FRESHNESS_BUCKETS,
            registry=self.registry,
        )
        self.received_to_stored = Histogram(
            "streams_received_to_stored_seconds",
            "From ingest's receipt of a record to its rows committed",
            buckets=FRESHNESS_BUCKETS,
            registry=self.registry,
        )
        self.requests = RequestMetrics(self.registry)
        process_metrics(self.registry)
