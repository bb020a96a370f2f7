"""The stream's cleaning step: order, late and teleport flags, duplicates, moved positions."""

import uuid
from datetime import UTC, datetime, timedelta

from runtime.geo import destination
from schemas.pings_wire import WirePing, WireRecord
from streams.clean import FUTURE, LATE, TELEPORT, CleanBatch, CleanPing, Position, clean
from streams.rows import PING_COLUMNS, PING_TYPES, h3_cell, ping_rows

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ORIGIN = (12.97, 77.59)


def ping(seconds: float, metres_east: float = 0.0, ping_id: uuid.UUID | None = None) -> WirePing:
    lat, lon = destination(*ORIGIN, 90.0, metres_east)
    return WirePing(ping_id or uuid.uuid4(), T0 + timedelta(seconds=seconds), lat, lon)


def record(driver: str, *pings: WirePing, received_at: datetime = T0) -> WireRecord:
    return WireRecord(driver, received_at, list(pings))


TOLERANCE = timedelta(seconds=30)


def clean_(records: list[WireRecord], latest: dict[str, Position]) -> CleanBatch:
    return clean(records, latest, TOLERANCE)


def flags_by_second(batch_pings: list[CleanPing]) -> dict[float, tuple[str, ...]]:
    return {(c.ping.ts - T0).total_seconds(): c.flags for c in batch_pings}


def test_out_of_order_pings_of_one_batch_are_put_in_time_order_not_flagged() -> None:
    batch = clean_([record("d", ping(3, 30), ping(1, 10)), record("d", ping(2, 20))], {})
    assert [(c.ping.ts - T0).total_seconds() for c in batch.pings] == [1, 2, 3]
    assert all(c.moves_position for c in batch.pings)
    assert (batch.moved["d"].ping.ts - T0).total_seconds() == 3


def test_a_ping_older_than_the_stored_position_is_late_and_never_moves_it() -> None:
    stored = {"d": Position(T0 + timedelta(seconds=10), *ORIGIN)}
    batch = clean_([record("d", ping(5, 0), ping(10, 0))], stored)
    assert flags_by_second(batch.pings) == {5: (LATE,), 10: (LATE,)}
    assert batch.moved == {}


def test_above_100_mps_is_a_teleport_and_the_next_ping_compares_to_the_last_valid() -> None:
    batch = clean_([record("d", ping(0, 0), ping(1, 5000), ping(2, 20))], {})
    assert flags_by_second(batch.pings) == {0: (), 1: (TELEPORT,), 2: ()}
    assert (batch.moved["d"].ping.ts - T0).total_seconds() == 2
    # Just under the limit is fine: 99 m in one second.
    assert all(c.moves_position for c in clean_([record("e", ping(0, 0), ping(1, 99))], {}).pings)


def test_the_stored_position_is_the_reference_for_the_first_ping() -> None:
    stored = {"d": Position(T0, *ORIGIN)}
    batch = clean_([record("d", ping(1, 500))], stored)
    assert batch.pings[0].flags == (TELEPORT,)
    assert batch.moved == {}


def test_a_ping_id_twice_in_the_batch_is_kept_once() -> None:
    same = uuid.uuid4()
    batch = clean_([record("d", ping(1, 0, same)), record("d", ping(1, 0, same))], {})
    assert len(batch.pings) == 1


def test_drivers_are_independent() -> None:
    stored = {"a": Position(T0 + timedelta(seconds=100), *ORIGIN)}
    batch = clean_([record("a", ping(1)), record("b", ping(1))], stored)
    assert {c.driver_id: c.flags for c in batch.pings} == {"a": (LATE,), "b": ()}
    assert set(batch.moved) == {"b"}


def test_rows_carry_flags_and_the_h3_cell() -> None:
    batch = clean_([record("d", ping(0), ping(1, 5000))], {})
    rows = [dict(zip(PING_COLUMNS, row, strict=True)) for row in ping_rows(batch.pings)]
    assert len(PING_TYPES) == len(PING_COLUMNS)
    assert [r["flags"] for r in rows] == [[], [TELEPORT]]
    assert rows[0]["h3_cell"] == h3_cell(*ORIGIN)
    assert rows[0]["h3_cell"] != rows[1]["h3_cell"]  # 5 km apart


def test_a_ping_ahead_of_its_receipt_is_future_and_moves_nothing() -> None:
    # Received at T0; 31 s ahead is past the tolerance, 30 s is not.
    batch = clean_([record("d", ping(-10, 0), ping(31, 100), ping(30, 50))], {})
    assert flags_by_second(batch.pings) == {-10: (), 30: (), 31: (FUTURE,)}
    assert (batch.moved["d"].ping.ts - T0).total_seconds() == 30
    assert [c.counted for c in batch.pings] == [True, True, False]


def test_a_future_ping_does_not_freeze_the_driver() -> None:
    # Four minutes ahead, then real pings: the real ones still move the position.
    ahead = clean_([record("d", ping(240, 0))], {})
    assert ahead.moved == {}
    later = clean_([record("d", ping(5, 10), received_at=T0 + timedelta(seconds=5))], {})
    assert later.pings[0].flags == ()


def test_late_pings_count_in_aggregates_teleports_do_not() -> None:
    stored = {"d": Position(T0 + timedelta(seconds=10), *ORIGIN)}
    batch = clean_([record("d", ping(5, 0), ping(11, 5000))], stored)
    assert flags_by_second(batch.pings) == {5: (LATE,), 11: (TELEPORT,)}
    assert [c.counted for c in batch.pings] == [True, False]


def test_a_replayed_batch_that_set_the_position_publishes_it_again() -> None:
    first = clean_([record("d", ping(1, 0), ping(2, 10))], {})
    moved = first.moved["d"].ping
    stored = {"d": Position(moved.ts, moved.lat, moved.lon, moved.ping_id)}
    replay = clean_([record("d", ping(1, 0), first.moved["d"].ping)], stored)
    assert replay.moved["d"].ping.ping_id == moved.ping_id
    # A batch that did not set the stored position publishes nothing.
    other = clean_([record("d", ping(1, 0))], stored)
    assert other.moved == {}
