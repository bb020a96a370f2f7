"""Which advisory locks a batch takes: the Kafka partitions of `pings.v1` whose drivers it
writes. Ingest keys every record by its driver, so a driver's records all live in one
partition, and one writer per partition at a time (rebalance overlaps included) is one
writer per driver: its latest position and its aggregates are never written by two
transactions at once. At most one lock per partition, whatever the batch's size."""

from collections.abc import Iterable

from runtime import kafka
from streams.decode import Incoming


def key_partition(driver_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2 of the key) gives the driver."""
    return kafka.key_partition(driver_id.encode(), partitions)


def partition_lock(partition: int) -> str:
    """The advisory lock's name for one partition (hashed to its key by the sink)."""
    return f"pings-partition:{partition}"


def lock_names(batch: Iterable[Incoming], partitions: int) -> list[str]:
    """Each partition's lock name once (the sink takes them in key order: no deadlocks). A
    record found outside its driver's partition (produced by hand) takes its driver's
    partition as well, so it is serialised with that driver's other writers."""
    names = set()
    for incoming in batch:
        names.add(key_partition(incoming.record.driver_id, partitions))
        if incoming.partition is not None:
            names.add(incoming.partition)
    return [partition_lock(n) for n in sorted(names)]
