"""Kafka topic names (docs/architecture.md, "Topics"): a fixed interface, versioned in the name."""

from typing import Final

PINGS: Final = "pings.v1"
POSITIONS: Final = "positions.v1"
JOB_EVENTS: Final = "job-events.v1"
TASKS: Final = "tasks.v1"
# GPS devices registered to drivers: compacted, keyed by device id (schemas/devices.py).
DEVICES: Final = "devices.v1"

# Partition count of the driver-keyed topics; per-driver state relies on it staying fixed.
DRIVER_TOPIC_PARTITIONS: Final = 12


def dlq(topic: str) -> str:
    """The dead-letter topic of `topic`: poison messages land there with their error."""
    return f"{topic}.dlq"


# The consumer groups our services commit offsets in, with the topics each reads (the
# notifier reads without a group): what lag is measured for.
STREAMS_GROUP: Final = "telemetry-streams"
PHOTO_WORKER_GROUP: Final = "telemetry-photo-worker"
CONSUMER_GROUPS: Final[dict[str, tuple[str, ...]]] = {
    STREAMS_GROUP: (PINGS,),
    PHOTO_WORKER_GROUP: (TASKS,),
}
