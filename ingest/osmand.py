"""Traccar's OsmAnd protocol, pure: the fixes a GPS device or Traccar Client sends, as
the pings of `POST /v1/pings` (docs/devices.md).

Two forms. The query form (GET or POST; in the query string, or, when that is empty, in
a form-encoded body): `id` (or `deviceid`), `lat`, `lon` (or `location=lat,lon`),
`timestamp` (Unix seconds, milliseconds, ISO 8601, or `yyyy-MM-dd HH:mm:ss` in UTC),
`speed` in knots, `bearing` (or `heading`), `altitude`, `accuracy`, `batt` (percent). The
JSON form: `device_id` and a `location` (or a list of them) with `timestamp`, `coords`
(`latitude`, `longitude`, `speed` in m/s, `heading`, `accuracy`, `altitude`),
`battery.level` (0-1) and `is_moving`. Negative speed, heading, accuracy or battery mean
"unknown" (what phones report) and are left out; altitude and `is_moving` have no place
in a ping and are dropped. A fix's `ping_id` is derived from the device, the time and the
position, so a device resending a fix it got no answer for sends the same ping."""

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ingest.errors import InvalidBatch
from schemas.pings import MAX_PINGS_PER_BATCH

KNOT_MPS = 1852.0 / 3600.0
# Unix seconds up to here, milliseconds past it (as Traccar reads them).
SECONDS_UP_TO = 2**31 - 1
# The namespace of the pings derived from fixes.
FIX_NAMESPACE = uuid.UUID("5b0b5a7e-27c9-4a6e-9a4f-0d5e0f1a7c31")
# The query form's parameters (published in the OpenAPI document; others are ignored).
QUERY_PARAMETERS = (
    "id", "deviceid", "lat", "lon", "location", "timestamp", "speed", "bearing", "heading",
    "altitude", "accuracy", "batt",
)  # fmt: skip


# What Traccar Client sends, in each form (the OpenAPI document's examples).
EXAMPLE_QUERY = {
    "id": "867530900000001", "timestamp": "1796472000", "lat": "12.971599",
    "lon": "77.594566", "speed": "10.0", "bearing": "90.5", "altitude": "920.0",
    "accuracy": "12.0", "batt": "87.0",
}  # fmt: skip
EXAMPLE_JSON = {
    "device_id": "867530900000001",
    "location": {
        "timestamp": "2026-12-05T12:00:00Z",
        "coords": {"latitude": 12.971599, "longitude": 77.594566, "speed": 5.2,
                   "heading": 271.0, "accuracy": 8.5, "altitude": 920.0},
        "is_moving": True,
        "battery": {"level": 0.83, "is_charging": False},
    },
}  # fmt: skip


@dataclass(frozen=True)
class Fixes:
    """What one request carries: the device's id and its fixes as pings (the models'
    input: they decide what is valid)."""

    device_id: str
    pings: list[dict[str, Any]]


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidBatch(f"{name}: not a number")
    try:
        number = float(value)
    except ValueError:
        raise InvalidBatch(f"{name}: not a number ({str(value)[:40]!r})") from None
    if not math.isfinite(number):
        raise InvalidBatch(f"{name}: not a finite number")
    return number


def _known(value: object, name: str) -> float | None:
    """A reading, or None when absent or negative (a phone's "unknown")."""
    if value is None or value == "":
        return None
    number = _number(value, name)
    return None if number < 0 else number


def _heading(value: object, name: str) -> float | None:
    reading = _known(value, name)
    return None if reading is None else reading % 360.0


def fix_time(value: object, received: datetime) -> datetime:
    """A fix's time in any form OsmAnd senders use; the receipt when there is none."""
    if value is None or value == "":
        return received
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = float(value.strip())
    elif isinstance(value, str):
        text = value.strip()
        try:
            if "T" in text:
                parsed = datetime.fromisoformat(text)
            else:
                parsed = datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            raise InvalidBatch(f"timestamp: not a time ({text[:40]!r})") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    else:
        raise InvalidBatch("timestamp: not a time")
    seconds = number if number <= SECONDS_UP_TO else number / 1000.0
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidBatch(f"timestamp: out of range ({number:.0f})") from None


def _ping(
    device_id: str, ts: datetime, lat: float, lon: float, **extra: float | None
) -> dict[str, Any]:
    ping_id = uuid.uuid5(FIX_NAMESPACE, f"{device_id}|{ts.isoformat()}|{lat!r}|{lon!r}")
    ping: dict[str, Any] = {"ping_id": str(ping_id), "ts": ts.isoformat(), "lat": lat, "lon": lon}
    ping.update({k: v for k, v in extra.items() if v is not None})
    return ping


def from_query(params: Mapping[str, str], received: datetime) -> Fixes:
    """The query form (one value per name: the first)."""
    device_id = params.get("id") or params.get("deviceid")
    if not device_id:
        raise InvalidBatch("id: missing (the device's identifier)")
    if "location" in params and "lat" not in params:
        lat_text, _, lon_text = params["location"].partition(",")
        lat, lon = _number(lat_text, "location"), _number(lon_text, "location")
    else:
        if "lat" not in params or "lon" not in params:
            raise InvalidBatch("lat and lon: missing")
        lat, lon = _number(params["lat"], "lat"), _number(params["lon"], "lon")
    speed = _known(params.get("speed"), "speed")
    ping = _ping(
        device_id,
        fix_time(params.get("timestamp"), received),
        lat,
        lon,
        speed_mps=None if speed is None else speed * KNOT_MPS,
        heading_deg=_heading(params.get("bearing", params.get("heading")), "bearing"),
        accuracy_m=_known(params.get("accuracy"), "accuracy"),
        battery_pct=_known(params.get("batt"), "batt"),
    )
    return Fixes(device_id, [ping])


def _object(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidBatch(f"{name}: not an object")
    return value


def from_json(body: bytes, received: datetime) -> Fixes:
    """The JSON form: one `location`, or a list of them (a phone's buffered batch)."""
    try:
        document = _object(orjson.loads(body), "body")
    except orjson.JSONDecodeError as exc:
        raise InvalidBatch(f"body: not JSON ({exc})") from None
    device_id = document.get("device_id")
    if not isinstance(device_id, str) or not device_id:
        raise InvalidBatch("device_id: missing (the device's identifier)")
    locations = document.get("location")
    if isinstance(locations, dict):
        locations = [locations]
    if not isinstance(locations, list) or not locations:
        raise InvalidBatch("location: missing")
    if len(locations) > MAX_PINGS_PER_BATCH:
        raise InvalidBatch(f"location: more than {MAX_PINGS_PER_BATCH} fixes")
    pings = []
    for i, entry in enumerate(locations):
        location = _object(entry, f"location[{i}]")
        coords = _object(location.get("coords"), f"location[{i}].coords")
        if "latitude" not in coords or "longitude" not in coords:
            raise InvalidBatch(f"location[{i}].coords: latitude and longitude missing")
        battery = location.get("battery")
        level = _known(battery.get("level"), "battery.level") if isinstance(battery, dict) else None
        pings.append(
            _ping(
                device_id,
                fix_time(location.get("timestamp"), received),
                _number(coords["latitude"], "latitude"),
                _number(coords["longitude"], "longitude"),
                speed_mps=_known(coords.get("speed"), "speed"),
                heading_deg=_heading(coords.get("heading"), "heading"),
                accuracy_m=_known(coords.get("accuracy"), "accuracy"),
                battery_pct=None if level is None else min(level, 1.0) * 100.0,
            )
        )
    return Fixes(device_id, pings)
