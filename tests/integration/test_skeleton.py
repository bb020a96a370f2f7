"""The walking skeleton: POST /v1/pings -> Kafka -> Faust -> PostgreSQL -> replica -> api."""

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from infra import postgres
from infra.config import StackConfig
from infra.stack import Stack
from schemas.auth import Role
from tests.support.stack import session_storage, wait_for

pytestmark = pytest.mark.integration


def ping(ts: datetime, lat: float, lon: float, **extra: Any) -> dict[str, Any]:
    return {"ping_id": str(uuid.uuid4()), "ts": ts.isoformat(), "lat": lat, "lon": lon, **extra}


def ingest_url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.ingest_port}"


def api_url(config: StackConfig) -> str:
    return f"http://127.0.0.1:{config.api_port}"


def test_posted_pings_become_the_position_read_through_the_api(
    config: StackConfig, token: Callable[..., str]
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    older = ping(now - timedelta(seconds=20), 12.9716, 77.5946, speed_mps=8.5)
    newest = ping(now - timedelta(seconds=10), 12.9720, 77.5950, speed_mps=9.0)
    response = httpx.post(
        f"{ingest_url(config)}/v1/pings",
        json={"pings": [newest, older]},
        headers={"Authorization": f"Bearer {token(Role.DRIVER, driver)}"},
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 2, "rejected": []}

    dispatcher = {"Authorization": f"Bearer {token(Role.DISPATCHER, 'disp-1')}"}

    def position() -> dict[str, Any] | None:
        r = httpx.get(f"{api_url(config)}/v1/drivers/{driver}/position", headers=dispatcher)
        return r.json() if r.status_code == 200 else None

    body = wait_for(position, timeout_s=30)
    # The newest fix wins even though it came first in the batch.
    assert body["lat"] == pytest.approx(12.9720)
    assert body["lon"] == pytest.approx(77.5950)
    assert body["speed_mps"] == pytest.approx(9.0)
    assert datetime.fromisoformat(body["ts"]) == datetime.fromisoformat(newest["ts"])

    # Both pings are in the raw history, exactly once each, in a daily partition or chunk.
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        rows = conn.execute(
            "SELECT ping_id::text, tableoid::regclass::text FROM pings WHERE driver_id = %s",
            [driver],
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted([older["ping_id"], newest["ping_id"]])
    part = "_timescaledb_internal._hyper_" if session_storage() == "timescaledb" else "pings_"
    assert all(r[1].startswith(part) for r in rows)


def test_reposting_the_same_ping_stores_it_once(
    config: StackConfig, token: Callable[..., str]
) -> None:
    driver = f"drv-{uuid.uuid4().hex[:8]}"
    same = ping(datetime.now(UTC) - timedelta(seconds=5), 28.6139, 77.2090)
    headers = {"Authorization": f"Bearer {token(Role.DRIVER, driver)}"}
    for _ in range(3):
        r = httpx.post(f"{ingest_url(config)}/v1/pings", json={"pings": [same]}, headers=headers)
        assert r.status_code == 202, r.text
    marker = ping(datetime.now(UTC), 28.6140, 77.2091)
    r = httpx.post(f"{ingest_url(config)}/v1/pings", json={"pings": [marker]}, headers=headers)
    assert r.status_code == 202

    def stored() -> list[str] | None:
        with psycopg.connect(postgres.dsn(config, "primary")) as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT ping_id::text FROM pings WHERE driver_id = %s", [driver]
                ).fetchall()
            ]
        # Records of one driver share a partition and are processed in order: once the
        # marker posted last is stored, every earlier copy has been handled.
        return ids if marker["ping_id"] in ids else None

    ids = wait_for(stored, timeout_s=30)
    assert sorted(ids) == sorted([same["ping_id"], marker["ping_id"]])


def test_ingest_rejects_bad_input_with_clear_errors(
    config: StackConfig, token: Callable[..., str]
) -> None:
    url = f"{ingest_url(config)}/v1/pings"
    driver = {"Authorization": f"Bearer {token(Role.DRIVER, 'drv-bad')}"}
    now = datetime.now(UTC)

    assert httpx.post(url, json={"pings": [ping(now, 1, 1)]}).status_code == 401
    customer = {"Authorization": f"Bearer {token(Role.CUSTOMER, 'cust-1')}"}
    assert httpx.post(url, json={"pings": [ping(now, 1, 1)]}, headers=customer).status_code == 403

    malformed = httpx.post(url, content=b"{not json", headers=driver)
    assert malformed.status_code == 422
    assert malformed.json()["error"]["code"] == "invalid"

    all_bad = httpx.post(url, json={"pings": [ping(now, 91, 1), ping(now, 0, 0)]}, headers=driver)
    assert all_bad.status_code == 422
    rejected = all_bad.json()["error"]["details"]["rejected"]
    assert [r["index"] for r in rejected] == [0, 1]

    too_big = httpx.post(url, content=b"x" * (256 * 1024 + 1), headers=driver)
    assert too_big.status_code == 413

    mixed = httpx.post(
        url, json={"pings": [ping(now, 12.0, 77.0), ping(now, 12.0, 200.0)]}, headers=driver
    )
    assert mixed.status_code == 202
    assert mixed.json()["accepted"] == 1
    assert mixed.json()["rejected"][0]["index"] == 1


def test_api_position_errors(config: StackConfig, token: Callable[..., str]) -> None:
    url = f"{api_url(config)}/v1/drivers/nobody-{uuid.uuid4().hex[:6]}/position"
    assert httpx.get(url).status_code == 401
    ops = {"Authorization": f"Bearer {token(Role.OPS, 'ops-1')}"}
    missing = httpx.get(url, headers=ops)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    customer = {"Authorization": f"Bearer {token(Role.CUSTOMER, 'c-1')}"}
    assert httpx.get(url, headers=customer).status_code == 403
    # A NUL byte or an over-long id in the path: the envelope, never a 500.
    for bad in ("a%00b", "d" * 129):
        r = httpx.get(f"{api_url(config)}/v1/drivers/{bad}/position", headers=ops)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid"
    # A 405 keeps its Allow header.
    r = httpx.post(url, headers=ops)
    assert (r.status_code, r.headers["Allow"]) == (405, "GET")


def test_status_json_redacts_passwords_and_the_state_file_is_private(stack: Stack) -> None:
    env = os.environ | {
        # Lists as JSON, as pydantic-settings reads them from the environment.
        f"TELEMETRY_{name.upper()}": json.dumps(value)
        if isinstance(value, list | tuple)
        else str(value)
        for name, value in stack.config.model_dump().items()
    }
    run = [sys.executable, "-m", "cli", "status", "--json"]
    shown = subprocess.run(run, env=env, capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "password=***" in shown.stdout
    assert postgres.password(stack.config) not in shown.stdout
    secret = subprocess.run(
        [*run, "--show-secrets"], env=env, capture_output=True, text=True, check=False
    )
    assert postgres.password(stack.config) in secret.stdout
    assert stat.S_IMODE(stack.state.path.stat().st_mode) == 0o600
