"""GPS devices on Traccar's OsmAnd protocol through the edge: requests replayed as Traccar
Client sends them, the registry (`telemetry device`), and the pings in the database."""

import functools
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
import psycopg
import pytest

from infra import devices, postgres
from infra.stack import Stack
from tests.support.stack import metric, wait_for

pytestmark = pytest.mark.integration


def query_fix(device_id: str, at: datetime) -> dict[str, str]:
    # Traccar Client's query form: knots, percent battery, Unix seconds.
    return {
        "id": device_id, "timestamp": str(int(at.timestamp())), "lat": "12.971599",
        "lon": "77.594566", "speed": "12.5", "bearing": "91.0", "altitude": "920.0",
        "accuracy": "9.0", "batt": "76.0",
    }  # fmt: skip


def json_fix(device_id: str, at: datetime) -> dict[str, object]:
    # Its JSON form (and a background-geolocation SDK's): m/s, battery 0-1.
    coords = {"latitude": 12.9721, "longitude": 77.5950, "speed": 6.1, "heading": 180.0,
              "accuracy": 5.0, "altitude": 921.0}  # fmt: skip
    location = {"timestamp": at.isoformat(), "coords": coords, "is_moving": True,
                "battery": {"level": 0.75, "is_charging": False}}  # fmt: skip
    return {"device_id": device_id, "location": location}


def stored(stack: Stack, driver_id: str) -> list[tuple[datetime, float | None, float | None]]:
    with psycopg.connect(postgres.dsn(stack.config, "primary")) as conn:
        rows = conn.execute(
            "SELECT ts, speed_mps, battery_pct FROM pings WHERE driver_id = %s ORDER BY ts",
            [driver_id],
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def answers(url: str, fix: dict[str, str], status: int) -> bool | None:
    return httpx.get(url + "/osmand", params=fix).status_code == status or None


def accepted(stack: Stack) -> float:
    return sum(metric(url, "ingest_pings_accepted_total") for url in stack.urls("ingest"))


def test_a_registered_devices_fixes_become_its_drivers_pings(stack: Stack) -> None:
    device_id, driver_id = (
        f"8675309{uuid.uuid4().int % 10**8:08d}",
        f"drv-dev-{uuid.uuid4().hex[:6]}",
    )
    public = stack.public_url()
    assert public is not None
    now = datetime.now(UTC).replace(microsecond=0)
    # Unknown: refused at every ingest process, and nothing stored.
    before = accepted(stack)
    r = httpx.get(public + "/osmand", params=query_fix(device_id, now))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert accepted(stack) == before

    devices.add(stack.config, device_id, driver_id)
    assert devices.listing(stack.config)[device_id].driver_id == driver_id
    # Every ingest process follows the registry: each answers 200 once it has the device.
    for i, url in enumerate(stack.urls("ingest")):
        fix = query_fix(device_id, now - timedelta(seconds=60 + i))
        wait_for(functools.partial(answers, url, fix, 200), 15)
    # Through the edge, in the forms Traccar Client sends.
    sent = [
        httpx.get(public + "/osmand", params=query_fix(device_id, now - timedelta(seconds=30))),
        httpx.post(
            public + "/osmand",
            content=urlencode(query_fix(device_id, now - timedelta(seconds=20))),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        httpx.post(public + "/osmand", json=json_fix(device_id, now - timedelta(seconds=10))),
    ]
    assert [r.status_code for r in sent] == [200, 200, 200], [r.text for r in sent]
    expected = len(stack.urls("ingest")) + 3

    def all_stored() -> list[tuple[datetime, float | None, float | None]] | None:
        rows = stored(stack, driver_id)
        return rows if len(rows) >= expected else None

    rows = wait_for(all_stored, 60)
    assert len(rows) == expected  # under the device's driver, each fix once
    by_ts = {ts: (speed, battery) for ts, speed, battery in rows}
    speed, battery = by_ts[now - timedelta(seconds=30)]
    assert speed == pytest.approx(12.5 * 1852 / 3600, rel=1e-3) and battery == pytest.approx(76.0)
    speed, battery = by_ts[now - timedelta(seconds=10)]
    assert speed == pytest.approx(6.1, rel=1e-3) and battery == pytest.approx(75.0)

    # Removed: refused again, everywhere.
    assert devices.remove(stack.config, device_id)
    assert device_id not in devices.listing(stack.config)
    for url in stack.urls("ingest"):
        fix = query_fix(device_id, now - timedelta(seconds=5))
        wait_for(functools.partial(answers, url, fix, 403), 15)
    assert not devices.remove(stack.config, device_id)  # not registered (any more)
