"""The pure stream steps: decoding (poison separated out) and row mapping."""

import uuid
from datetime import UTC, datetime

from schemas.pings import Ping, PingBatchRecord
from streams.decode import split_batch
from streams.rows import PING_COLUMNS, PING_TYPES, ping_rows

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
    assert records == [good]
    assert [(p.key, p.value) for p in poison] == [(b"k", b"\xff\x00garbage"), (None, wrong_schema)]
    assert all(p.error for p in poison)


def test_rows_follow_the_column_order_and_carry_the_driver_from_the_record() -> None:
    rec = record("drv-9", n=3)
    rows = ping_rows([rec])
    assert len(rows) == 3
    assert len(PING_COLUMNS) == len(PING_TYPES) == len(rows[0])
    first = dict(zip(PING_COLUMNS, rows[0], strict=True))
    assert first["driver_id"] == "drv-9"
    assert first["ping_id"] == rec.pings[0].ping_id
    assert first["received_at"] == NOW
    assert first["flags"] == []
