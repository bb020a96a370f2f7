"""Test helpers: drive pings through ingest and read what the stream stored."""

import uuid
from datetime import datetime
from typing import Any

import httpx
import psycopg

from infra import postgres
from infra.config import StackConfig
from runtime.geo import destination
from tests.support.stack import wait_for

ORIGIN = (12.97, 77.59)


def ping_at(ts: datetime, metres_east: float, **extra: Any) -> dict[str, Any]:
    lat, lon = destination(*ORIGIN, 90.0, metres_east)
    return {"ping_id": str(uuid.uuid4()), "ts": ts.isoformat(), "lat": lat, "lon": lon, **extra}


def post(config: StackConfig, token: str, pings: list[dict[str, Any]]) -> None:
    r = httpx.post(
        f"http://127.0.0.1:{config.ingest_port}/v1/pings",
        json={"pings": pings},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 202, r.text


def stored(config: StackConfig, driver: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        return conn.execute(
            "SELECT ping_id::text, ts, lat, lon, speed_mps, flags, h3_cell FROM pings"
            " WHERE driver_id = %s ORDER BY ts, ping_id",
            [driver],
        ).fetchall()


def wait_stored(config: StackConfig, driver: str, count: int) -> list[tuple[Any, ...]]:
    return wait_for(lambda: rows if len(rows := stored(config, driver)) >= count else None, 30)
