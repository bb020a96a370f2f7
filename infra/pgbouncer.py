"""PgBouncer in transaction mode: `telemetry` goes to the primary, `telemetry_ro` to the replica."""

from pathlib import Path

import psycopg

from infra import postgres
from infra.config import StackConfig
from infra.launch import Command
from infra.procs import chown_for_service

READ_WRITE_DB = "telemetry"
READ_ONLY_DB = "telemetry_ro"
PGBOUNCER = "/usr/sbin/pgbouncer"


def conf_dir(config: StackConfig) -> Path:
    return config.state_dir / "pgbouncer"


def ini_path(config: StackConfig) -> Path:
    return conf_dir(config) / "pgbouncer.ini"


def write_config(config: StackConfig) -> Path:
    directory = conf_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    chown_for_service(directory)
    secret = postgres.password(config)
    userlist = directory / "userlist.txt"
    userlist.write_text(f'"{postgres.APP_USER}" "{secret}"\n')
    userlist.chmod(0o600)
    chown_for_service(userlist)
    ini = ini_path(config)
    ini.write_text(
        f"""[databases]
{READ_WRITE_DB} = host=127.0.0.1 port={config.postgres_primary_port} dbname={postgres.DATABASE}
{READ_ONLY_DB} = host=127.0.0.1 port={config.postgres_replica_port} dbname={postgres.DATABASE}

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
query_wait_timeout = 10
idle_transaction_timeout = {config.idle_in_transaction_timeout_s}
ignore_startup_parameters = extra_float_digits,options
stats_users = {postgres.APP_USER}
"""
    )
    chown_for_service(ini)
    return ini


def command(config: StackConfig) -> Command:
    return Command(
        "pgbouncer", "pgbouncer", [PGBOUNCER, str(ini_path(config))], as_service_user=True
    )


def dsn(config: StackConfig, *, read_only: bool) -> str:
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
