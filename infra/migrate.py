"""The migration runner: applies infra/migrations/*.sql in order, once each."""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Serialises concurrent runners (two `telemetry up` at once, parallel test sessions).
LOCK_KEY = 0x7E1E_3E7B


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


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
                    if applied[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version} was edited after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.sql.encode())
                        conn.execute(
                            "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                            [migration.version, migration.checksum],
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"migration {migration.version} failed: {exc}") from exc
                pending_versions.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    return pending_versions
