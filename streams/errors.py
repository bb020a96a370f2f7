"""Streams' error hierarchy."""


class StreamsError(Exception):
    """Base of every error the stream raises on purpose."""


class InvalidMessage(StreamsError):
    """A record that can never be processed (undecodable, wrong schema): it goes to the DLQ."""


class SinkUnavailable(StreamsError):
    """The database refused or timed out; the batch is retried, offsets stay put."""
