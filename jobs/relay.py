"""The outbox relay: publishes `outbox` rows to Kafka in id order, then marks them sent.

It runs in every api process. A transaction-scoped advisory lock lets one relay at a time
take a round (a session lock would not survive PgBouncer's transaction mode), so rows
leave in id order, which is seq order per job. A round publishes, awaits the broker's
acks, and marks its rows sent in the same transaction that holds the lock: a relay killed
mid-round leaves its rows unmarked, and the next round sends them again, in the same
order. Nothing is lost or reordered; a consumer drops a seq it already has.

After a round has committed, `after_publish` gets the job ids of the job events it sent:
the api writes the jobs' new views into its cache then (write-through), outside the round's
lock and transaction, so however many share links a job has, no event waits for their
views. A push can reach a client a moment before the view it reads is written through:
that reader gets the previous view until the write-through lands (milliseconds) or the
view's freshness ends (seconds). Its failure delays no event.

The relay also keeps the tables small: sent rows past `keep_sent_s`, idempotency keys
past their time to live and share links ended `keep_ended_links_s` ago are deleted, a
bounded batch at a time, every `sweep_every_s`.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime.kafka import AckedProducer, Message, ProduceFailed
from runtime.postgres import TRANSIENT_ERRORS, Pool
from schemas import topics

log = logging.getLogger(__name__)
LOCK_KEY = 0x0B0C_5E1A  # "outbox relay"
SWEEP_LOCK_KEY = LOCK_KEY + 1  # one sweeper at a time, never in a relay round's way


@dataclass(frozen=True)
class RelayLimits:
    """The relay's pace and bounds: rows per round, how often it polls, and how long sent rows,
    idempotency keys and ended links are kept."""

    batch: int = 500
    # Idle wait between empty rounds: an event waits at most this long (plus the send).
    poll_s: float = 0.1
    retry_s: float = 1.0
    keep_sent_s: float = 7 * 86400.0
    # A retry later than this is a new request (clients retry within minutes).
    idempotency_ttl_s: float = 86400.0
    sweep_every_s: float = 60.0
    sweep_batch: int = 5000
    # Share links that expired or were revoked this long ago are deleted.
    keep_ended_links_s: float = 86400.0
    # Rounds failed in a row (not by an outage) before the rows go one at a time.
    isolate_after: int = 3
    # The write-through of a round's views gets this long; the next round waits for it.
    after_publish_timeout_s: float = 2.0


# Called with the job ids of the job events a round has just published.
AfterPublish = Callable[[list[str]], Awaitable[None]]


class Publisher(Protocol):
    """Where the relay sends the outbox's rows (Kafka): `send_all` returns once every record is
    acked, ProduceFailed otherwise."""

    async def send_all(self, messages: Sequence[Message]) -> None:
        """Returns once Kafka acked every message; ProduceFailed otherwise."""


Row = tuple[int, str, str, str]  # id, topic, key, payload


async def publish(producer: Publisher, rows: Sequence[Row], isolate: bool) -> dict[int, str]:
    """Publishes `rows` in order; returns the ones dead-lettered, by id, with the error.

    Raises what the send raised, unless `isolate`: then (after rounds that failed in a row)
    the rows go one at a time, and a row that Kafka refuses for good, or that makes us
    raise anything else, is dead-lettered so the rows after it go on. A transient failure
    still raises (Kafka away: wait, dead-letter nothing), and so does every row failing
    alone (the cause is not in the rows)."""
    if not isolate:
        await producer.send_all([_message(row) for row in rows])
        return {}
    dead: dict[int, str] = {}
    for row in rows:
        try:
            await producer.send_all([_message(row)])
        except ProduceFailed as exc:
            if exc.retriable:
                raise
            dead[row[0]] = str(exc)
        except Exception as exc:
            dead[row[0]] = f"{type(exc).__name__}: {exc}"
    if len(rows) > 1 and len(dead) == len(rows):
        first = next(iter(dead.values()))
        raise RuntimeError(f"every row fails alone, so not one row's fault: {first}")
    return dead


def _message(row: Row) -> Message:
    _, topic, key, payload = row
    return Message(topic, key.encode(), payload.encode())


async def relay_round(
    pool: Pool, producer: Publisher, batch: int, *, isolate: bool = False
) -> list[Row]:
    """Publishes up to `batch` unsent rows; returns them (none: none are unsent, or another
    relay holds the lock). `isolate`: find and dead-letter a poison row (`publish`)."""
    async with pool.connection() as conn, conn.transaction():
        locked = await (
            await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
        ).fetchone()
        if locked is None or not locked[0]:
            return []
        rows: list[Row] = await (
            await conn.execute(
                "SELECT id, topic, key, payload::text FROM outbox WHERE sent_at IS NULL"
                " ORDER BY id LIMIT %s",
                [batch],
            )
        ).fetchall()
        if not rows:
            return []
        dead = await publish(producer, rows, isolate)
        await conn.execute(
            "UPDATE outbox SET sent_at = now() WHERE id = ANY(%s)", [[row[0] for row in rows]]
        )
        for row_id, error in dead.items():
            log.error("outbox row %d dead-lettered in place: %s", row_id, error)
            await conn.execute("UPDATE outbox SET error = %s WHERE id = %s", [error, row_id])
    return rows


async def _after(after_publish: AfterPublish, rows: list[Row], timeout_s: float) -> None:
    job_ids = [key for _, topic, key, _ in rows if topic == topics.JOB_EVENTS]
    if not job_ids:
        return
    try:
        async with asyncio.timeout(timeout_s):
            await after_publish(job_ids)
    except Exception as exc:  # the events are out: a view not written expires by itself
        log.warning("after-publish step failed for %d jobs: %r", len(job_ids), exc)


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
        links = await conn.execute(
            "DELETE FROM share_links WHERE token_hash IN (SELECT token_hash FROM share_links"
            " WHERE expires_at < now() - make_interval(secs => %s) LIMIT %s)",
            [limits.keep_ended_links_s, limits.sweep_batch],
        )
    return outbox.rowcount + keys.rowcount + links.rowcount


async def run(
    pool: Pool,
    producer: AckedProducer,
    limits: RelayLimits,
    stopping: asyncio.Event,
    after_publish: AfterPublish | None = None,
) -> None:
    """Relays until `stopping` is set. Kafka or the database down: wait and try again.
    A round that fails `limits.isolate_after` times in a row for another reason (Kafka
    refusing a row for good, a row that makes us raise) is tried row by row, and the row
    at fault is dead-lettered: one row never stops every job's events."""
    loop = asyncio.get_running_loop()
    next_sweep = loop.time()
    failed = 0  # rounds in a row that failed for a reason other than an outage
    while not stopping.is_set():
        try:
            if loop.time() >= next_sweep:
                next_sweep = loop.time() + limits.sweep_every_s
                if swept := await sweep(pool, limits):
                    log.info("outbox relay: %d old rows deleted (outbox, keys, links)", swept)
            isolate = failed >= limits.isolate_after
            rows = await relay_round(pool, producer, limits.batch, isolate=isolate)
            sent = len(rows)
            if after_publish is not None:
                await _after(after_publish, rows, limits.after_publish_timeout_s)
        except TRANSIENT_ERRORS as exc:
            log.warning("outbox relay round failed, retrying: %r", exc)
            sent, wait = 0, limits.retry_s
        except ProduceFailed as exc:
            log.warning("outbox relay round failed, retrying: %r", exc)
            sent, wait = 0, limits.retry_s
            failed = 0 if exc.retriable else failed + 1
        except Exception:  # a bug must not end the relay: the rows wait, unmarked
            log.exception("outbox relay round failed unexpectedly, retrying")
            sent, wait, failed = 0, limits.retry_s, failed + 1
        else:
            wait, failed = limits.poll_s, 0
        if sent == 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
