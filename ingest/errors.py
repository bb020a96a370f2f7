"""Ingest's error hierarchy (mapped to HTTP answers in ingest/http_errors.py)."""


class IngestError(Exception):
    """Base of every error ingest raises on purpose."""


class InvalidBatch(IngestError):
    """The body is not a batch at all (malformed JSON, wrong shape): nothing is per-ping."""


class NoValidPing(IngestError):
    """Every ping of the batch was refused; `rejected` says why, per ping."""

    def __init__(self, rejected: list[dict[str, object]]) -> None:
        super().__init__("no valid ping in the batch")
        self.rejected = rejected


class BrokerUnavailable(IngestError):
    """Kafka did not acknowledge in time; the client should retry later (HTTP 503)."""


class Backpressure(IngestError):
    """Too many requests are waiting for Kafka already (HTTP 503)."""


class RateLimited(IngestError):
    """The driver is over its rate (HTTP 429 with Retry-After)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("rate limit exceeded")
        self.retry_after_s = retry_after_s


class UnknownDevice(IngestError):
    """An OsmAnd fix from a device no driver has (HTTP 403): nothing is stored."""


class DevicesUnavailable(IngestError):
    """The device registry is not read yet (HTTP 503): the broker has not answered."""
