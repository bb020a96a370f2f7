"""The notifier's Prometheus metrics, on a registry of the process's own."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from notifier.send_queue import Budget

MESSAGE_KINDS = (
    "snapshot",
    "job.created",
    "job.status",
    "job.completed",
    "job.arrived",
    "position",
    "resync",
    "ping",
)


class NotifierMetrics:
    """The notifier's Prometheus metrics: connections, subscriptions, messages sent by type, closes
    by code, resumes by source, the send queues."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.connections = Gauge(
            "notifier_connections", "Open WebSocket connections", registry=registry
        )
        self.connections_limit = Gauge(
            "notifier_connections_limit",
            "Connections the process takes at most (past it, new ones are refused)",
            registry=registry,
        )
        self.subscriptions = Gauge(
            "notifier_subscriptions", "Job subscriptions of the open connections", registry=registry
        )
        self.sent = Counter(
            "notifier_messages_sent", "Messages written to clients", ["type"], registry=registry
        )
        for kind in MESSAGE_KINDS:
            self.sent.labels(kind)
        self.resumes = Counter(
            "notifier_resumes",
            "Subscriptions with last_seq, by where the missed events came from",
            ["source"],  # none (nothing missed), redis, postgres
            registry=registry,
        )
        self.resyncs = Counter(
            "notifier_resyncs", "Resumes answered with resync", ["reason"], registry=registry
        )
        self.gap_fills = Counter(
            "notifier_gap_fills",
            "Catch-ups of a live subscriber whose next event arrived before the one it lacked",
            registry=registry,
        )
        self.slow_disconnects = Counter(
            "notifier_slow_consumer_disconnects",
            "Connections closed because their unsent output passed the limit",
            registry=registry,
        )
        self.queued_bytes = Gauge(
            "notifier_queued_bytes",
            "Bytes waiting in all the process's send queues together",
            registry=registry,
        )
        self.queued_bytes_limit = Gauge(
            "notifier_queued_bytes_limit",
            "The process's bound on them: past it, the slowest connection is closed",
            registry=registry,
        )
        self.closes = Counter(
            "notifier_closes",
            "Connections the server closed, by close code",
            ["code"],
            registry=registry,
        )
        self.commit_to_send = Histogram(
            "notifier_commit_to_send_seconds",
            "From a job event's commit (a position's fix) to its frame written to a client",
            ["type"],  # event, position
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
            registry=registry,
        )
        # Resolved once: a fan-out counts a thousand frames at a time.
        self._sent_by_kind = {kind: self.sent.labels(kind) for kind in MESSAGE_KINDS}
        self._delay = {
            "event": self.commit_to_send.labels("event"),
            "position": self.commit_to_send.labels("position"),
        }
        self.consumed = Counter(
            "notifier_records_consumed", "Kafka records read", ["topic"], registry=registry
        )
        self.undecodable = Counter(
            "notifier_records_undecodable",
            "Kafka records skipped as undecodable",
            ["topic"],
            registry=registry,
        )
        self.poison = Counter(
            "notifier_records_failed",
            "Kafka records skipped because handling them raised (logged with the error)",
            ["topic"],
            registry=registry,
        )
        self.log_failures = Counter(
            "notifier_log_failures",
            "Redis log calls that failed or timed out (resumes fall back to PostgreSQL)",
            ["op"],
            registry=registry,
        )

    def watch(self, budget: Budget) -> None:
        """The send queues' bytes, read from the process's budget at each scrape."""
        self.queued_bytes.set_function(lambda: budget.used)
        self.queued_bytes_limit.set(budget.limit)

    def count_sent(self, kind: str, delay_s: float | None) -> None:
        """A frame written; `delay_s` since its commit (an event) or fix (a position)."""
        (self._sent_by_kind.get(kind) or self.sent.labels(kind)).inc()
        if delay_s is not None:
            self._delay["position" if kind == "position" else "event"].observe(max(delay_s, 0.0))
