"""PgBouncer in transaction mode: `telemetry` goes to the primary, `telemetry_ro` to the
replica; `telemetry_api` and `telemetry_api_ro` are the same servers for the services that
answer clients (the api, the notifier), whose every statement is bounded by a timeout."""

from pathlib import Path

import psycopg

from infra import postgres
from infra.config import StackConfig
from infra.launch import Command, Mount
from infra.procs import DATABASE_USER, chown_for

READ_WRITE_DB = "telemetry"
READ_ONLY_DB = "telemetry_ro"
# A client's request must not hold a server past this, however heavy its query: the pools
# are per entry, so a session setting on these servers' connections stays with them (set
# once per server connection, never leaking to the stream's or the workers' entries).
BOUNDED_DB = "telemetry_api"
BOUNDED_READ_ONLY_DB = "telemetry_api_ro"
PGBOUNCER = "/usr/sbin/pgbouncer"


def conf_dir(config: StackConfig) -> Path:
    return config.state_dir / "pgbouncer"


def ini_path(config: StackConfig) -> Path:
    return conf_dir(config) / "pgbouncer.ini"


def write_config(config: StackConfig) -> Path:
    directory = conf_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    chown_for(directory, DATABASE_USER)
    secret = postgres.password(config)
    userlist = directory / "userlist.txt"
    userlist.write_text(f'"{postgres.APP_USER}" "{secret}"\n')
    userlist.chmod(0o600)
    chown_for(userlist, DATABASE_USER)
    ini = ini_path(config)
    primary = f"host=127.0.0.1 port={config.postgres_primary_port} dbname={postgres.DATABASE}"
    replica = f"host=127.0.0.1 port={config.postgres_replica_port} dbname={postgres.DATABASE}"
    timeout_ms = int(config.client_statement_timeout_s * 1000)
    bounded = f"connect_query='SET statement_timeout = {timeout_ms}'"
    ini.write_text(
        f"""[databases]
{READ_WRITE_DB} = {primary}
{READ_ONLY_DB} = {replica}
{BOUNDED_DB} = {primary} {bounded}
{BOUNDED_READ_ONLY_DB} = {replica} {bounded}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {config.pgbouncer_port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 20
reserve_pool_size = 5
server_connect_timeout = 5
# After a failed connection to PostgreSQL, try again this soon (the default waits 15 s): a
# failover's new leader is in rotation about a second after its promotion.
server_login_retry = 1
query_wait_timeout = 10
idle_transaction_timeout = {config.idle_in_transaction_timeout_s}
ignore_startup_parameters = extra_float_digits,options
stats_users = {postgres.APP_USER}
"""
    )
    chown_for(ini, DATABASE_USER)
    return ini


def command(config: StackConfig) -> Command:
    # Its configuration and the passwords' file, read-only: it writes nothing (no socket
    # file, no pid file).
    argv = [PGBOUNCER, str(ini_path(config))]
    mounts = (Mount(conf_dir(config)),)
    return Command("pgbouncer", "pgbouncer", argv, user=DATABASE_USER, mounts=mounts)


def dsn(config: StackConfig, *, read_only: bool, bounded: bool = False) -> str:
    """`bounded`: the entry whose statements time out (services that answer clients)."""
    if bounded:
        db = BOUNDED_READ_ONLY_DB if read_only else BOUNDED_DB
    else:
        db = READ_ONLY_DB if read_only else READ_WRITE_DB
    return (
        f"host=127.0.0.1 port={config.pgbouncer_port} dbname={db} "
        f"user={postgres.APP_USER} password={postgres.password(config)} connect_timeout=5"
    )


def ready(config: StackConfig) -> bool:
    try:
        with psycopg.connect(
            dsn(config, read_only=True), prepare_threshold=None, connect_timeout=2
        ) as conn:
            conn.execute("SELECT 1")
        with psycopg.connect(
            dsn(config, read_only=False), prepare_threshold=None, connect_timeout=2
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True
