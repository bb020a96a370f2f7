"""The pure stream steps: decoding (poison separated out) and row mapping."""

import uuid
from datetime import UTC, datetime

import orjson
from aiokafka.partitioner import DefaultPartitioner

from schemas.pings import Ping, PingBatchRecord
from schemas.pings_wire import from_model
from streams.decode import Incoming, split_batch
from streams.locks import key_partition, lock_names
from streams.pipeline import by_pings, flushes

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
    assert [i.record for i in records] == [from_model(good)]
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


def test_a_receipt_at_the_ends_of_the_calendar_is_dead_lettered_not_raised() -> None:
    # received_at - 7 days (or + 5 min) overflows Python's datetime: an OverflowError
    # out of decoding would stop the worker on every replay of the batch.
    messages = []
    for moment in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
        doc = record().model_dump(mode="json") | {"received_at": moment}
        doc["pings"][0]["ts"] = moment
        messages.append((None, orjson.dumps(doc)))
    records, poison = split_batch(messages)
    assert records == []
    assert [p.error for p in poison if "out of range" in p.error] == [p.error for p in poison]
    assert len(poison) == 2


def incoming(driver: str, partition: int | None, pings: int = 1) -> Incoming:
    return Incoming(None, b"", from_model(record(driver, pings)), None, partition)


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
    runs = by_pings(batch, 6)
    assert [[len(i.record.pings) for i in f] for f in runs] == [[3, 3], [3], [10], [1, 1]]
    assert [i for f in runs for i in f] == batch
    assert by_pings([], 6) == []


def test_flushes_split_a_partition_only_when_it_alone_is_too_large() -> None:
    small = [incoming(f"s{p}", p, pings=2) for p in (0, 1, 2, 0, 1, 2)]  # 4 pings each
    large = [incoming("l", 5, pings=3) for _ in range(4)]  # 12 pings: split in two
    cut = flushes(small + large, 6)
    assert sorted(len(f) for f in cut) == [2, 2, 2, 2, 2]
    for flush in cut:
        assert sum(len(i.record.pings) for i in flush) <= 6
        assert len({i.partition for i in flush}) == 1  # 4 + 4 > 6: no two small ones share
    assert sorted(map(id, (i for f in cut for i in f))) == sorted(map(id, small + large))
    # Each partition's records keep their order; the two parts of partition 5 are apart.
    assert [i for f in cut for i in f if i.partition == 5] == large
    fives = [n for n, f in enumerate(cut) if f[0].partition == 5]
    assert fives[1] - fives[0] > 1
    # Small partitions share a flush when they fit.
    assert len(flushes(small[:3], 4)) == 2 and len(flushes(small[:3], 6)) == 1
