"""The pure stream steps: decoding (poison separated out) and row mapping."""

import uuid
from datetime import UTC, datetime

import orjson
from aiokafka.partitioner import DefaultPartitioner

from schemas.pings import Ping, PingBatchRecord
from streams.decode import Incoming, split_batch
from streams.locks import key_partition, lock_names
from streams.pipeline import by_pings

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def record(driver: str = "drv-1", n: int = 2) -> PingBatchRecord:
    pings = [
        Ping(ping_id=uuid.uuid4(), ts=NOW, lat=12.9 + i / 1000, lon=77.5, speed_mps=3.0)
        for i in range(n)
    ]
    return PingBatchRecord(driver_id=driver, received_at=NOW, pings=pings)


def test_good_records_decode_and_poison_is_separated_with_its_bytes() -> None:
    good = record()
    wrong_schema = b'{"v": 1, "driver_id": "x", "received_at": "2026-11-27T12:00:00Z", "pings": []}'
    messages = [
        (b"drv-1", good.model_dump_json().encode()),
        (b"k", b"\xff\x00garbage"),
        (None, wrong_schema),
    ]
    records, poison = split_batch(messages)
    assert [i.record for i in records] == [good]
    assert [(p.key, p.value) for p in poison] == [(b"k", b"\xff\x00garbage"), (None, wrong_schema)]
    assert all(p.error for p in poison)


def test_the_stream_dead_letters_what_ingest_would_have_refused() -> None:
    base = record()
    nul_driver = base.model_dump(mode="json") | {"driver_id": "drv\x00x"}
    year_one = base.model_dump(mode="json")
    year_one["pings"][0]["ts"] = "0001-01-01T00:00:00Z"
    ahead = base.model_dump(mode="json")
    ahead["pings"][0]["ts"] = "2026-11-27T12:05:01Z"  # received_at + 5 min + 1 s
    long_id = base.model_dump(mode="json") | {"driver_id": "d" * 129}
    messages = [(None, orjson.dumps(doc)) for doc in (nul_driver, year_one, ahead, long_id)]
    records, poison = split_batch(messages)
    assert records == []
    assert len(poison) == 4


def incoming(driver: str, partition: int | None, pings: int = 1) -> Incoming:
    return Incoming(None, b"", record(driver, pings), None, partition)


def test_a_batch_locks_its_partitions_once_each_whatever_its_size() -> None:
    drivers = [f"drv-{i}" for i in range(2000)]
    batch = [incoming(d, key_partition(d, 12)) for d in drivers]
    names = lock_names(batch, 12)
    assert len(names) == len(set(names)) == 12  # 2,000 drivers: one lock per partition
    assert lock_names(batch[:1], 12) == [f"pings-partition:{key_partition('drv-0', 12)}"]


def test_the_key_partition_is_kafkas_default_partitioner() -> None:
    # murmur2 of the key, as ingest's producer (and Kafka's Java client) partitions.
    assert key_partition("drv-1", 12) == DefaultPartitioner()(b"drv-1", list(range(12)), [])


def test_a_record_outside_its_drivers_partition_also_takes_the_drivers_partition() -> None:
    home = key_partition("drv-7", 12)
    stray = (home + 5) % 12
    assert sorted(lock_names([incoming("drv-7", stray)], 12)) == sorted(
        f"pings-partition:{p}" for p in (home, stray)
    )
    # Not consumed from Kafka (no partition known): its driver's partition.
    assert lock_names([incoming("drv-7", None)], 12) == [f"pings-partition:{home}"]


def test_flushes_are_bounded_by_pings_and_keep_the_records_order() -> None:
    batch = [incoming(f"d{i}", None, pings=n) for i, n in enumerate([3, 3, 3, 10, 1, 1])]
    flushes = by_pings(batch, 6)
    assert [[len(i.record.pings) for i in f] for f in flushes] == [[3, 3], [3], [10], [1, 1]]
    assert [i for f in flushes for i in f] == batch
    assert by_pings([], 6) == []
