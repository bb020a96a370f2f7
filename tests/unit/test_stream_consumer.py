"""The consumer's pure parts: what a fetched batch hands to the processor and commits."""

from aiokafka import ConsumerRecord, TopicPartition

from runtime.logging import REQUEST_ID_KAFKA_HEADER
from streams.consumer import Batch, merge, next_offsets, raw_records, request_id


def record(
    partition: int, offset: int, headers: list[tuple[str, bytes]] | None = None
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="pings.v1",
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=f"driver-{partition}".encode(),
        value=f"value-{offset}".encode(),
        checksum=None,
        serialized_key_size=8,
        serialized_value_size=8,
        headers=headers or [],
    )


def test_a_batch_hands_every_record_in_partition_order_and_commits_each_partitions_next() -> None:
    p0, p3 = TopicPartition("pings.v1", 0), TopicPartition("pings.v1", 3)
    batch: Batch = {
        p0: [record(0, 7, [(REQUEST_ID_KAFKA_HEADER, b"req-1")]), record(0, 8)],
        p3: [record(3, 41)],
    }
    assert raw_records(batch) == [
        (b"driver-0", b"value-7", "req-1", 0),
        (b"driver-0", b"value-8", None, 0),
        (b"driver-3", b"value-41", None, 3),
    ]
    assert next_offsets(batch) == {p0: 9, p3: 42}
    assert next_offsets({p0: []}) == {}


def test_merging_fetches_keeps_offset_order_and_counts_what_it_added() -> None:
    p0, p1 = TopicPartition("pings.v1", 0), TopicPartition("pings.v1", 1)
    batch: Batch = {p0: [record(0, 1)]}
    assert merge(batch, {p0: [record(0, 2), record(0, 3)], p1: [record(1, 5)]}) == 3
    assert [r.offset for r in batch[p0]] == [1, 2, 3]
    assert next_offsets(batch) == {p0: 4, p1: 6}
    assert merge(batch, {}) == 0


def test_the_request_id_header_is_read_and_others_ignored() -> None:
    assert request_id([("other", b"x"), (REQUEST_ID_KAFKA_HEADER, b"abc")]) == "abc"
    assert request_id([(REQUEST_ID_KAFKA_HEADER, b"\xff")]) == "\ufffd"
    assert request_id([]) is None
    assert request_id(None) is None
