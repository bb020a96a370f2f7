"""Ingest's error hierarchy."""


class IngestError(Exception):
    """Base of every error ingest raises on purpose."""


class InvalidBatch(IngestError):
    """The body is not a batch at all (malformed JSON, wrong shape): nothing is per-ping."""


class BrokerUnavailable(IngestError):
    """Kafka did not acknowledge in time; the client should retry later (HTTP 503)."""
