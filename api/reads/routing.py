"""Where a database read goes (docs/services.md, "Api: reads"), and how many run at once.

The replica serves a read when it has replayed what the reader must see: the WAL position
is asked for in the same round trip as the read's first statement, before that
statement's snapshot is taken, so a position at or past the reader's last write means the
data includes it. Otherwise the read goes to the primary. So do critical reads, and every
read while the replica lags past a setting or does not answer. A replica that fails a read
midway (it went away, or cancelled a statement in conflict with its recovery) has the
whole read run again on the primary, once.

Reads wait for one of a fixed number of slots per process, below PgBouncer's pool; a few
may queue for a moment, and past that the answer is 503 with Retry-After, never a queue
without bound.
"""

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from psycopg import AsyncClientCursor, AsyncConnection
from psycopg.rows import dict_row

from api.errors import DatabaseBusy, DatabaseUnavailable
from runtime.postgres import DATABASE_ERRORS, REPLICA_LAG, TRANSIENT_ERRORS, Pool

log = logging.getLogger(__name__)
T = TypeVar("T")

# The position this server's data includes: on a replica the end of what it has
# replayed, on the primary the end of what it has flushed (bytes since 0/0, comparable
# across both). Not the insert position: it can stand past a page header the replica
# never reports, and an idle replica would then never seem caught up.
SERVER_LSN = (
    "SELECT coalesce(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_flush_lsn() END, '0/0') - '0/0'::pg_lsn AS lsn"
)


class ReadMetrics:
    """The read path's Prometheus metrics: reads by view, target and reason; the database cap; the
    replica's state."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reads = Counter(
            "api_db_reads",
            "Database reads by view, where they went (replica, primary) and why",
            ["view", "target", "reason"],
            registry=registry,
        )
        self.saturated = Counter(
            "api_db_saturated",
            "Reads refused with 503 because every database slot of the process was taken",
            registry=registry,
        )
        self.in_flight = Gauge(
            "api_db_reads_in_flight", "Database reads running now", registry=registry
        )
        self.peak = Gauge(
            "api_db_reads_in_flight_peak",
            "The most database reads that ever ran at once in this process",
            registry=registry,
        )
        self.replica_lag = Gauge(
            "api_replica_lag_seconds",
            "The replica's replay lag as last measured (+Inf while it does not answer)",
            registry=registry,
        )
        self.replica_up = Gauge(
            "api_replica_up",
            "1 while the replica answers the api; 0 while reads fall back to the primary",
            registry=registry,
        )
        self.replica_skipped = Gauge(
            "api_replica_skipped",
            "1 while every read goes to the primary because the replica lags or is down",
            registry=registry,
        )


class DbGate:
    """`limit` reads at once; up to `max_waiting` more wait at most `wait_s` for a slot,
    the rest are refused (DatabaseBusy) at once."""

    def __init__(self, limit: int, max_waiting: int, wait_s: float, metrics: ReadMetrics) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._max_waiting = max_waiting
        self._wait_s = wait_s
        self._waiting = 0
        self._in_use = 0
        self._peak = 0
        self._metrics = metrics

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked():
            if self._waiting >= self._max_waiting:
                self._refuse()
            self._waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self._wait_s)
            except TimeoutError:
                self._refuse()
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        self._in_use += 1
        self._metrics.in_flight.set(self._in_use)
        if self._in_use > self._peak:
            self._peak = self._in_use
            self._metrics.peak.set(self._peak)
        try:
            yield
        finally:
            self._in_use -= 1
            self._metrics.in_flight.set(self._in_use)
            self._slots.release()

    def _refuse(self) -> None:
        self._metrics.saturated.inc()
        raise DatabaseBusy("too many database reads in progress")


@dataclass(frozen=True)
class Rows:
    """A read's first statement's rows, the position its data includes, and where it ran."""

    rows: list[dict[str, Any]]
    lsn: int
    target: str


# What a read does after its first statement, on the same connection and snapshot's server:
# the statements that follow (a job's live position, an idempotency key).
Then = Callable[[AsyncConnection[Any], list[dict[str, Any]]], Awaitable[T]]


async def _nothing(conn: AsyncConnection[Any], rows: list[dict[str, Any]]) -> None:
    return None


@dataclass
class Pools:
    """The process's two pools through PgBouncer: its read-only entry (the replica) and its
    read-write one (the primary). The app's lifespan opens them; before that (and after),
    asking for one raises LookupError, which readiness answers as not ready."""

    read: Pool | None = None
    write: Pool | None = None

    def reader(self) -> Pool:
        if self.read is None:
            raise LookupError("the read pool is not open")
        return self.read

    def writer(self) -> Pool:
        if self.write is None:
            raise LookupError("the write pool is not open")
        return self.write


class ReadRouter:
    """Sends each read to the replica or the primary (read-your-writes, the replica's lag,
    critical reads), through the process's database cap. Safe for the tasks of one event
    loop; `watch_replica` runs as one of them for the app's life."""

    def __init__(
        self,
        pools: Pools,
        gate: DbGate,
        metrics: ReadMetrics,
        *,
        max_lag_s: float,
        check_every_s: float = 1.0,
        on_unavailable: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_unavailable = on_unavailable
        self._pools = pools
        self._gate = gate
        self._metrics = metrics
        self._max_lag_s = max_lag_s
        self._check_every_s = check_every_s
        self._lag_s = 0.0

    @property
    def replica_answers(self) -> bool:
        """The replica answered the last look (reads fall back to the primary otherwise)."""
        return not math.isinf(self._lag_s)

    async def read(
        self,
        view: str,
        sql: str,
        params: Sequence[Any],
        *,
        min_lsn: int = 0,
        critical: bool = False,
    ) -> Rows:
        """`sql`'s rows where its data includes `min_lsn` (the replica when it can)."""
        rows, _ = await self.read_then(
            view, sql, params, _nothing, min_lsn=min_lsn, critical=critical
        )
        return rows

    async def read_then(
        self,
        view: str,
        sql: str,
        params: Sequence[Any],
        then: Then[T],
        *,
        min_lsn: int = 0,
        critical: bool = False,
    ) -> tuple[Rows, T]:
        """Runs `sql` where its data includes `min_lsn` (the replica when it can), then
        `then` on the same connection. A replica that fails any of it (it went away, or
        cancelled a statement in conflict with its recovery) has the whole read run again
        on the primary, once. Raises DatabaseBusy past the cap and DatabaseUnavailable
        when no server answers; what `then` raises otherwise passes through."""
        async with self._gate.slot():
            try:
                return await self._run(view, sql, params, then, min_lsn, critical)
            except TRANSIENT_ERRORS as exc:
                self._on_unavailable()
                raise DatabaseUnavailable(str(exc)) from exc

    async def _run(
        self,
        view: str,
        sql: str,
        params: Sequence[Any],
        then: Then[T],
        min_lsn: int,
        critical: bool,
    ) -> tuple[Rows, T]:
        reason = "read_your_writes" if min_lsn else "miss"
        if critical:
            reason = "critical"
        elif self._lag_s > self._max_lag_s:
            reason = "replica_lag"
        else:
            try:
                async with self._pools.reader().connection() as conn:
                    lsn, rows = await _with_lsn(conn, sql, params)
                    if lsn >= min_lsn:  # else not replayed yet: the primary has it
                        more = await then(conn, rows)
                        self._metrics.reads.labels(view, "replica", reason).inc()
                        return Rows(rows, lsn, "replica"), more
            except TRANSIENT_ERRORS as exc:
                # A statement cancelled in conflict with recovery (SQLSTATE 40001, or the
                # connection ended if it was idle in its transaction) would fail again
                # there while the primary's change replays: the primary serves it.
                conflict = "conflict with recovery" in str(exc)
                reason = "recovery_conflict" if conflict else "replica_unavailable"
                log.warning("replica read failed, reading the primary: %r", exc)
        async with self._pools.writer().connection() as conn:
            lsn, rows = await _with_lsn(conn, sql, params)
            more = await then(conn, rows)
        self._metrics.reads.labels(view, "primary", reason).inc()
        return Rows(rows, lsn, "primary"), more

    async def watch_replica(self, stopping: asyncio.Event) -> None:
        """Measures the replica's lag every `check_every_s` until `stopping` is set."""
        while not stopping.is_set():
            try:
                async with self._pools.reader().connection(timeout=self._check_every_s) as conn:
                    row = await (await conn.execute(REPLICA_LAG)).fetchone()
                lag = float(row[0]) if row is not None else 0.0
            except DATABASE_ERRORS:
                lag = math.inf
            if (lag > self._max_lag_s) != (self._lag_s > self._max_lag_s):
                log.warning(
                    "replica lag %.1f s: reads go to the %s",
                    lag,
                    "primary" if lag > self._max_lag_s else "replica again",
                )
            self._lag_s = lag
            self._metrics.replica_up.set(0 if math.isinf(lag) else 1)
            self._metrics.replica_lag.set(lag)
            self._metrics.replica_skipped.set(1 if lag > self._max_lag_s else 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._check_every_s)


async def _with_lsn(
    conn: AsyncConnection[Any], sql: str, params: Sequence[Any]
) -> tuple[int, list[dict[str, Any]]]:
    """The server's position, then `sql`'s rows: two statements in one round trip (the
    simple query protocol, parameters bound by the client), the position read before the
    second statement's snapshot."""
    async with AsyncClientCursor(conn, row_factory=dict_row) as cur:
        await cur.execute(f"{SERVER_LSN}; {sql}", params)
        position = await cur.fetchone()
        cur.nextset()
        rows = await cur.fetchall()
    assert position is not None
    return int(position["lsn"]), rows


async def write_position(conn: AsyncConnection[Any]) -> int:
    """The primary's WAL position now: after a commit, one its replicas must reach before
    they show it."""
    row = await (await conn.execute(SERVER_LSN)).fetchone()
    assert row is not None
    return int(row[0])
