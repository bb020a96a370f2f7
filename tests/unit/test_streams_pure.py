"""The pure stream steps: decoding (poison separated out) and row mapping."""

import uuid
from datetime import UTC, datetime

import orjson

from schemas.pings import Ping, PingBatchRecord
from streams.decode import split_batch

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
