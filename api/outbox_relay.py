"""The outbox relay: publishes `outbox` rows to Kafka in id order, then marks them sent.

It runs in every api process. A transaction-scoped advisory lock lets one relay at a time
take a round (a session lock would not survive PgBouncer's transaction mode), so rows
leave in id order, which is seq order per job. A round publishes, awaits the broker's
acks, and marks its rows sent in the same transaction that holds the lock: a relay killed
mid-round leaves its rows unmarked, and the next round sends them again, in the same
order. Nothing is lost or reordered; a consumer drops a seq it already has.

Before a round publishes job events, `before_publish` gets their job ids on the round's
connection: the api writes the jobs' new views into its cache there (write-through), so
the readers a push sends arrive at warm keys. It runs in a savepoint, and its failure
delays no event.

The relay also keeps the tables small: sent rows past `keep_sent_s` and idempotency keys
past their time to live are deleted, a bounded batch at a time, every `sweep_every_s`.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import PoolTimeout

from runtime.kafka import AckedProducer, Message, ProduceFailed
from runtime.postgres import Pool
from schemas import topics

log = logging.getLogger(__name__)
LOCK_KEY = 0x0B0C_5E1A  # "outbox relay"
SWEEP_LOCK_KEY = LOCK_KEY + 1  # one sweeper at a time, never in a relay round's way


@dataclass(frozen=True)
class RelayLimits:
    batch: int = 500
    # Idle wait between empty rounds: an event waits at most this long (plus the send).
    poll_s: float = 0.1
    retry_s: float = 1.0
    keep_sent_s: float = 7 * 86400.0
    # A retry later than this is a new request (clients retry within minutes).
    idempotency_ttl_s: float = 86400.0
    sweep_every_s: float = 60.0
    sweep_batch: int = 5000


# Called with the round's connection and the job ids of the job events about to go out.
BeforePublish = Callable[[AsyncConnection[Any], list[str]], Awaitable[None]]


async def relay_round(
    pool: Pool, producer: AckedProducer, batch: int, before_publish: BeforePublish | None = None
) -> int:
    """Publishes up to `batch` unsent rows; returns how many (0: none, or another relay
    holds the lock)."""
    async with pool.connection() as conn, conn.transaction():
        locked = await (
            await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
        ).fetchone()
        if locked is None or not locked[0]:
            return 0
        rows = await (
            await conn.execute(
                "SELECT id, topic, key, payload::text FROM outbox WHERE sent_at IS NULL"
                " ORDER BY id LIMIT %s",
                [batch],
            )
        ).fetchall()
        if not rows:
            return 0
        job_ids = [key for _, topic, key, _ in rows if topic == topics.JOB_EVENTS]
        if before_publish is not None and job_ids:
            await _before(conn, before_publish, job_ids)
        await producer.send_all(
            [Message(topic, key.encode(), payload.encode()) for _, topic, key, payload in rows]
        )
        await conn.execute(
            "UPDATE outbox SET sent_at = now() WHERE id = ANY(%s)", [[row[0] for row in rows]]
        )
    return len(rows)


async def _before(
    conn: AsyncConnection[Any], before_publish: BeforePublish, job_ids: list[str]
) -> None:
    try:
        async with conn.transaction():  # a savepoint: its failure leaves the round intact
            await before_publish(conn, job_ids)
    except (psycopg.OperationalError, PoolTimeout):
        raise  # the connection is gone: the round fails, and is tried again
    except Exception:
        log.exception("before-publish step failed for %d jobs; publishing anyway", len(job_ids))


async def sweep(pool: Pool, limits: RelayLimits) -> int:
    """Deletes up to a batch of outbox rows sent more than `keep_sent_s` ago, and of
    idempotency keys older than their time to live; returns how many rows went."""
    async with pool.connection() as conn, conn.transaction():
        locked = await (
            await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", [SWEEP_LOCK_KEY])
        ).fetchone()
        if locked is None or not locked[0]:
            return 0
        outbox = await conn.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
            " WHERE sent_at < now() - make_interval(secs => %s) ORDER BY id LIMIT %s)",
            [limits.keep_sent_s, limits.sweep_batch],
        )
        keys = await conn.execute(
            "DELETE FROM idempotency_keys WHERE (principal, key) IN (SELECT principal, key"
            " FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %s)"
            " LIMIT %s)",
            [limits.idempotency_ttl_s, limits.sweep_batch],
        )
    return outbox.rowcount + keys.rowcount


async def run(
    pool: Pool,
    producer: AckedProducer,
    limits: RelayLimits,
    stopping: asyncio.Event,
    before_publish: BeforePublish | None = None,
) -> None:
    """Relays until `stopping` is set. Kafka or the database down: wait and try again."""
    loop = asyncio.get_running_loop()
    next_sweep = loop.time()
    while not stopping.is_set():
        try:
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + limits.sweep_every_s
                if swept := await sweep(pool, limits):
                    log.info("outbox relay: %d old outbox rows and idempotency keys deleted", swept)
            sent = await relay_round(pool, producer, limits.batch, before_publish)
        except (ProduceFailed, psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("outbox relay round failed, retrying: %r", exc)
            sent, wait = 0, limits.retry_s
        except Exception:  # a bug must not end the relay: the rows wait, unmarked
            log.exception("outbox relay round failed unexpectedly, retrying")
            sent, wait = 0, limits.retry_s
        else:
            wait = limits.poll_s
        if sent == 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
