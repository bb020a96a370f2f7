"""The migration runner: applies infra/migrations/*.sql in order, once each.

A migration runs in one transaction, unless its first line is `-- migrate: no-transaction`:
then its steps (separated by `-- migrate: step` lines) run one after the other outside any
transaction block, so that a step may be a procedure that commits as it goes (a backfill
in bounded batches) or a DDL statement that must wait for a lock without stalling the
writers queued behind it. Such steps must be safe to run again: a runner that stops
halfway starts the migration over."""

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Serialises concurrent runners (two `telemetry up` at once, parallel test sessions).
LOCK_KEY = 0x7E1E_3E7B
NO_TRANSACTION = "-- migrate: no-transaction"
STEP = "-- migrate: step"
# A step that gives up waiting for a lock (its own `lock_timeout`) is tried again this
# many times, a second apart: the writers it queued ahead of ran meanwhile.
LOCK_ATTEMPTS = 30
LOCK_RETRY_S = 1.0
# Versions whose file was amended after release, with the checksums of what databases
# may have applied before. 0012's first version backfilled the late window in one
# transaction and dropped two indexes inline; 0014 now does both online, and re-running
# it over a database that took the first version changes nothing.
AMENDED = {
    "0012_incremental_aggregates": frozenset(
        {
            "945dcc725d47b3968422440338eeee39fcf99d6a7cdf31621cfd67ef76c49aca",
            "53b452d446bab06e20b9a9d887fa7769bc7a442e6e4272bfa04379acd0933d62",
        }
    ),
}


@dataclass(frozen=True)
class Migration:
    """One migration file: its version (the file's name) and its SQL."""

    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def transactional(self) -> bool:
        return not self.sql.startswith(NO_TRANSACTION)

    def steps(self) -> list[str]:
        """A no-transaction migration's steps, in order (empty ones skipped)."""
        parts = re.split(rf"^{re.escape(STEP)}$", self.sql, flags=re.MULTILINE)
        return [p for p in parts if p.strip()]


class MigrationError(Exception):
    """A migration failed, or one already applied was edited afterwards."""


TIMESCALE_SUFFIX = ".timescale"


def discover(directory: Path = MIGRATIONS_DIR, *, timescale: bool = False) -> list[Migration]:
    """The migrations in order. `NNNN_name.timescale.sql`, where present, replaces
    `NNNN_name.sql` on a TimescaleDB database."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        if path.stem.endswith(TIMESCALE_SUFFIX):
            continue
        variant = path.with_name(path.stem + TIMESCALE_SUFFIX + ".sql")
        chosen = variant if timescale and variant.exists() else path
        migrations.append(Migration(path.stem, chosen.read_text()))
    return migrations


def _has_timescaledb(conn: psycopg.Connection[Any]) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        is not None
    )


def apply_all(
    dsn: str, migrations: list[Migration] | None = None, *, timescale: bool = False
) -> list[str]:
    """Applies the pending migrations, each in its own transaction; returns their versions.
    `timescale` picks the TimescaleDB variants; a database keeps the storage it began on."""
    pending_versions: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    text PRIMARY KEY,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            applied: dict[str, str] = dict(
                conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            )
            if applied and _has_timescaledb(conn) != timescale:
                began = "TimescaleDB" if not timescale else "native PostgreSQL"
                raise MigrationError(f"the database was created on {began}; it cannot switch")
            if migrations is None:
                migrations = discover(timescale=timescale)
            for migration in migrations:
                if migration.version in applied:
                    known = AMENDED.get(migration.version, frozenset()) | {migration.checksum}
                    if applied[migration.version] not in known:
                        raise MigrationError(
                            f"migration {migration.version} was edited after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                try:
                    if migration.transactional:
                        with conn.transaction():
                            conn.execute(migration.sql.encode())
                            _record(conn, migration)
                    else:
                        for step in migration.steps():
                            _run_step(conn, step)
                        _record(conn, migration)
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {migration.version} failed: {exc}") from exc
                pending_versions.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    return pending_versions


def _record(conn: psycopg.Connection[Any], migration: Migration) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
        [migration.version, migration.checksum],
    )


def _run_step(conn: psycopg.Connection[Any], step: str) -> None:
    """One step of a no-transaction migration, on the runner's autocommit connection (a
    step of several statements is one implicit transaction); tried again while it times
    out waiting for a lock."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            conn.execute(step.encode())
            return
        except errors.LockNotAvailable:
            if attempt == LOCK_ATTEMPTS:
                raise
            time.sleep(LOCK_RETRY_S)
