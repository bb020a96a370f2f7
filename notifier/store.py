"""What the notifier reads from PostgreSQL: jobs and share links on the primary (a
snapshot's seq is a resume point, a critical read: docs/notifier.md), driver positions and
replayed job events on the replica first. Lookups asked for in the same turn of the event
loop go as one query (a reconnect storm of thousands of subscribers costs a few), and at
most `max_concurrency` queries run at once."""

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from psycopg.rows import dict_row

from jobs import store as job_store
from notifier.errors import DatabaseUnavailable
from notifier.frames import EventFrame, event_frame
from runtime.postgres import DATABASE_ERRORS, Pool
from schemas.jobs import JobEvent, JobStatus
from schemas.positions import PositionUpdate

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Batcher(Generic[K, V]):
    """`get(key)` calls made in one loop turn are answered by one `load(keys)`."""

    def __init__(self, load: Callable[[list[K]], Awaitable[dict[K, V]]]) -> None:
        self._load = load
        self._pending: dict[K, list[asyncio.Future[V | None]]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # loads in flight, referenced

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = {}
            loop.call_soon(self._flush)
        future: asyncio.Future[V | None] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending or {}, None
        task = asyncio.get_running_loop().create_task(self._run(pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, pending: dict[K, list[asyncio.Future[V | None]]]) -> None:
        try:
            found = await self._load(list(pending))
        except Exception as exc:
            for futures in pending.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for key, futures in pending.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(key))


@dataclass(frozen=True)
class JobRow:
    """A job as the notifier reads it: who may see it, its status and seq, and every column for the
    snapshot."""

    job_id: UUID
    status: JobStatus
    customer_id: str | None
    driver_id: str | None
    seq: int
    row: dict[str, Any]  # every column, for the snapshot


@dataclass(frozen=True)
class ShareRow:
    """A live share link: its token's hash, its job and when it ends."""

    token_hash: bytes
    job_id: UUID
    expires_at: datetime


# Enough of a query a storm would otherwise run thousands of times.
MAX_BATCH = 500


class Store:
    """The notifier's reads (jobs/store.py's queries): jobs and share links on the primary,
    positions and replayed events on the replica first, batched per loop turn and bounded in
    concurrency. Raises DatabaseUnavailable when no server answers in time."""

    def __init__(
        self, primary: Pool, replica: Pool, *, max_concurrency: int, timeout_s: float
    ) -> None:
        self._primary = primary
        self._replica = replica
        self._gate = asyncio.Semaphore(max_concurrency)
        self._timeout_s = timeout_s
        self.jobs: Batcher[UUID, JobRow] = Batcher(self._load_jobs)
        self.shares: Batcher[bytes, ShareRow] = Batcher(self.live_shares)
        self.positions: Batcher[str, PositionUpdate] = Batcher(self._load_positions)

    async def _query(self, pool: Pool, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                self._gate,
                pool.connection() as conn,
                conn.cursor(row_factory=dict_row) as cur,
            ):
                await cur.execute(sql, params)
                return await cur.fetchall()
        except DATABASE_ERRORS as exc:
            raise DatabaseUnavailable(f"database did not answer: {exc!r}") from exc

    async def _chunked(self, pool: Pool, sql: str, keys: list[Any]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for i in range(0, len(keys), MAX_BATCH):
            rows += await self._query(pool, sql, [keys[i : i + MAX_BATCH]])
        return rows

    async def _load_jobs(self, job_ids: list[UUID]) -> dict[UUID, JobRow]:
        rows = await self._chunked(self._primary, job_store.SELECT_JOBS, job_ids)
        return {
            r["job_id"]: JobRow(
                r["job_id"], JobStatus(r["status"]), r["customer_id"], r["driver_id"], r["seq"], r
            )
            for r in rows
        }

    async def live_shares(self, hashes: list[bytes]) -> dict[bytes, ShareRow]:
        """The links among `hashes` that are live now (not expired, not revoked)."""
        rows = await self._chunked(self._primary, job_store.SELECT_LIVE_SHARES, hashes)
        return {
            bytes(r["token_hash"]): ShareRow(bytes(r["token_hash"]), r["job_id"], r["expires_at"])
            for r in rows
        }

    async def _load_positions(self, driver_ids: list[str]) -> dict[str, PositionUpdate]:
        # Latest-value and checked by `ts` on the client: the replica's is good enough.
        rows = await self._chunked(
            self._replica,
            "SELECT driver_id, ping_id, ts, lat, lon, speed_mps, heading_deg, job_id"
            " FROM driver_positions WHERE driver_id = ANY(%s)",
            driver_ids,
        )
        return {r["driver_id"]: PositionUpdate.model_validate(r) for r in rows}

    async def events_after(
        self, job_id: UUID, after_seq: int, until_seq: int, limit: int
    ) -> list[EventFrame]:
        """The job's events after `after_seq` (at most `limit`), from the replica when it
        has them up to `until_seq` (a seq known committed), else from the primary."""
        sql = job_store.SELECT_EVENTS_AFTER
        params = [job_id, after_seq, limit]
        rows = await self._query(self._replica, sql, params)
        if (rows[-1]["seq"] if rows else after_seq) < min(until_seq, after_seq + limit):
            rows = await self._query(self._primary, sql, params)
        return [event_frame(JobEvent.model_validate(row)) for row in rows]
