"""PostgreSQL connection pools, safe behind PgBouncer in transaction mode."""

from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

# A pool of async connections, as every service holds them.
Pool = AsyncConnectionPool[AsyncConnection[Any]]

# The database errors after which the same work may succeed later, the one list every service
# retries or answers 503 on: the server or the way to it is away, or it could not do this
# now (a lost connection, a lock or statement timeout, a serialization failure: all
# OperationalError), the pool had no connection in time, or the caller's own deadline
# (asyncio.timeout) passed. What psycopg raises about the data or the SQL itself fails the
# same way every time, and is not here. A failover (docs/ha.md) adds two: a write that
# reaches a server no longer the primary (read_only_sql_transaction, an InternalError),
# and a connection whose server PgBouncer lost in the middle of a command, which psycopg
# reports as an InternalError of its own ("received 2 results from command 'BEGIN'", seen
# under `telemetry bench failover`).
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InternalError,
    PoolTimeout,
    TimeoutError,
)
# Any failure to get an answer from the database, for where the cause does not matter: a
# readiness probe, or a read whose caller only learns that the database is unavailable.
DATABASE_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, *TRANSIENT_ERRORS)

# How far a replica is behind, in seconds: 0 when it has replayed all it has received (an
# idle primary sends nothing, and then nothing is missing), and on a primary.
REPLICA_LAG = (
    "SELECT CASE WHEN NOT pg_is_in_recovery()"
    " OR pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0"
    " ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)


async def open_pool(
    dsn: str, *, min_size: int, max_size: int, name: str, timeout_s: float = 5.0
) -> AsyncConnectionPool[AsyncConnection[Any]]:
    """An opened pool. `prepare_threshold=None`: PgBouncer 1.18 in transaction mode hands
    each transaction a different server connection, so server-side prepared statements
    would be missing or clash."""
    pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=timeout_s,
        kwargs={"prepare_threshold": None, "autocommit": True},
        open=False,
    )
    # wait=False: a service must start (and answer /readyz with 503) while the database is down.
    await pool.open(wait=False)
    return pool
