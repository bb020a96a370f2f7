"""Per-driver rate limit: an atomic token bucket in Redis, failing open when Redis is down."""

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

# One round trip, atomic: refill by elapsed time (Redis's own clock, so every ingest node
# agrees), then take `cost` tokens or say how long until there are enough.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
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
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now_ms)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, retry_ms}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0
    # False when Redis could not be asked and the request was let through (fail open).
    checked: bool = True


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
    ) -> None:
        self._client = client
        self._rate = rate_per_s
        self._burst = burst
        self._breaker_s = breaker_s
        self._prefix = key_prefix
        self._script = client.register_script(TOKEN_BUCKET_LUA)
        self._skip_until = 0.0

    async def check(self, driver_id: str, cost: int = 1) -> Decision:
        # After a failure, do not ask Redis again for a moment: every request would
        # otherwise pay the connect timeout while Redis is down.
        if time.monotonic() < self._skip_until:
            return Decision(True, checked=False)
        try:
            allowed, retry_ms = await self._script(
                keys=[self._prefix + driver_id], args=[self._rate, self._burst, cost]
            )
        except (RedisError, OSError, TimeoutError):
            self._skip_until = time.monotonic() + self._breaker_s
            return Decision(True, checked=False)
        return Decision(bool(allowed), float(retry_ms) / 1000.0)

    async def close(self) -> None:
        await self._client.aclose()
