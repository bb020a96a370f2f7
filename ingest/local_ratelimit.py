"""Per-driver rate limit decided inside the process, kept in step with the other ingest
processes through Redis in batches.

A request is decided at once against the process's own token bucket for its driver: no
round trip on the request's path (with the limit in Redis, that round trip was a fifth of
ingest's CPU, docs/benchmarks.md). Every `sync_s` the process sends Redis what each driver
spent since the last sync, in one script call, and Redis answers each driver's level in the
shared bucket, everything every process spent included; the process takes that level as
its own.

What it promises (docs/services.md, "Rate limit"), for a driver at `rate` per second with
bursts of `burst`:
1. Within one process, exactly a token bucket: over any t seconds at most
   burst + rate * t requests get in.
2. Across N processes serving the same driver at once, at most
   burst + rate * t + (N - 1) * (burst + rate * sync_s) over any t seconds: a process
   learns what the others spent at its next sync. What they overspent is owed (the shared
   bucket goes down to -burst), so over a long run the driver's total rate is `rate`.
3. Redis unreachable: every process still holds each driver to its own bucket (nothing
   passes unchecked); what was spent meanwhile is reported when Redis is back.
4. A process that starts afresh starts each driver's bucket full: at most one more burst
   per driver and process start.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ingest.ratelimit import Decision
from runtime.clock import Clock, SystemClock

log = logging.getLogger(__name__)

# Takes what each key spent from its shared bucket (refilled by Redis's own clock, so every
# process agrees), floored at -burst: overspending is owed, not forgotten. Answers the
# levels. ARGV: rate, burst, then the amount spent per key.
SYNC_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl_ms = math.ceil(2 * burst * 1000 / rate) + 1000
local out = {}
for i, key in ipairs(KEYS) do
  local spent = tonumber(ARGV[i + 2])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now_ms
  tokens = math.min(burst, tokens + math.max(0, now_ms - ts) * rate / 1000)
  tokens = math.max(-burst, tokens - spent)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', now_ms)
  redis.call('PEXPIRE', key, ttl_ms)
  out[#out + 1] = tostring(tokens)
end
return out
"""

# Drivers in one script call at most: the script holds Redis (single-threaded) while it runs.
MAX_SYNC_KEYS = 1000

# The shared store: what each driver spent in, its level in the shared bucket out.
Exchange = Callable[[dict[str, int]], Awaitable[dict[str, float]]]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # monotonic seconds of `tokens`
    spent: int = 0  # taken since the last sync was sent


class LocalBuckets:
    """The process's token buckets, one per driver; pure (time is passed in)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def take(self, driver_id: str, cost: int, now: float) -> Decision:
        bucket = self._buckets.get(driver_id)
        if bucket is None:
            bucket = self._buckets[driver_id] = _Bucket(float(self.burst), now)
        tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if tokens >= cost:
            bucket.tokens = tokens - cost
            bucket.spent += cost
            return Decision(True)
        bucket.tokens = tokens
        return Decision(False, (cost - tokens) / self.rate)

    def spent(self) -> dict[str, int]:
        """What each driver spent since the last call: the next sync's report."""
        report = {}
        for driver_id, bucket in self._buckets.items():
            if bucket.spent:
                report[driver_id] = bucket.spent
                bucket.spent = 0
        return report

    def owe(self, spent: dict[str, int]) -> None:
        """A report that could not be delivered: spent again, to go with the next one."""
        for driver_id, amount in spent.items():
            bucket = self._buckets.get(driver_id)
            if bucket is not None:
                bucket.spent += amount

    def adopt(self, levels: dict[str, float], now: float) -> None:
        """The shared levels after a sync; what was spent while it was in flight comes off."""
        for driver_id, level in levels.items():
            bucket = self._buckets.get(driver_id)
            if bucket is not None:
                bucket.tokens, bucket.at = level - bucket.spent, now

    def forget_full(self, now: float) -> None:
        """Drops the buckets that have refilled and have nothing to report: a driver not
        seen for burst/rate seconds costs no memory."""
        idle_s = self.burst / self.rate
        for driver_id in [
            d for d, b in self._buckets.items() if not b.spent and now - b.at >= idle_s
        ]:
            del self._buckets[driver_id]

    def __len__(self) -> int:
        return len(self._buckets)


def redis_exchange(
    client: aioredis.Redis, *, rate_per_s: float, burst: int, key_prefix: str
) -> Exchange:
    """The shared buckets in Redis: one script call per MAX_SYNC_KEYS drivers."""
    script = client.register_script(SYNC_LUA)

    async def exchange(spent: dict[str, int]) -> dict[str, float]:
        levels: dict[str, float] = {}
        drivers = list(spent)
        for start in range(0, len(drivers), MAX_SYNC_KEYS):
            chunk = drivers[start : start + MAX_SYNC_KEYS]
            answer = await script(
                keys=[key_prefix + d for d in chunk],
                args=[rate_per_s, burst, *(spent[d] for d in chunk)],
            )
            levels.update(zip(chunk, (float(a) for a in answer), strict=True))
        return levels

    return exchange


class SyncedRateLimiter:
    """The Limiter port (ingest/accept.py): decides locally, syncs every `sync_s`."""

    def __init__(
        self,
        exchange: Exchange,
        *,
        rate_per_s: float,
        burst: int,
        sync_s: float = 0.25,
        on_sync_failed: Callable[[], None] = lambda: None,
        close: Callable[[], Awaitable[None]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._buckets = LocalBuckets(rate_per_s, burst)
        self._exchange = exchange
        self._sync_s = sync_s
        self._on_sync_failed = on_sync_failed
        self._close = close
        self._clock = clock or SystemClock()
        self._syncing: asyncio.Task[None] | None = None
        self._failing = False  # logged once when syncs start failing, once when they work

    async def start(self) -> None:
        self._syncing = asyncio.get_running_loop().create_task(self._sync_forever())

    async def check(self, driver_id: str, cost: int = 1) -> Decision:
        return self._buckets.take(driver_id, cost, self._clock.monotonic())

    async def sync(self) -> None:
        """One sync: report what was spent, adopt the shared levels. Never raises for
        Redis: the report waits for the next sync."""
        spent = self._buckets.spent()
        if spent:
            try:
                levels = await self._exchange(spent)
            except (RedisError, OSError, TimeoutError) as exc:
                self._buckets.owe(spent)
                self._on_sync_failed()
                if not self._failing:
                    log.warning("rate limit not synced (%r): limits stay per process", exc)
                self._failing = True
            else:
                self._buckets.adopt(levels, self._clock.monotonic())
                if self._failing:
                    log.info("rate limit synced again")
                self._failing = False
        self._buckets.forget_full(self._clock.monotonic())

    async def _sync_forever(self) -> None:
        while True:
            await self._clock.sleep(self._sync_s)
            try:
                await self.sync()
            except Exception:  # a bug: logged, and the next round still goes
                log.exception("rate limit sync failed")

    async def close(self) -> None:
        if self._syncing is not None:
            self._syncing.cancel()
            await asyncio.gather(self._syncing, return_exceptions=True)
        await self.sync()  # the last report, so that a restart does not forgive it
        if self._close is not None:
            await self._close()
