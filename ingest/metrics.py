"""Ingest's Prometheus metrics, on a registry of the app's own (no global state)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    """Ingest's Prometheus metrics: pings accepted and rejected by reason, rate limiting, 503s by
    cause, requests in flight."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.accepted = Counter(
            "ingest_pings_accepted", "Pings acknowledged by Kafka", registry=self.registry
        )
        self.rejected = Counter(
            "ingest_pings_rejected",
            "Pings refused by validation",
            ["reason"],
            registry=self.registry,
        )
        self.unavailable = Counter(
            "ingest_unavailable", "Requests answered 503", ["cause"], registry=self.registry
        )
        self.rate_limited = Counter(
            "ingest_rate_limited", "Requests answered 429", registry=self.registry
        )
        self.rate_limit_unchecked = Counter(
            "ingest_rate_limit_fail_open",
            "Requests let through unchecked because Redis was unavailable",
            registry=self.registry,
        )
        self.rate_limit_sync_failures = Counter(
            "ingest_rate_limit_sync_failures",
            "Syncs of the local rate limit with Redis that failed (limits stayed per process)",
            registry=self.registry,
        )
        self.unknown_devices = Counter(
            "ingest_unknown_devices",
            "OsmAnd requests refused: the device is not registered",
            registry=self.registry,
        )
        self.device_records_failed = Counter(
            "ingest_device_records_failed",
            "Records of the device registry that could not be read (skipped)",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "ingest_produce_in_flight", "Requests waiting for a Kafka ack", registry=self.registry
        )
        self.produce_latency = Histogram(
            "ingest_produce_latency_seconds",
            "Time from produce to broker ack",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
            registry=self.registry,
        )
        self.producers_replaced = Gauge(
            "ingest_producers_replaced",
            "Kafka producers discarded after a fatal error and replaced",
            registry=self.registry,
        )
