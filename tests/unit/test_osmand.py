"""GPS devices on Traccar's OsmAnd protocol: both forms Traccar Client sends, read into
pings (ingest/osmand.py), and the `/osmand` route over the registry (ingest/fixes.py)."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import orjson
import pytest

from ingest.app import create_app
from ingest.errors import InvalidBatch
from ingest.osmand import KNOT_MPS, from_json, from_query
from runtime.clock import ManualClock
from schemas.pings import PingBatchRecord
from tests.unit.test_ingest_http import FakeDevices, FakeLimiter, FakePublisher, adapters, settings
from tests.unit.test_ingest_http import keys as keys

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
# What Traccar Client sends, by form (its documented parameters).
QUERY = {
    "id": "867530900000001",
    "timestamp": str(int(NOW.timestamp()) - 30),
    "lat": "12.971599",
    "lon": "77.594566",
    "speed": "10.0",
    "bearing": "90.5",
    "altitude": "920.0",
    "accuracy": "12.0",
    "batt": "87.0",
}
JSON_FIX = {
    "device_id": "867530900000001",
    "location": {
        "timestamp": "2026-12-05T11:59:30.000Z",
        "coords": {
            "latitude": 12.971599,
            "longitude": 77.594566,
            "speed": 5.2,
            "heading": 271.0,
            "accuracy": 8.5,
            "altitude": 920.0,
        },
        "is_moving": True,
        "battery": {"level": 0.83, "is_charging": False},
    },
}


def test_the_query_form_becomes_a_ping_in_our_units() -> None:
    fixes = from_query(QUERY, NOW)
    assert fixes.device_id == "867530900000001"
    [ping] = fixes.pings
    assert ping["ts"] == (NOW - timedelta(seconds=30)).isoformat()
    assert (ping["lat"], ping["lon"]) == (12.971599, 77.594566)
    assert ping["speed_mps"] == pytest.approx(10.0 * KNOT_MPS)  # knots to m/s
    assert (ping["heading_deg"], ping["accuracy_m"], ping["battery_pct"]) == (90.5, 12.0, 87.0)
    assert "altitude" not in ping  # a ping has no place for it
    assert from_query(QUERY, NOW).pings[0]["ping_id"] == ping["ping_id"]  # a resend: the same


@pytest.mark.parametrize(
    "timestamp",
    [
        "1796472000",  # Unix seconds
        "1796472000000",  # milliseconds
        "2026-12-05T12:00:00Z",
        "2026-12-05T17:30:00+05:30",
        "2026-12-05 12:00:00",  # UTC
    ],
)
def test_every_time_form_reads_the_same_instant(timestamp: str) -> None:
    fixes = from_query(QUERY | {"timestamp": timestamp}, NOW - timedelta(days=1))
    assert datetime.fromisoformat(fixes.pings[0]["ts"]) == datetime(2026, 12, 5, 12, tzinfo=UTC)


def test_deviceid_location_and_no_timestamp_are_read_as_traccar_reads_them() -> None:
    params = {"deviceid": "tracker-7", "location": "12.5,77.25"}
    [ping] = from_query(params, NOW).pings
    assert (ping["lat"], ping["lon"], ping["ts"]) == (12.5, 77.25, NOW.isoformat())
    assert from_query(params, NOW).device_id == "tracker-7"


def test_the_json_form_becomes_a_ping_in_our_units() -> None:
    fixes = from_json(orjson.dumps(JSON_FIX), NOW)
    [ping] = fixes.pings
    assert fixes.device_id == "867530900000001"
    assert datetime.fromisoformat(ping["ts"]) == NOW - timedelta(seconds=30)
    assert (ping["speed_mps"], ping["heading_deg"], ping["accuracy_m"]) == (5.2, 271.0, 8.5)
    assert ping["battery_pct"] == pytest.approx(83.0)  # 0-1 to percent


def test_a_phones_unknown_readings_are_left_out_and_a_batch_is_read_whole() -> None:
    unknown = {"latitude": 12.9, "longitude": 77.6, "speed": -1, "heading": -1, "accuracy": 5}
    location = {"timestamp": "2026-12-05T11:59:00Z", "coords": unknown, "battery": {"level": -1}}
    second = JSON_FIX["location"]
    fixes = from_json(orjson.dumps({"device_id": "p1", "location": [location, second]}), NOW)
    assert len(fixes.pings) == 2
    first = fixes.pings[0]
    assert "speed_mps" not in first and "heading_deg" not in first and "battery_pct" not in first


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lat": "1", "lon": "2"}, "id: missing"),
        ({"id": "d1", "lat": "1"}, "lat and lon"),
        ({"id": "d1", "lat": "north", "lon": "2"}, "lat: not a number"),
        ({"id": "d1", "lat": "nan", "lon": "2"}, "not a finite number"),
        ({"id": "d1", "lat": "1", "lon": "2", "timestamp": "yesterday"}, "timestamp"),
        ({"id": "d1", "lat": "1", "lon": "2", "timestamp": "99999999999999999999"}, "range"),
    ],
)
def test_a_query_it_cannot_read_says_why(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidBatch, match=message):
        from_query(params, NOW)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"location": {}}', b'{"device_id": "d", "location": {"coords": 1}}',
     b'{"device_id": "d", "location": {"coords": {"latitude": 1}}}'],
)  # fmt: skip
def test_a_json_body_it_cannot_read_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidBatch):
        from_json(body, NOW)


# The route, over the registry.

DEVICE, DRIVER = "867530900000001", "drv-osmand"


def client(
    keys: tuple[Path, Path],
    publisher: FakePublisher,
    devices: FakeDevices,
    limiter: FakeLimiter | None = None,
) -> httpx.AsyncClient:
    app = create_app(
        settings(keys[1]),
        adapters(keys[1], publisher, limiter or FakeLimiter(), devices),
        clock=ManualClock(NOW.timestamp()),
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")


def stored(publisher: FakePublisher) -> list[PingBatchRecord]:
    return [PingBatchRecord.model_validate_json(v) for v in publisher.published]


async def test_a_registered_devices_fix_is_stored_as_its_drivers_ping_in_every_form(
    keys: tuple[Path, Path],
) -> None:
    publisher = FakePublisher()
    async with client(keys, publisher, FakeDevices({DEVICE: DRIVER})) as c:
        answers = [
            await c.get("/osmand", params=QUERY),
            await c.post("/osmand", params=QUERY),  # the query on a POST, as older clients
            await c.post(
                "/osmand",
                content=urlencode(QUERY),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            await c.post("/osmand", json=JSON_FIX),
        ]
    assert [(a.status_code, a.content) for a in answers] == [(200, b"")] * 4
    records = stored(publisher)
    assert len(records) == 4 and {r.driver_id for r in records} == {DRIVER}
    assert records[0].pings[0].speed_mps == pytest.approx(10 * KNOT_MPS)
    assert records[3].pings[0].battery_pct == pytest.approx(83.0)


async def test_an_unknown_device_is_refused_and_nothing_is_stored(keys: tuple[Path, Path]) -> None:
    publisher = FakePublisher()
    async with client(keys, publisher, FakeDevices({DEVICE: DRIVER})) as c:
        r = await c.get("/osmand", params=QUERY | {"id": "not-registered"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert publisher.published == []


async def test_before_the_registry_is_read_a_fix_gets_503(keys: tuple[Path, Path]) -> None:
    publisher = FakePublisher()
    async with client(keys, publisher, FakeDevices(None)) as c:
        r = await c.get("/osmand", params=QUERY)
        ready = await c.get("/readyz")
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert ready.status_code == 503 and ready.json()["devices"] is False
    assert publisher.published == []


async def test_a_fix_the_models_refuse_is_422_and_nothing_is_stored(
    keys: tuple[Path, Path],
) -> None:
    publisher = FakePublisher()
    old = str(int((NOW - timedelta(days=8)).timestamp()))
    async with client(keys, publisher, FakeDevices({DEVICE: DRIVER})) as c:
        answers = [
            await c.get("/osmand", params=QUERY | {"lat": "95"}),
            await c.get("/osmand", params=QUERY | {"timestamp": old}),
            await c.get("/osmand", params=QUERY | {"lat": "0", "lon": "0"}),
            await c.get("/osmand", params=QUERY | {"lat": "north"}),
        ]
    assert [a.status_code for a in answers] == [422] * 4
    assert publisher.published == []


async def test_the_drivers_rate_limit_applies_to_its_device(keys: tuple[Path, Path]) -> None:
    publisher = FakePublisher()
    devices = FakeDevices({DEVICE: DRIVER})
    async with client(keys, publisher, devices, FakeLimiter(budget=2)) as c:
        codes = [(await c.get("/osmand", params=QUERY)).status_code for _ in range(3)]
    assert codes == [200, 200, 429] and len(publisher.published) == 2


async def test_a_broker_that_does_not_ack_gets_503_never_200(keys: tuple[Path, Path]) -> None:
    publisher = FakePublisher()
    publisher.fail = True
    async with client(keys, publisher, FakeDevices({DEVICE: DRIVER})) as c:
        r = await c.get("/osmand", params=QUERY)
    assert r.status_code == 503 and publisher.published == []
