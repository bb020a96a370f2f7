"""Per-driver rate limit: an atomic token bucket in Redis, failing open when Redis is down.

The checks of concurrent requests share one round trip: a check joins the batch being
gathered, and a batch leaves as soon as the one before it is answered. On our machines a
round trip to Redis costs more CPU in the kernel (two wake-ups of another process) than
the check itself, so under load this is most of the limiter's cost gone, and alone a
request still waits for one round trip only."""

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from runtime.clock import Clock, SystemClock

# One round trip for a batch, atomic: per key in order (a driver twice in a batch sees its
# first check's tokens gone), refill by elapsed time (Redis's own clock, so every ingest
# node agrees), then take the key's cost or say how long until there are enough.
# ARGV: rate, burst, then one cost per key. Returns allowed, retry_ms per key.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl_ms = math.ceil(burst * 1000 / rate) + 1000
local out = {}
for i, key in ipairs(KEYS) do
  local cost = tonumber(ARGV[i + 2])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now_ms
  tokens = math.min(burst, tokens + math.max(0, now_ms - ts) * rate / 1000)
  local allowed = 0
  local retry_ms = 0
  if tokens >= cost then
    tokens = tokens - cost
    allowed = 1
  else
    retry_ms = math.ceil((cost - tokens) * 1000 / rate)
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', now_ms)
  redis.call('PEXPIRE', key, ttl_ms)
  out[#out + 1] = allowed
  out[#out + 1] = retry_ms
end
return out
"""

# Checks in one round trip at most: the script holds Redis (single-threaded) while it runs.
MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class Decision:
    """A rate limit's answer: allowed or not, when to retry, and whether Redis was asked at all (it
    fails open)."""

    allowed: bool
    retry_after_s: float = 0.0
    # False when Redis could not be asked and the request was let through (fail open).
    checked: bool = True


UNCHECKED = Decision(True, checked=False)


@dataclass(slots=True)
class _Check:
    key: str
    cost: int
    decided: asyncio.Future[Decision]


class RateLimiter:
    """`rate_per_s` requests per second per driver, bursts up to `burst`."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        rate_per_s: float,
        burst: int,
        breaker_s: float = 1.0,
        key_prefix: str = "ingest:rl:",
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._client = client
        self._rate = rate_per_s
        self._burst = burst
        self._breaker_s = breaker_s
        self._prefix = key_prefix
        self._script = client.register_script(TOKEN_BUCKET_LUA)
        self._skip_until = 0.0
        self._waiting: list[_Check] = []
        self._sending = False
        self._in_flight: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Nothing to start: Redis is connected on the first check."""

    async def check(self, driver_id: str, cost: int = 1) -> Decision:
        # After a failure, do not ask Redis again for a moment: every request would
        # otherwise pay the connect timeout while Redis is down.
        if self._clock.monotonic() < self._skip_until:
            return UNCHECKED
        decided: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Check(self._prefix + driver_id, cost, decided))
        if not self._sending:
            self._sending = True
            # Not at once: the other requests read in this turn of the loop join in.
            asyncio.get_running_loop().call_soon(self._send_next)
        return await decided

    def _send_next(self) -> None:
        if not self._waiting:
            self._sending = False
            return
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        # Referenced until done: the loop keeps only weak references to tasks.
        self._in_flight = asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[_Check]) -> None:
        decisions: list[Decision] | Exception
        try:
            answer = await self._script(
                keys=[c.key for c in batch],
                args=[self._rate, self._burst, *(c.cost for c in batch)],
            )
            decisions = [
                Decision(bool(answer[2 * i]), answer[2 * i + 1] / 1000.0) for i in range(len(batch))
            ]
        except (RedisError, OSError, TimeoutError):
            self._skip_until = self._clock.monotonic() + self._breaker_s
            decisions = [UNCHECKED] * len(batch)
        except Exception as exc:  # a bug: its requests fail with it, the next batch still goes
            decisions = exc
        for i, check in enumerate(batch):
            if check.decided.done():  # its request has gone (the client hung up)
                continue
            if isinstance(decisions, Exception):
                check.decided.set_exception(decisions)
            else:
                check.decided.set_result(decisions[i])
        self._send_next()

    async def close(self) -> None:
        await self._client.aclose()
