"""The rate limiters against the real Redis. Per request: concurrent checks share round
trips and still count every request, a driver twice in one batch included. Local and
synced: processes share one bucket through the sync script."""

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from infra.config import StackConfig
from infra.redis import url as redis_url
from ingest.local_ratelimit import SyncedRateLimiter, redis_exchange
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


def synced(config: StackConfig, prefix: str, sync_s: float = 0.1) -> SyncedRateLimiter:
    client = aioredis.Redis.from_url(redis_url(config))
    return SyncedRateLimiter(
        redis_exchange(client, rate_per_s=5.0, burst=20, key_prefix=prefix),
        rate_per_s=5.0, burst=20, sync_s=sync_s, close=client.aclose,
    )  # fmt: skip


async def test_two_synced_processes_share_one_bucket_through_redis(config: StackConfig) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    a, b = synced(config, prefix), synced(config, prefix)
    try:
        first = sum([(await a.check("drv-1")).allowed for _ in range(30)])
        await a.sync()  # the script took A's 20 from the shared bucket
        await b.check("drv-1")  # B starts the driver full: one gets in (the promised slack)
        await b.sync()  # and B learns the bucket is empty, everything A spent included
        after = sum([(await b.check("drv-1")).allowed for _ in range(10)])
    finally:
        await a.close()
        await b.close()
    assert first == 20
    assert after == 0


async def test_a_driver_hammering_two_synced_processes_stays_within_the_bound(
    config: StackConfig,
) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    processes = [synced(config, prefix), synced(config, prefix)]
    for rl in processes:
        await rl.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    admitted = 0
    try:
        while loop.time() - started < 3.0:
            for rl in processes:
                admitted += sum([(await rl.check("drv-1")).allowed for _ in range(2)])
            await asyncio.sleep(0.01)
        seconds = loop.time() - started
    finally:
        for rl in processes:
            await rl.close()
    bound = 20 + 5.0 * seconds + (len(processes) - 1) * (20 + 5.0 * 0.1)
    assert admitted <= bound, (admitted, bound)
    # Two buckets that never synced would have let in 2 * (20 + 5 * seconds).
    assert admitted < 2 * (20 + 5.0 * seconds) - 10, admitted
