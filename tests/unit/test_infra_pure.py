"""Pure parts of the stack tooling: migrations discovery, pid identity, configs."""

import os
import sys
from pathlib import Path

import pytest

from cli.main import redact, status_exit_code
from infra import kafka, pgbouncer
from infra.components import Component, components
from infra.config import StackConfig
from infra.launch import Command
from infra.migrate import Migration, discover
from infra.procs import ProcessRef, StackError, free_port, port_open, start_ticks
from infra.stack import Stack


def test_migrations_are_ordered_and_start_with_pings() -> None:
    migrations = discover()
    versions = [m.version for m in migrations]
    assert versions == sorted(versions)
    assert versions[0] == "0001_pings"
    assert "PARTITION BY RANGE (ts)" in migrations[0].sql


def test_the_timescale_path_swaps_in_hypertables_and_policies() -> None:
    native = {m.version: m.sql for m in discover()}
    timescale = {m.version: m.sql for m in discover(timescale=True)}
    assert native.keys() == timescale.keys()  # same versions whichever storage
    assert "create_hypertable('pings', by_range('ts'" in timescale["0001_pings"]
    assert "add_compression_policy('pings'" in timescale["0001_pings"]
    assert "add_retention_policy('pings'" in timescale["0001_pings"]
    assert "PARTITION BY" not in timescale["0001_pings"]
    aggregates = timescale["0002_clean_and_aggregates"]
    assert "WITH (timescaledb.continuous)" in aggregates
    assert "add_continuous_aggregate_policy('driver_stats_1h'" in aggregates
    # The stream calls these on either storage; on TimescaleDB they have nothing to do.
    for function in ("ensure_pings_partitions", "drop_pings_partitions_before", "haversine_m"):
        assert f"CREATE FUNCTION {function}" in timescale["0001_pings"] + aggregates
    # Every table the stream writes exists with the same columns.
    for table in ("pings", "driver_positions", "driver_stats_1m", "cell_density_1m"):
        assert f"CREATE TABLE {table} (" in timescale["0001_pings"] + aggregates


def test_an_edited_migration_has_another_checksum() -> None:
    assert Migration("1", "SELECT 1").checksum != Migration("1", "SELECT 2").checksum


def test_a_no_transaction_migration_runs_its_steps_apart() -> None:
    plain = Migration("1", "CREATE TABLE a (x int);\nCREATE TABLE b (x int);\n")
    assert plain.transactional
    online = Migration(
        "2",
        "-- migrate: no-transaction\n-- why\nCREATE PROCEDURE p() ...;\n"
        "-- migrate: step\nCALL p();\n-- migrate: step\n\n-- migrate: step\nDROP PROCEDURE p();\n",
    )
    assert not online.transactional
    steps = online.steps()
    assert [s.strip().splitlines()[-1] for s in steps] == [
        "CREATE PROCEDURE p() ...;",
        "CALL p();",
        "DROP PROCEDURE p();",
    ]
    # A procedure that commits as it goes must be called alone: in a string of several
    # statements PostgreSQL refuses its COMMIT.
    for storage in (False, True):
        late_window = {m.version: m for m in discover(timescale=storage)}["0014_late_window_online"]
        assert not late_window.transactional
        assert "CALL fill_late_window();" in [s.strip() for s in late_window.steps()]


def test_a_recycled_pid_is_not_ours() -> None:
    me = ProcessRef(os.getpid(), start_ticks(os.getpid()) or 0)
    assert me.alive()
    assert not ProcessRef(me.pid, me.start_ticks + 1).alive()


@pytest.mark.loopback  # ports and processes of its own on 127.0.0.1
def test_free_port_is_free() -> None:
    assert not port_open(free_port())


def test_kafka_properties_use_the_configured_ports(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, kafka_port=29092, kafka_controller_port=29093)
    text = kafka.write_properties(config).read_text()
    assert "listeners=PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093" in text
    assert "controller.quorum.voters=1@127.0.0.1:29093" in text


def test_pgbouncer_runs_transaction_mode_with_both_entries(tmp_path: Path) -> None:
    config = StackConfig(
        state_dir=tmp_path,
        postgres_primary_port=25432,
        postgres_replica_port=25433,
        pgbouncer_port=26432,
    )
    ini = pgbouncer.write_config(config).read_text()
    assert "pool_mode = transaction" in ini
    assert "telemetry = host=127.0.0.1 port=25432" in ini
    assert "telemetry_ro = host=127.0.0.1 port=25433" in ini
    assert "dbname=telemetry_ro" in pgbouncer.dsn(config, read_only=True)


def test_the_registry_lists_each_component_after_its_dependencies(tmp_path: Path) -> None:
    config = StackConfig(state_dir=tmp_path, ingest_processes=2, stream_workers=2)
    listed = components(config, report=lambda _: None)
    names = [c.name for c in listed]
    database = ["etcd", "postgres-1", "postgres-2", "haproxy-db"]
    assert names[:7] == ["kafka", "redis", *database, "pgbouncer"]
    assert {"ingest-1", "ingest-2", "streams-1", "streams-2", "api-1"} <= set(names)
    light = components(config.model_copy(update={"postgres_ha": False}), report=lambda _: None)
    assert [c.name for c in light][:5] == [
        "kafka", "redis", "postgres-primary", "postgres-replica", "pgbouncer"
    ]  # fmt: skip
    for each in (listed, light):
        names = [c.name for c in each]
        for position, component in enumerate(each):
            assert set(component.after) <= set(names[:position]), component.name
        ports = [port for c in each for port, _ in c.ports]
        assert len(ports) == len(set(ports))
        assert all(env.startswith("TELEMETRY_") for c in each for _, env in c.ports)


def test_status_fails_only_for_a_required_component() -> None:
    healthy = {"healthy": True, "required": True}
    simulator_stopped = {"healthy": False, "required": False}
    assert status_exit_code({"kafka": healthy, "simulator": simulator_stopped}) == 0
    assert status_exit_code({"kafka": {"healthy": False, "required": True}}) == 1


def test_status_json_hides_passwords() -> None:
    shown = redact({"pgbouncer": {"dsn": "host=h password=s3cret user=u", "pid": 7}})
    assert shown == {"pgbouncer": {"dsn": "host=h password=*** user=u", "pid": 7}}
    shown = redact({"redis": {"url": "redis://:s3cr-et_x@127.0.0.1:16379/0"}})
    assert shown == {"redis": {"url": "redis://:***@127.0.0.1:16379/0"}}


# Exits at its first start (as a Faust worker crashing in its recovery does), then runs.
FLAKY = """
import pathlib, sys, threading
marks = pathlib.Path(sys.argv[1])
starts = int(marks.read_text()) + 1 if marks.exists() else 1
marks.write_text(str(starts))
if starts <= int(sys.argv[2]):
    sys.exit("crashed in recovery")
threading.Event().wait()  # then runs until stopped
"""


def _flaky_stack(tmp_path: Path, crashes: int, attempts: int) -> tuple[Stack, list[str]]:
    said: list[str] = []
    stack = Stack(StackConfig(state_dir=tmp_path, startup_timeout_s=10), report=said.append)
    marks = tmp_path / "starts"
    component = Component(
        "flaky",
        command=lambda: Command(
            "flaky", None, [sys.executable, "-c", FLAKY, str(marks), str(crashes)]
        ),
        ready=lambda: marks.exists() and int(marks.read_text()) > crashes,
        ports=(),
        endpoint={},
        start_attempts=attempts,
    )
    stack.components = {"flaky": component}
    return stack, said


@pytest.mark.loopback  # ports and processes of its own on 127.0.0.1
def test_a_service_that_exits_during_start_up_is_started_again(tmp_path: Path) -> None:
    stack, said = _flaky_stack(tmp_path, crashes=1, attempts=3)
    try:
        stack.start("flaky")
        assert stack.running("flaky")
        assert (tmp_path / "starts").read_text() == "2"
        assert any("crashed in recovery" in line and "attempt 2" in line for line in said)
    finally:
        stack.down()


@pytest.mark.loopback  # ports and processes of its own on 127.0.0.1
def test_a_service_that_keeps_exiting_fails_with_its_reason(tmp_path: Path) -> None:
    stack, _ = _flaky_stack(tmp_path, crashes=5, attempts=2)
    with pytest.raises(StackError, match=r"(?s)flaky exited during start-up.*crashed in recovery"):
        stack.start("flaky")
    assert (tmp_path / "starts").read_text() == "2"
