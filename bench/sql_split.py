"""Where the database's time goes during a benchmark phase, per statement, from
pg_stat_statements (the stack preloads it with `track = all`, so the statements run
inside the stream's functions are counted beside the calls of those functions: their
times overlap, and a share is of the top-level calls' total)."""

from dataclasses import dataclass
from typing import Any

import psycopg

from infra import postgres
from infra.config import StackConfig


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a script, with where it starts."""

    query: str
    calls: int
    total_ms: float
    rows: int
    top_level: bool

    def as_report(self, flushes: int) -> dict[str, Any]:
        return {
            "query": self.query,
            "calls": self.calls,
            "total_ms": round(self.total_ms, 1),
            "ms_per_flush": round(self.total_ms / flushes, 2) if flushes else None,
            "rows": self.rows,
            "top_level": self.top_level,
        }


def _dsn(config: StackConfig) -> str:
    return postgres.superuser_dsn(config).replace("dbname=postgres", f"dbname={postgres.DATABASE}")


def reset(config: StackConfig) -> None:
    with psycopg.connect(_dsn(config), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")


def top(config: StackConfig, limit: int = 15) -> list[Statement]:
    """The statements of the app's role that took the most time since `reset`."""
    with psycopg.connect(_dsn(config), autocommit=True) as conn:
        # One statement has an entry per server connection when it reads temp tables
        # (their oids differ): summed by text.
        rows = conn.execute(
            "SELECT regexp_replace(s.query, '\\s+', ' ', 'g') AS q, sum(s.calls)::bigint,"
            " sum(s.total_exec_time) AS t, sum(s.rows)::bigint, s.toplevel"
            " FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
            " WHERE r.rolname = %s GROUP BY q, s.toplevel ORDER BY t DESC LIMIT %s",
            [postgres.APP_USER, limit],
        ).fetchall()
    return [Statement(q[:160], calls, total, n, toplevel) for q, calls, total, n, toplevel in rows]


def lines(statements: list[Statement], flushes: int) -> list[str]:
    """A table of the split, for a report's summary."""
    total = sum(s.total_ms for s in statements if s.top_level) or 1.0
    out = []
    for s in statements:
        nested = "" if s.top_level else " (nested)"
        out.append(
            f"  {s.total_ms / 1000:8.1f} s {100 * s.total_ms / total:5.1f} %"
            f" {s.total_ms / max(flushes, 1):8.1f} ms/flush {s.calls:>8,} calls{nested}:"
            f" {s.query[:100]}"
        )
    return out
