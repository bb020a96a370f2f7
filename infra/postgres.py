"""PostgreSQL 15, run as the postgres OS user: a primary and a streaming replica, or
(`postgres_ha`) two nodes under Patroni (infra/patroni.py) whose roles move. Either way
`dsn(config, "primary")` reaches the primary and `dsn(config, "replica")` a replica."""

import contextlib
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg

from infra.config import StackConfig
from infra.install import PG_BIN
from infra.launch import Command, Mount
from infra.procs import DATABASE_USER, StackError, chown_for, run, write_private

DATABASE = "telemetry"
APP_USER = "telemetry"
REPLICATION_USER = "replicator"
SUPERUSER = "postgres"

# Fast shutdown: abort open transactions, checkpoint, exit (PostgreSQL's SIGINT).
STOP_SIGNAL = signal.SIGINT


def pg_root(config: StackConfig) -> Path:
    return config.state_dir / "postgres"


def data_dir(config: StackConfig, role: str) -> Path:
    return pg_root(config) / role


def socket_dir(config: StackConfig, role: str) -> Path:
    return pg_root(config) / f"{role}-socket"


# Patroni's nodes, `postgres_ha`: node N in its own dir, on postgres_node_port + N - 1.
HA_NODES = 2


def ha_nodes() -> range:
    return range(1, HA_NODES + 1)


def node_dir(config: StackConfig, node: int) -> Path:
    return pg_root(config) / f"node-{node}"


def node_data_dir(config: StackConfig, node: int) -> Path:
    return node_dir(config, node) / "data"


def node_socket_dir(config: StackConfig, node: int) -> Path:
    return node_dir(config, node) / "socket"


def node_port(config: StackConfig, node: int) -> int:
    return config.postgres_node_port + node - 1


def cluster_exists(config: StackConfig) -> bool:
    data_dirs = [data_dir(config, "primary"), *(node_data_dir(config, n) for n in ha_nodes())]
    return any((path / "PG_VERSION").exists() for path in data_dirs)


def check_layout(config: StackConfig) -> None:
    """A stack keeps the layout its database was made with (`postgres_ha` or not)."""
    plain = (data_dir(config, "primary") / "PG_VERSION").exists()
    under_patroni = any((node_data_dir(config, n) / "PG_VERSION").exists() for n in ha_nodes())
    if (plain and config.postgres_ha) or (under_patroni and not config.postgres_ha):
        made = "under Patroni" if under_patroni else "as a primary and a replica"
        raise StackError(
            f"this state dir's database was made {made}: start it with "
            f"TELEMETRY_POSTGRES_HA={'true' if under_patroni else 'false'} ('telemetry down' "
            f"and removing {pg_root(config)} makes a new one)"
        )


def storage_record(config: StackConfig) -> Path:
    """Which storage the cluster was created with (infra/storage.py writes it)."""
    return pg_root(config) / "storage"


def password(config: StackConfig) -> str:
    """The app and replication password, made once per state dir."""
    path = pg_root(config) / "password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def port(config: StackConfig, role: str) -> int:
    return config.postgres_primary_port if role == "primary" else config.postgres_replica_port


def dsn(config: StackConfig, role: str, *, user: str = APP_USER, dbname: str = DATABASE) -> str:
    return (
        f"host=127.0.0.1 port={port(config, role)} dbname={dbname} "
        f"user={user} password={password(config)} connect_timeout=5"
    )


def _superuser_at(socket: Path, port: int, dbname: str) -> str:
    return f"host={socket} port={port} dbname={dbname} user={SUPERUSER} connect_timeout=5"


def _in_recovery(dsn: str) -> bool | None:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return None
    return None if row is None else bool(row[0])


def _node_superuser(config: StackConfig, *, replica: bool, dbname: str) -> str:
    """The superuser of the Patroni node in that role now, found by asking each node."""
    for node in ha_nodes():
        dsn = _superuser_at(node_socket_dir(config, node), node_port(config, node), dbname)
        if _in_recovery(dsn) is replica:
            return dsn
    raise StackError(f"no PostgreSQL node is {'a replica' if replica else 'the primary'} now")


def superuser_dsn(config: StackConfig) -> str:
    """The primary's superuser, over the private unix socket: local connections are
    trusted, TCP ones need a password. `postgres` database: ours may not exist yet."""
    if config.postgres_ha:
        return _node_superuser(config, replica=False, dbname="postgres")
    return _superuser_at(socket_dir(config, "primary"), config.postgres_primary_port, "postgres")


def replica_superuser_dsn(config: StackConfig) -> str:
    """The replica's superuser in our database, over its private unix socket."""
    if config.postgres_ha:
        return _node_superuser(config, replica=True, dbname=DATABASE)
    return _superuser_at(socket_dir(config, "replica"), config.postgres_replica_port, DATABASE)


@contextlib.contextmanager
def replay_paused(config: StackConfig) -> Iterator[str]:
    """The replica applies nothing it receives until the block ends (a lagging replica, on
    demand, for tests and benchmarks); yields its superuser DSN (the private socket). Under
    Patroni, in its maintenance mode: it would resume the replay on its next loop."""
    with contextlib.ExitStack() as held:
        if config.postgres_ha:
            from infra import patroni  # imported here: patroni builds on this module

            held.enter_context(patroni.maintenance(config))
        dsn = replica_superuser_dsn(config)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
            try:
                yield dsn
            finally:
                conn.execute("SELECT pg_wal_replay_resume()")


def _make_service_dir(path: Path, mode: int = 0o700) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    chown_for(path, DATABASE_USER)


def _prepare_state_dirs(config: StackConfig) -> None:
    root = pg_root(config)
    root.mkdir(parents=True, exist_ok=True)
    # The postgres user must be able to walk down to its own dirs.
    for parent in (config.state_dir, root):
        parent.chmod(parent.stat().st_mode | 0o711)
    for role in ("primary", "replica"):
        _make_service_dir(socket_dir(config, role))


PRIMARY_CONF = """
# --- telemetry stack ---
listen_addresses = '127.0.0.1'
max_connections = 200
shared_buffers = 256MB
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
wal_keep_size = 512MB
hot_standby = on
hot_standby_feedback = on
"""

PRIMARY_HBA = f"""
local   all             all                                     trust
host    all             {SUPERUSER}        127.0.0.1/32          reject
host    replication     {REPLICATION_USER} 127.0.0.1/32          scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
"""


def initdb_password_file(config: StackConfig) -> Path:
    return pg_root(config) / "initdb-password"


def initdb_command(config: StackConfig) -> list[str]:
    return [
        str(PG_BIN / "initdb"),
        "-D",
        str(data_dir(config, "primary")),
        "-U",
        SUPERUSER,
        f"--pwfile={initdb_password_file(config)}",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
    ]


def prepare_for_initdb(config: StackConfig) -> None:
    """The dirs, and the superuser's password for initdb to read."""
    _prepare_state_dirs(config)
    _make_service_dir(data_dir(config, "primary"))
    _make_service_dir(data_dir(config, "replica"))
    write_private(initdb_password_file(config), password(config))
    chown_for(initdb_password_file(config), DATABASE_USER)


def init_primary(config: StackConfig) -> bool:
    """initdb once; returns True when it created the cluster."""
    check_layout(config)
    _prepare_state_dirs(config)
    if cluster_exists(config):
        return False
    prepare_for_initdb(config)
    try:
        run(initdb_command(config), user=DATABASE_USER)
    finally:
        initdb_password_file(config).unlink()
    data = data_dir(config, "primary")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(PRIMARY_CONF)
    (data / "pg_hba.conf").write_text(PRIMARY_HBA)
    return True


# Both servers load TimescaleDB at start (it cannot be loaded later); a replica needs the
# same worker settings as its primary to run hot standby.
TIMESCALEDB_SETTINGS = {
    "shared_preload_libraries": "timescaledb,pg_stat_statements",
    "timescaledb.telemetry_level": "off",  # no phoning home
    "max_worker_processes": "16",
    "timescaledb.max_background_workers": "8",
}


# Where a flush's time goes, per statement, nested ones (inside the stream's functions)
# included: `telemetry bench drain` reads it. Lock waits past deadlock_timeout are logged.
STATISTICS_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "log_lock_waits": "on",
}


# The stream writes about 1 GB of WAL a minute while it drains a backlog: with the default
# max_wal_size (1 GB) a checkpoint started every 25 s, and each one makes the next change
# of every page write that page whole into the WAL. Compressed, those whole pages cost less.
WAL_SETTINGS = {
    "max_wal_size": "4GB",
    "wal_compression": "lz4",
}


def server_settings(config: StackConfig, *, timescaledb: bool) -> dict[str, str]:
    """The settings every server of ours runs with (Patroni's nodes too)."""
    return (
        STATISTICS_SETTINGS
        | WAL_SETTINGS
        | (TIMESCALEDB_SETTINGS if timescaledb else {})
        # A client paused inside a transaction (a stopped stream worker) loses it, and the
        # locks it held, after this.
        | {"idle_in_transaction_session_timeout": f"{config.idle_in_transaction_timeout_s}s"}
    )


def command(config: StackConfig, role: str, *, timescaledb: bool) -> Command:
    settings = server_settings(config, timescaledb=timescaledb)
    argv = [
        str(PG_BIN / "postgres"),
        "-D",
        str(data_dir(config, role)),
        "-p",
        str(port(config, role)),
        "-c",
        f"unix_socket_directories={socket_dir(config, role)}",
        *(arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")),
    ]
    mounts = (Mount(data_dir(config, role), True), Mount(socket_dir(config, role), True))
    return Command(f"postgres-{role}", "postgres", argv, user=DATABASE_USER, mounts=mounts)


def bootstrap_roles(config: StackConfig) -> None:
    """Creates the app role and database and the replication role; idempotent."""
    secret = password(config)
    with psycopg.connect(superuser_dsn(config), autocommit=True) as conn:
        for role, attrs in ((APP_USER, "LOGIN"), (REPLICATION_USER, "LOGIN REPLICATION")):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                psycopg.sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
                    psycopg.sql.SQL(verb),
                    psycopg.sql.Identifier(role),
                    psycopg.sql.SQL(attrs),
                    psycopg.sql.Literal(secret),
                )
            )
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            conn.execute(
                psycopg.sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    psycopg.sql.Identifier(DATABASE), psycopg.sql.Identifier(APP_USER)
                )
            )


def basebackup_command(config: StackConfig) -> list[str]:
    """Clones the running primary into the replica's dir (PGPASSWORD: the password)."""
    return [
        str(PG_BIN / "pg_basebackup"),
        "-h",
        "127.0.0.1",
        "-p",
        str(config.postgres_primary_port),
        "-U",
        REPLICATION_USER,
        "-D",
        str(data_dir(config, "replica")),
        "-R",
        "-X",
        "stream",
        "-c",
        "fast",
    ]


def init_replica(config: StackConfig) -> bool:
    """pg_basebackup -R from the running primary, once; returns True when it cloned."""
    data = data_dir(config, "replica")
    if (data / "PG_VERSION").exists():
        return False
    _make_service_dir(data)
    run(basebackup_command(config), user=DATABASE_USER, env={"PGPASSWORD": password(config)})
    return True


def ready(config: StackConfig, role: str) -> bool:
    try:
        with psycopg.connect(dsn(config, role), connect_timeout=2) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return False
    return in_recovery is not None and in_recovery[0] == (role == "replica")


def describe(config: StackConfig, role: str) -> dict[str, str]:
    """The storage the server really runs, read from the server."""
    try:
        with psycopg.connect(dsn(config, role), connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
    except psycopg.Error:
        return {}
    return {"storage": f"timescaledb {row[0]}" if row else "native"}


def ensure_superuser_ready(config: StackConfig) -> bool:
    try:
        with psycopg.connect(superuser_dsn(config), connect_timeout=2):
            return True
    except psycopg.Error:
        return False
