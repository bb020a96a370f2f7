"""Which storage the stack's PostgreSQL runs: TimescaleDB or native PostgreSQL.

Chosen once, when the cluster is created, and recorded beside it: a database made on
TimescaleDB cannot start without the extension preloaded, and one made natively has native
partitions that TimescaleDB's migrations know nothing of.
"""

from collections.abc import Callable
from typing import Literal

from infra import postgres, timescaledb
from infra.config import StackConfig
from infra.procs import StackError

Storage = Literal["timescaledb", "native"]
Report = Callable[[str], None]
# Makes TimescaleDB available (builds or copies it); raises StackError when it cannot.
Ensure = Callable[[StackConfig, Report], object]


def recorded(config: StackConfig) -> Storage | None:
    """The storage of the existing cluster, or None before the first `up`."""
    if not postgres.cluster_exists(config):
        return None
    path = postgres.storage_record(config)
    # A cluster made before storage was recorded is native: TimescaleDB never started then.
    text = path.read_text().strip() if path.exists() else "native"
    if text not in ("timescaledb", "native"):
        raise StackError(f"{path} says {text!r}; expected timescaledb or native")
    return "timescaledb" if text == "timescaledb" else "native"


def on_timescaledb(config: StackConfig) -> bool:
    """Whether the servers preload TimescaleDB: what `prepare` chose, read before the
    cluster exists too (Patroni makes it, after its configuration is written)."""
    path = postgres.storage_record(config)
    return path.exists() and path.read_text().strip() == "timescaledb"


def prepare(config: StackConfig, report: Report, ensure: Ensure = timescaledb.ensure) -> Storage:
    """Settles the storage and makes sure what it needs is installed (building TimescaleDB
    the first time on this machine); records it for a new cluster."""
    existing = recorded(config)
    if existing is not None:
        if config.storage not in ("auto", existing):
            raise StackError(
                f"this state dir's database was created on {existing}; "
                f"TELEMETRY_STORAGE={config.storage} applies to a new one "
                f"('telemetry down', then remove {postgres.pg_root(config)})"
            )
        if existing == "timescaledb":
            ensure(config, report)  # e.g. PostgreSQL's package was reinstalled
        return existing
    chosen = _choose(config, report, ensure)
    postgres.storage_record(config).parent.mkdir(parents=True, exist_ok=True)
    postgres.storage_record(config).write_text(chosen + "\n")
    return chosen


def _choose(config: StackConfig, report: Report, ensure: Ensure) -> Storage:
    if config.storage == "native":
        return "native"
    try:
        ensure(config, report)
    except StackError as exc:
        if config.storage == "timescaledb":
            raise
        report(
            f"WARNING: TimescaleDB {timescaledb.VERSION} is not available ({exc}); "
            "running on native PostgreSQL (TELEMETRY_STORAGE=native silences this)"
        )
        return "native"
    return "timescaledb"
