"""PostgreSQL under Patroni as the stack declares it (`up`'s default): each node's
Patroni configuration, HAProxy's frontends on Patroni's checks, and the components."""

import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from infra import components, haproxy, haproxy_db, patroni, pgbouncer, postgres
from infra.config import StackConfig
from infra.containers import images
from infra.procs import StackError
from runtime.postgres import TRANSIENT_ERRORS


def config(tmp_path: Path, **overrides: object) -> StackConfig:
    return StackConfig(
        state_dir=tmp_path,
        postgres_ha=True,
        postgres_node_port=31000,
        patroni_port=31100,
        etcd_port=31200,
        **overrides,  # type: ignore[arg-type]
    )


def test_each_node_has_its_own_ports_and_dirs_and_one_store(tmp_path: Path) -> None:
    ha = config(tmp_path)
    one, two = (patroni.render(ha, n, timescaledb=True) for n in (1, 2))
    assert (one["name"], two["name"]) == ("postgres-1", "postgres-2")
    assert one["scope"] == two["scope"]
    assert one["etcd3"] == two["etcd3"] == {"hosts": ["127.0.0.1:31200"]}
    assert one["postgresql"]["listen"] == "127.0.0.1:31000"
    assert two["postgresql"]["listen"] == "127.0.0.1:31001"
    assert two["restapi"]["listen"] == "127.0.0.1:31101"
    assert one["postgresql"]["data_dir"] != two["postgresql"]["data_dir"]
    assert two["postgresql"]["parameters"]["unix_socket_directories"] == str(
        postgres.node_socket_dir(ha, 2)
    )


def test_commits_wait_for_the_standby_and_a_lost_store_keeps_the_leader(tmp_path: Path) -> None:
    dcs = patroni.render(config(tmp_path), 1, timescaledb=False)["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True
    # Not strict: with the standby gone the leader goes on alone (docs/ha.md says so).
    assert dcs["synchronous_mode_strict"] is False
    assert dcs["failsafe_mode"] is True
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["parameters"]["wal_log_hints"] == "on"  # pg_rewind needs it
    # Patroni's rule: a leader that cannot reach the store demotes before its lock lapses.
    assert dcs["ttl"] >= dcs["loop_wait"] + 2 * dcs["retry_timeout"]


def test_timescaledb_is_preloaded_through_patroni_with_equal_workers(tmp_path: Path) -> None:
    rendered = patroni.render(config(tmp_path), 1, timescaledb=True)
    local = rendered["postgresql"]["parameters"]
    shared = rendered["bootstrap"]["dcs"]["postgresql"]["parameters"]
    assert local["shared_preload_libraries"].split(",")[0] == "timescaledb"
    # Settings a replica must share with its primary live in the store, not per node.
    assert shared["max_worker_processes"] == postgres.TIMESCALEDB_SETTINGS["max_worker_processes"]
    assert not set(local) & set(shared)
    native = patroni.render(config(tmp_path), 1, timescaledb=False)["postgresql"]["parameters"]
    assert "timescaledb" not in native["shared_preload_libraries"]


def test_the_superuser_is_local_only_and_the_rest_api_guards_changes(tmp_path: Path) -> None:
    rendered = patroni.render(config(tmp_path), 1, timescaledb=False)
    hba = rendered["postgresql"]["pg_hba"]
    reject = f"host all {postgres.SUPERUSER} 127.0.0.1/32 reject"
    assert hba.index(reject) < hba.index("host all all 127.0.0.1/32 scram-sha-256")
    auth = rendered["postgresql"]["authentication"]
    assert {auth[k]["username"] for k in auth} == {
        postgres.SUPERUSER, postgres.REPLICATION_USER, patroni.REWIND_USER,
    }  # fmt: skip
    assert rendered["restapi"]["authentication"]["username"] == patroni.REST_USER
    assert rendered["restapi"]["authentication"]["password"] == postgres.password(config(tmp_path))


def test_haproxy_sends_writes_to_the_leader_and_reads_to_a_replica_or_the_leader(
    tmp_path: Path,
) -> None:
    ha = config(tmp_path, postgres_primary_port=31300, postgres_replica_port=31301)
    text = haproxy_db.render(ha)
    backends = dict(re.findall(r"backend (\w+)\n((?:    .*\n)+)", text))
    assert "uri /primary" in backends["primary"] and "uri /replica" in backends["replica"]
    for body in backends.values():
        assert "server postgres-1 127.0.0.1:31000 check port 31100" in body
        assert "server postgres-2 127.0.0.1:31001 check port 31101" in body
    assert "bind 127.0.0.1:31300\n    default_backend primary" in text
    assert "bind 127.0.0.1:31301\n    default_backend replica" in text
    # With no replica up, reads go to whichever node the primary backend has up; a replica
    # back ends those sessions, so PgBouncer's read connections move back to it.
    replica = backends["replica"]
    assert "server postgres-2-leading 127.0.0.1:31001 backup track primary/postgres-2" in replica
    assert replica.count(" on-marked-up shutdown-backup-sessions") == 2
    # A node leaving the rotation ends its connections: clients reconnect to the leader.
    assert "on-marked-down shutdown-sessions" in text
    if Path(haproxy.BINARY).exists():
        path = tmp_path / "haproxy.cfg"
        path.write_text(text)
        subprocess.run(haproxy.check_command(path), check=True)


def show_stat(*rows: str) -> str:
    """A `show stat` answer (HAProxy 2.6's, with only the columns `checked` reads)."""
    return "# pxname,svname,status,check_status,\n" + "".join(f"{row},\n" for row in rows)


# HAProxy's answers just after a start, with postgres-1 leading and postgres-2 a standby.
STARTED = (
    "primary,FRONTEND,OPEN,",
    "primary,postgres-1,UP 1/2,INI",
    "primary,postgres-2,UP 1/2,INI",
    "primary,BACKEND,UP,",
    "replica,FRONTEND,OPEN,",
    "replica,postgres-1,UP 1/2,INI",
    "replica,postgres-2,UP 1/2,INI",
    "replica,postgres-1-leading,UP,",
    "replica,postgres-2-leading,UP,",
    "replica,BACKEND,UP,",
)


def settle(rows: tuple[str, ...], **states: str) -> tuple[str, ...]:
    """`rows` with the named servers' (backend__server) status and check result replaced."""
    changed = []
    for row in rows:
        backend, server, *_ = row.split(",")
        state = states.get(f"{backend}__{server}".replace("-", "_"))
        changed.append(f"{backend},{server},{state}" if state else row)
    return tuple(changed)


def test_haproxy_db_is_ready_only_once_every_node_has_had_its_first_check() -> None:
    # Until its first check, HAProxy counts the standby up in the primary's backend: a
    # connection to the primary's port could reach it, and a write fail read-only.
    assert not haproxy_db.checked(haproxy.stat_rows(show_stat(*STARTED)))
    leader_checked = settle(STARTED, primary__postgres_1="UP,L7OK")
    assert not haproxy_db.checked(haproxy.stat_rows(show_stat(*leader_checked)))
    settled = settle(
        STARTED,
        primary__postgres_1="UP,L7OK",
        primary__postgres_2="DOWN,L7STS",
        replica__postgres_1="DOWN,L7STS",
        replica__postgres_2="UP,L7OK",
        replica__postgres_2_leading="DOWN,",
    )
    assert haproxy_db.checked(haproxy.stat_rows(show_stat(*settled)))
    # No standby up: reads reach the leader through its backup server.
    alone = settle(settled, replica__postgres_2="DOWN,L4CON", primary__postgres_2="DOWN,L4CON")
    assert haproxy_db.checked(haproxy.stat_rows(show_stat(*alone)))
    # No leader (mid-failover): the primary's port leads nowhere.
    leaderless = settle(
        settled, primary__postgres_1="DOWN,L7STS", primary__BACKEND="DOWN,", replica__BACKEND="UP,"
    )
    assert not haproxy_db.checked(haproxy.stat_rows(show_stat(*leaderless)))


def test_the_stack_runs_etcd_two_supervised_nodes_and_haproxy_before_pgbouncer(
    tmp_path: Path,
) -> None:
    listed = {c.name: c for c in components.components(config(tmp_path), lambda _: None)}
    assert "postgres-primary" not in listed and "postgres-replica" not in listed
    for name in ("etcd", "postgres-1", "postgres-2", haproxy_db.NAME):
        assert listed[name].supervised
    assert listed["postgres-1"].after == ("etcd",)
    assert listed[haproxy_db.NAME].after == ("postgres-1", "postgres-2")
    assert listed["pgbouncer"].after == (haproxy_db.NAME,)
    names = list(listed)
    assert names.index(haproxy_db.NAME) < names.index("pgbouncer")
    # Clients keep the primary's and the replica's ports: HAProxy's now.
    ports = {port for port, _ in listed[haproxy_db.NAME].ports}
    assert ports == {config(tmp_path).postgres_primary_port, config(tmp_path).postgres_replica_port}
    # The default; the lighter layout is asked for.
    assert StackConfig().postgres_ha
    light = StackConfig(state_dir=tmp_path, postgres_ha=False)
    plain = {c.name for c in components.components(light, lambda _: None)}
    assert {"postgres-primary", "postgres-replica"} <= plain and "etcd" not in plain


def test_pgbouncer_retries_a_lost_server_within_a_second(tmp_path: Path) -> None:
    ini = pgbouncer.write_config(config(tmp_path)).read_text()
    assert "server_login_retry = 1\n" in ini


def test_a_database_keeps_the_layout_it_was_made_with(tmp_path: Path) -> None:
    ha = config(tmp_path)
    (postgres.data_dir(ha, "primary")).mkdir(parents=True)
    (postgres.data_dir(ha, "primary") / "PG_VERSION").write_text("15\n")
    with pytest.raises(StackError, match="TELEMETRY_POSTGRES_HA=false"):
        postgres.check_layout(ha)
    postgres.check_layout(StackConfig(state_dir=tmp_path, postgres_ha=False))
    other = tmp_path / "other"
    postgres.node_data_dir(config(other), 2).mkdir(parents=True)
    (postgres.node_data_dir(config(other), 2) / "PG_VERSION").write_text("15\n")
    with pytest.raises(StackError, match="TELEMETRY_POSTGRES_HA=true"):
        postgres.check_layout(StackConfig(state_dir=other, postgres_ha=False))
    postgres.check_layout(config(other))


def test_on_containers_each_runs_from_an_image_of_ours(tmp_path: Path) -> None:
    on_containers = config(tmp_path, runtime="containers")
    listed = {c.name: c for c in components.components(on_containers, lambda _: None)}
    built = {image.name for image in images.IMAGES}
    for name, image in (("etcd", "etcd"), ("postgres-1", "patroni"), (haproxy_db.NAME, "haproxy")):
        command = listed[name].command()
        assert command.image == image and image in built
        assert command.user == ("haproxy" if image == "haproxy" else "postgres")
    # A node's container sees its own directory (data, socket, config), not the other's.
    (mount,) = listed["postgres-2"].command().mounts
    assert mount.path == postgres.node_dir(on_containers, 2) and mount.writable


def test_a_failovers_errors_are_transient_a_503_or_a_retried_batch() -> None:
    # A write reaching a demoted server, and a connection whose server PgBouncer lost in
    # the middle of a command (psycopg: "received 2 results from command 'BEGIN'").
    assert issubclass(psycopg.errors.ReadOnlySqlTransaction, TRANSIENT_ERRORS)
    assert issubclass(psycopg.InternalError, TRANSIENT_ERRORS)
    assert issubclass(psycopg.errors.AdminShutdown, TRANSIENT_ERRORS)
    # What is wrong with the data itself stays what it is.
    assert not issubclass(psycopg.errors.UniqueViolation, TRANSIENT_ERRORS)
