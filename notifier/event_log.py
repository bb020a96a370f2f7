"""The retained log of job events a resume replays: a Redis Stream per job, entry ids
`{seq}-1`, capped at `retained_events`, expiring after the job's last event. It is a
cache of PostgreSQL's `job_events` (the source of truth): every notifier process appends
what it consumes (idempotent: only seqs above the newest go in), a reader checks what it
got starts right after its seq and has no gap, and falls back to PostgreSQL otherwise.
No epoch is needed: job ids are UUIDv7, never reused, so a log can only hold its own job's
events; a log that lost entries (Redis restarted without them) shows as a gap."""

import asyncio
import logging
from collections.abc import Sequence
from uuid import UUID

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from notifier.frames import EventFrame, event_frame
from notifier.metrics import NotifierMetrics
from runtime.clock import Clock, SystemClock
from schemas.jobs import JobEvent

log = logging.getLogger(__name__)

# KEYS[1] the job's log; ARGV: maxlen, ttl_s, then (seq, event) pairs in seq order.
APPEND = """
local newest = 0
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then newest = tonumber(string.match(top[1][1], '^(%d+)')) end
for i = 3, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq > newest then
    redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], seq .. '-1', 'e', ARGV[i + 1])
    newest = seq
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return newest
"""


def log_key(job_id: UUID) -> str:
    return f"notifier:log:{job_id}"


class EventLog:
    """Each job's recent events in a Redis Stream, for resumes: `append` after the live reader reads
    them, `read_after` for a resume (None when the log cannot answer: the caller reads
    PostgreSQL). Redis failures are counted and skipped for a while, never raised. For one event
    loop's tasks."""

    def __init__(
        self,
        client: aioredis.Redis,
        metrics: NotifierMetrics,
        *,
        retained: int,
        ttl_s: int,
        timeout_s: float,
        breaker_s: float = 1.0,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._client = client
        self._metrics = metrics
        self._retained = retained
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._breaker_s = breaker_s
        self._append = client.register_script(APPEND)
        self._skip_until = 0.0

    @property
    def retained(self) -> int:
        return self._retained

    async def append(self, events: Sequence[tuple[JobEvent, bytes]]) -> None:
        """Appends consumed events (with their record's value), one script call per job in
        one round trip. A failure is counted and dropped: the log is a cache."""
        if not events or self._skipping():
            return
        by_job: dict[UUID, list[str | bytes | int]] = {}
        for event, raw in events:
            by_job.setdefault(event.job_id, []).extend([event.seq, raw])
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                pipe = self._client.pipeline(transaction=False)
                for job_id, pairs in by_job.items():
                    await self._append(
                        keys=[log_key(job_id)],
                        args=[self._retained, self._ttl_s, *pairs],
                        client=pipe,
                    )
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("append", exc)

    async def read_after(self, job_id: UUID, after_seq: int) -> list[EventFrame] | None:
        """The retained events after `after_seq`, in seq order (possibly with gaps or none:
        the caller checks), or None when Redis did not answer."""
        if self._skipping():
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                entries = await self._client.xrange(
                    log_key(job_id), min=f"{after_seq + 1}-0", max="+", count=self._retained
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("read", exc)
            return None
        frames: list[EventFrame] = []
        for _, fields in entries or []:
            try:
                frames.append(event_frame(JobEvent.model_validate_json((fields or {})[b"e"])))
            except (KeyError, ValidationError):
                # Not ours to trust: PostgreSQL serves this resume instead.
                return None
        return frames

    def _skipping(self) -> bool:
        return self._clock.monotonic() < self._skip_until

    def _failed(self, op: str, exc: BaseException) -> None:
        self._metrics.log_failures.labels(op).inc()
        if not self._skipping():
            log.warning("redis log %s failed, using PostgreSQL for a moment: %r", op, exc)
        # Every resume would otherwise pay the timeout while Redis is away.
        self._skip_until = self._clock.monotonic() + self._breaker_s

    async def close(self) -> None:
        await self._client.aclose()
