"""The migration runner: applies infra/migrations/*.sql in order, once each.

A migration runs in one transaction, unless its first line is `-- migrate: no-transaction`:
then its steps (separated by `-- migrate: step` lines) run one after the other outside any
transaction block, so that a step may be a procedure that commits as it goes (a backfill
in bounded batches) or a DDL statement that must wait for a lock without stalling the
writers queued behind it. Such steps must be safe to run again: a runner that stops
halfway starts the migration over.

A transactional migration runs with a `lock_timeout` (LOCK_TIMEOUT) and a
`statement_timeout` (STATEMENT_TIMEOUT): one that waits for a lock held by a long
transaction gives up within the lock timeout, so the writers queued behind its request
wait no longer than that, and it is tried again a second later. A no-transaction step sets
its own where it takes a lock writers would queue behind (`SET LOCAL lock_timeout`, as
0014's index drops do) and is tried again the same way; an index built CONCURRENTLY takes
no such lock and may wait for old transactions and build for as long as it needs. `make
lint` runs squawk over every migration (`python -m infra.migrate lint`); an exception is
annotated in the migration, with its reason."""

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Serialises concurrent runners (two `telemetry up` at once, parallel test sessions).
LOCK_KEY = 0x7E1E_3E7B
NO_TRANSACTION = "-- migrate: no-transaction"
STEP = "-- migrate: step"
# How long a transactional migration's statements wait for a lock, and run, before it
# gives up.
LOCK_TIMEOUT = "1s"
STATEMENT_TIMEOUT = "30min"
# A migration (or step) that gave up waiting for a lock is tried again this many times, a
# second apart: the writers it queued ahead of ran meanwhile.
LOCK_ATTEMPTS = 30
LOCK_RETRY_S = 1.0
# Versions whose file was amended after release, with the checksums of what databases
# may have applied before. 0012's first version backfilled the late window in one
# transaction and dropped two indexes inline; 0014 now does both online, and re-running
# it over a database that took the first version changes nothing. The others (and 0012
# again) gained comments only: squawk's exceptions, each with its reason (`make lint`).
AMENDED = {
    "0002_clean_and_aggregates": frozenset(
        {
            "804ee0b845a13fc928e98a1c04afcd1bb8ea79eb26ff684bf8fe9361c4952a81",
            "94d9dfe3d658b126df3c9e73e54dd9d415a7b507cc0cca81ed6e6e3c6f2355f9",
        }
    ),
    "0003_late_counts_and_retention": frozenset(
        {
            "b4358b03cbd4e87d37e73ef505abc5e1b7699a5814566b971e23779a557068df",
        }
    ),
    "0006_jobs": frozenset(
        {
            "382aae8b4b4cbf4699bf1873b6557064a37dd61cfb3d0389ae79bd1236247c0a",
        }
    ),
    "0007_job_events_status": frozenset(
        {
            "8ddd44af6bc402542529320423ab30c134b1120d2307c21c35347c1a8976d1b5",
        }
    ),
    "0010_tasks_blob_index": frozenset(
        {
            "e1de544d8502671a0e97d5e283bcbd172b5f2cf24c69d5e9e5ee522cc6b1a266",
        }
    ),
    "0011_share_links_indexes": frozenset(
        {
            "2b460bcc23e178210f0c16af0f4f22891a8c31c04e4ca931a94ab760547c8cc6",
        }
    ),
    "0012_incremental_aggregates": frozenset(
        {
            "945dcc725d47b3968422440338eeee39fcf99d6a7cdf31621cfd67ef76c49aca",
            "53b452d446bab06e20b9a9d887fa7769bc7a442e6e4272bfa04379acd0933d62",
            "cb54af3432e73680c3bf7916f21ee5faf69b34eaebe09598e8fa247a71e6bd85",
            "cabae5622424d198cc0fe5b43971a890c2f05e26f45de85c2eb6caea104f7ba4",
        }
    ),
    "0013_stream_apply_aggregates": frozenset(
        {
            "611d42a9683a8e99fc7531fefbf6e74d193613130b4f7b6acdb471c1835ba7ad",
        }
    ),
    "0014_late_window_online": frozenset(
        {
            "1d74ff3c6c25b74b6ebe37d8ed42848df679ca372bb16b873a90722373e5cb21",
        }
    ),
    "0015_drop_job_arrived": frozenset(
        {
            "7383179f36ae5d78d773fa5a04b0409f6cb0ba51bf7445419c53bd191581d210",
        }
    ),
    "0016_tasks_proof_index": frozenset(
        {
            "11af8cca0f9e7c93c44596a1302e9ea63de3614ddbf68fb3cc8a28249955baaf",
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
                        _retrying(partial(_apply_in_transaction, conn, migration))
                    else:
                        for step in migration.steps():
                            _retrying(partial(conn.execute, step.encode()))
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


def _apply_in_transaction(conn: psycopg.Connection[Any], migration: Migration) -> None:
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", [LOCK_TIMEOUT])
        conn.execute("SELECT set_config('statement_timeout', %s, true)", [STATEMENT_TIMEOUT])
        conn.execute(migration.sql.encode())
        _record(conn, migration)


def _retrying(attempt: Callable[[], object]) -> None:
    """Runs `attempt` (a migration in its transaction, or a step: on the autocommit
    connection a step of several statements is one implicit transaction, rolled back
    whole) again while it gives up waiting for a lock."""
    for tried in range(1, LOCK_ATTEMPTS + 1):
        try:
            attempt()
            return
        except errors.LockNotAvailable:
            if tried == LOCK_ATTEMPTS:
                raise
            time.sleep(LOCK_RETRY_S)


# squawk's rules the runner keeps itself: it sets both timeouts on every transactional
# migration, and a no-transaction step sets its own where it needs one (above).
SQUAWK_RUNNER_RULES = ("require-lock-timeout", "require-statement-timeout")


def squawk_commands(squawk: str, directory: Path = MIGRATIONS_DIR) -> list[list[str]]:
    """squawk over every migration file, as the runner applies it: a transactional one
    as one transaction, a no-transaction one statement by statement."""
    paths = sorted(directory.glob("*.sql"))
    common = [squawk, "--pg-version=15.0", f"--exclude={','.join(SQUAWK_RUNNER_RULES)}"]
    transactional = [str(p) for p in paths if Migration(p.stem, p.read_text()).transactional]
    outside = [str(p) for p in paths if str(p) not in transactional]
    return [[*common, "--assume-in-transaction", *transactional], [*common, *outside]]


def main(argv: list[str] | None = None) -> int:
    """`python -m infra.migrate lint`: squawk finds the migrations' long locks, unsafe
    types and statements that cannot run twice (`make lint`)."""
    parser = argparse.ArgumentParser(prog="python -m infra.migrate")
    parser.add_argument("step", choices=("lint",))
    parser.parse_args(argv)
    squawk = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
    if squawk is None:
        print("squawk is missing: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    failed = 0
    for command in squawk_commands(squawk):
        failed |= subprocess.run(command, check=False).returncode
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
