"""CPU starvation: the CPU taken away. With busy processes on every core, every request is
still answered within its bounds (a success, or 429/503 with Retry-After, never a hang)
and every ping acknowledged is stored once the CPU comes back."""

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from infra.stack import Stack
from schemas.auth import Role
from tests.support.driving import ping_at, stored
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration

BODY = {"pickup": {"lat": 12.97, "lon": 77.59}, "dropoff": {"lat": 12.93, "lon": 77.62}}
# The client's own bound: far past any timeout of ours, so a hang shows as a client error.
CLIENT_TIMEOUT_S = 60.0


@contextmanager
def cpu_hogs(per_core: int = 2) -> Iterator[None]:
    """Busy loops at normal priority, `per_core` on each core, until the block ends."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(per_core * (os.cpu_count() or 2))
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_starved_of_cpu_every_request_is_answered_and_nothing_acknowledged_is_lost(
    stack: Stack, token: Callable[..., str]
) -> None:
    edge = stack.public_url()
    assert edge is not None
    drivers = [f"drv-starved-{uuid.uuid4().hex[:6]}-{i}" for i in range(40)]
    acknowledged: dict[str, int] = {d: 0 for d in drivers}
    answers: list[tuple[str, int, str | None]] = []

    async def one(client: httpx.AsyncClient, kind: str, call: Any) -> httpx.Response | None:
        try:
            r: httpx.Response = await call
        except httpx.HTTPError as exc:
            answers.append((kind, 0, repr(exc)))
            return None
        answers.append((kind, r.status_code, r.headers.get("Retry-After")))
        return r

    async def pings(client: httpx.AsyncClient, driver: str, rounds: int) -> None:
        headers = {"Authorization": f"Bearer {token(Role.DRIVER, driver)}"}
        for i in range(rounds):
            batch = [ping_at(datetime.now(UTC), 10.0 * i + k) for k in range(5)]
            r = await one(
                client,
                "ping",
                client.post(f"{edge}/v1/pings", json={"pings": batch}, headers=headers),
            )
            if r is not None and r.status_code == 202:
                acknowledged[driver] += len(batch)
            await asyncio.sleep(0.5)  # a phone's pace (load, not a wait for anything)

    async def jobs(client: httpx.AsyncClient, n: int) -> None:
        customer = {"Authorization": f"Bearer {token(Role.CUSTOMER, f'cus-starved-{n}')}"}
        r = await one(client, "create", client.post(f"{edge}/v1/jobs", json=BODY, headers=customer))
        if r is not None and r.status_code == 201:
            path = f"{edge}/v1/jobs/{r.json()['job_id']}"
            for _ in range(5):
                await one(client, "read", client.get(path, headers=customer))
                await one(client, "track", client.get(f"{path}/track", headers=customer))
                await asyncio.sleep(1.0)  # a tracking screen's pace (load)

    async def load() -> None:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
            await asyncio.gather(
                *(pings(client, d, 15) for d in drivers), *(jobs(client, n) for n in range(20))
            )

    with cpu_hogs():
        started = time.monotonic()
        asyncio.run(load())
        starved_s = time.monotonic() - started
    counted = Counter((kind, status) for kind, status, _ in answers)
    print(f"starved for {starved_s:.1f} s: {sorted(counted.items())}")
    assert starved_s > 5  # the load ran while the CPU was taken
    unanswered = [a for a in answers if a[1] == 0]
    assert not unanswered, unanswered[:5]
    by_status = {status for _, status, _ in answers}
    assert by_status <= {200, 201, 202, 429, 503}, by_status
    assert all(retry for _, status, retry in answers if status in (429, 503))
    assert sum(acknowledged.values()) > 0

    # Once the CPU is back, every acknowledged ping is stored.
    def all_stored() -> bool | None:
        done = all(len(stored(stack.config, d)) >= n for d, n in acknowledged.items())
        return True if done else None

    wait_for(all_stored, 120)
