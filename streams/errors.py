"""Streams' error hierarchy."""


class StreamsError(Exception):
    """Base of every error the stream raises on purpose."""


class InvalidMessage(StreamsError):
    """A record that can never be processed (undecodable, wrong schema): it goes to the DLQ."""


class SinkUnavailable(StreamsError):
    """The database refused or timed out (connection, lock or statement timeout,
    serialization failure): transient, so the batch is retried and offsets stay put."""


class BadData(StreamsError):
    """The database refused the batch's data (a NUL byte, a value out of range): retrying
    the same rows fails the same way, so the offending record is isolated and dead-lettered."""


class SendFailed(StreamsError):
    """Kafka did not acknowledge a dead-letter or position record in time (transient)."""
