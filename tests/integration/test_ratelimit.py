"""The rate limiter against the real Redis: concurrent checks share round trips and still
count every request, a driver twice in one batch included."""

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from infra.config import StackConfig
from infra.redis import url as redis_url
from ingest.ratelimit import RateLimiter

pytestmark = pytest.mark.integration


class CountingScript:
    """Wraps the registered script: counts the round trips and the keys in each."""

    def __init__(self, script: Any) -> None:
        self._script = script
        self.batches: list[int] = []

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        self.batches.append(len(keys))
        return await self._script(keys=keys, args=args)


def limiter(config: StackConfig) -> tuple[RateLimiter, CountingScript]:
    client = aioredis.Redis.from_url(redis_url(config))
    rl = RateLimiter(client, rate_per_s=5.0, burst=20, key_prefix=f"test:{uuid.uuid4().hex}:")
    counting = CountingScript(rl._script)
    rl._script = counting  # type: ignore[assignment]
    return rl, counting


async def test_a_burst_of_one_driver_in_one_batch_gets_exactly_its_tokens(
    config: StackConfig,
) -> None:
    rl, script = limiter(config)
    try:
        decisions = await asyncio.gather(*(rl.check("drv-1") for _ in range(30)))
    finally:
        await rl.close()
    allowed = [d for d in decisions if d.allowed]
    refused = [d for d in decisions if not d.allowed]
    assert len(allowed) == 20 and len(refused) == 10
    assert all(d.checked for d in decisions)
    # 30 checks, far fewer round trips: the first alone (it leaves at once), the rest together.
    assert sum(script.batches) == 30 and len(script.batches) <= 3, script.batches
    assert all(0 < d.retry_after_s <= 0.2 for d in refused)  # one token at 5/s


async def test_many_drivers_at_once_are_each_checked_against_their_own_bucket(
    config: StackConfig,
) -> None:
    rl, script = limiter(config)
    try:
        first = await asyncio.gather(*(rl.check(f"drv-{i}", cost=20) for i in range(300)))
        second = await asyncio.gather(*(rl.check(f"drv-{i}") for i in range(300)))
    finally:
        await rl.close()
    assert all(d.allowed for d in first)  # each had its own full bucket
    assert not any(d.allowed for d in second)  # and emptied it
    # A batch holds at most 256 checks: 600 checks in a handful of round trips.
    assert sum(script.batches) == 600 and max(script.batches) <= 256
    assert len(script.batches) <= 8, script.batches


async def test_redis_gone_mid_flight_lets_every_waiting_request_through_unchecked() -> None:
    client = aioredis.Redis.from_url(
        "redis://127.0.0.1:9/0", socket_timeout=0.2, socket_connect_timeout=0.2
    )  # nothing listens on the discard port
    rl = RateLimiter(client, rate_per_s=5.0, burst=20)
    try:
        decisions = await asyncio.gather(*(rl.check(f"drv-{i}") for i in range(50)))
        after = await rl.check("drv-x")  # the breaker is open: no new round trip
    finally:
        await rl.close()
    assert all(d.allowed and not d.checked for d in decisions)
    assert after.allowed and not after.checked
