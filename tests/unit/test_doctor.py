"""`telemetry doctor`'s patterns on recorded Prometheus answers: each bottleneck named with
its evidence, the healthy platform with none, and the exit code from the worst finding."""

from typing import Any

import httpx
import pytest

from runtime import doctor
from runtime.doctor import CRITICAL, WARNING, Finding, diagnose, exit_code
from schemas.topics import STREAMS_GROUP

PARTITIONS = [str(p) for p in range(12)]
LEADER, STANDBY = "postgres-1-exporter", "postgres-2-exporter"
SERVERS_CPU = [({"process": LEADER}, 0.3), ({"process": STANDBY}, 0.1)]


def lag(seconds: list[float], group: str = STREAMS_GROUP) -> list[tuple[dict[str, str], float]]:
    return [
        ({"group": group, "topic": "pings.v1", "partition": p}, s)
        for p, s in zip(PARTITIONS, seconds, strict=False)
    ]


def healthy(**changes: Any) -> dict[str, Any]:
    """A platform keeping up: little lag, fast flushes, a warm cache, idle CPU."""
    answers: dict[str, Any] = {
        "partition_lag_s": lag([0.5] * 12),
        "partition_lag_messages": [(labels, 3.0) for labels, _ in lag([0.0] * 12)],
        "group_members": [({"group": STREAMS_GROUP}, 2.0)],
        "flush_p99_s": [({}, 0.08)],
        "batch_failures_per_s": [({}, 0.0)],
        "postgres_cpu_cores": SERVERS_CPU,
        "lock_waiting": [(labels, 0.0) for labels, _ in SERVERS_CPU],
        "lock_wait_longest_s": [(labels, 0.0) for labels, _ in SERVERS_CPU],
        "machine_cores": [({}, 2.0)],
        "primary_standbys": [({"process": LEADER}, 1.0)],
        "replica_lag_s": [({}, 0.2)],
        "replica_skipped_per_s": [({}, 0.0)],
        "db_gate_refused_per_s": [({}, 0.0)],
        "cache_requests_per_s": [({}, 40.0)],
        "cache_hits_per_s": [({}, 36.0)],
        "cache_failures_per_s": [({}, 0.0)],
        "frontend_sessions": [({"proxy": "public"}, 120.0)],
        "frontend_limit": [({"proxy": "public"}, 8000.0)],
        "ingest_cpu": [({"process": "ingest-1"}, 0.3), ({"process": "ingest-2"}, 0.25)],
        "ingest_refused_per_s": [({}, 0.0)],
        "machine_cpu_busy": [({}, 0.45)],
    }
    return answers | changes


def patterns(findings: list[Finding]) -> list[str]:
    return [f.pattern for f in findings]


def test_a_healthy_platform_has_no_finding_and_exits_0() -> None:
    assert diagnose(healthy()) == []
    assert exit_code([]) == 0


def test_lag_on_every_partition_with_few_workers_asks_for_more_workers() -> None:
    [found] = diagnose(healthy(partition_lag_s=lag([45.0] * 12)))
    assert found.pattern == "stream-lag" and found.severity == WARNING
    assert "telemetry scale streams 4" in found.advice  # twice the 2 members
    assert found.evidence["members"] == 2.0 and found.evidence["worst_lag_s"] == 45.0
    [critical] = diagnose(healthy(partition_lag_s=lag([150.0] * 12)))
    assert critical.severity == CRITICAL
    assert exit_code([found]) == 1 and exit_code([found, critical]) == 2


def test_lag_with_a_worker_per_partition_points_past_the_workers() -> None:
    answers = healthy(
        partition_lag_s=lag([45.0] * 12), group_members=[({"group": STREAMS_GROUP}, 12.0)]
    )
    [found] = diagnose(answers)
    assert "scale" not in found.advice and "past the workers" in found.advice


def test_one_partition_far_behind_the_others_is_a_hot_key() -> None:
    [found] = diagnose(healthy(partition_lag_s=lag([300.0] + [2.0] * 11)))
    assert found.pattern == "stream-lag-hot-key" and found.severity == CRITICAL
    assert found.evidence["worst_partition"] == "0" and found.evidence["median_lag_s"] == 2.0
    assert "more workers do not help" in found.advice


def test_a_group_with_no_consumer_and_records_waiting_is_stopped() -> None:
    answers = healthy(group_members=[({"group": STREAMS_GROUP}, 0.0)])
    [found] = diagnose(answers)
    assert found.pattern == "stream-stopped" and found.severity == CRITICAL
    assert found.evidence["records_waiting"] == 36.0
    assert found.evidence["worst_lag_s"] == 0.5  # the lag, with the records behind it


def test_slow_flushes_while_lagging_are_the_database_bounding_writes() -> None:
    answers = healthy(partition_lag_s=lag([45.0] * 12), flush_p99_s=[({}, 2.5)])
    assert patterns(diagnose(answers)) == ["stream-lag", "database-bound-writes"]
    # Neither busy nor blocked: the finding says so, and points at the disk.
    bound = diagnose(answers)[1]
    assert "neither its CPU nor lock waits" in bound.summary and "disk" in bound.advice
    assert bound.evidence["postgres_cpu_cores"] == {LEADER: 0.3, STANDBY: 0.1}
    # Slow flushes without lag are not (yet) a bottleneck.
    assert diagnose(healthy(flush_p99_s=[({}, 2.5)])) == []
    failing = diagnose(healthy(batch_failures_per_s=[({}, 0.2)]))
    assert patterns(failing) == ["database-writes-failing"]
    assert failing[0].severity == CRITICAL


def test_a_database_bound_on_its_cpu_is_told_from_one_blocked_by_a_lock() -> None:
    lagging = {"partition_lag_s": lag([45.0] * 12), "flush_p99_s": [({}, 2.5)]}
    busy = healthy(**lagging, postgres_cpu_cores=[({"process": LEADER}, 1.6)])
    [_, bound] = diagnose(busy)
    assert f"{LEADER} uses 1.6 of the machine's 2 cores" in bound.summary
    assert "CPU bounds the writes" in bound.advice
    # A lock held for a minute: a finding of its own, and the bound writes blame it even
    # with the server busy.
    blocked = healthy(
        **lagging,
        postgres_cpu_cores=[({"process": LEADER}, 1.6)],
        lock_waiting=[({"process": LEADER}, 3.0)],
        lock_wait_longest_s=[({"process": LEADER}, 61.0)],
    )
    found = diagnose(blocked)
    assert patterns(found) == ["stream-lag", "postgres-lock-waits", "database-bound-writes"]
    assert found[1].evidence == {"process": LEADER, "longest_s": 61.0, "waiting": 3.0}
    assert "pg_blocking_pids" in found[1].advice
    assert "writes wait for locks" in found[2].summary
    assert found[2].evidence["lock_wait_longest_s"] == {LEADER: 61.0}


def test_lock_waits_without_lag_are_named_and_short_ones_are_not() -> None:
    long_wait = healthy(lock_wait_longest_s=[({"process": STANDBY}, 12.0)])
    [found] = diagnose(long_wait)
    assert found.pattern == "postgres-lock-waits" and found.severity == WARNING
    assert f"statements on {STANDBY} waited 12 s" in found.summary
    # A migration's 1 s lock_timeout is not a finding.
    assert diagnose(healthy(lock_wait_longest_s=[({"process": LEADER}, 1.0)])) == []


def test_a_primary_with_no_standby_streaming_is_named() -> None:
    [found] = diagnose(healthy(primary_standbys=[({"process": LEADER}, 0.0)]))
    assert found.pattern == "standby-missing" and found.severity == WARNING
    assert found.evidence == {"primary": LEADER, "standbys_streaming": 0}
    # No primary reachable at all is PostgreSQL's own finding (its exporter), not this one.
    assert diagnose(healthy(primary_standbys=[])) == []


def test_the_read_path_lagging_replica_and_gate_refusals() -> None:
    answers = healthy(
        replica_lag_s=[({}, 12.0)],
        replica_skipped_per_s=[({}, 3.0)],
        db_gate_refused_per_s=[({}, 0.5)],
    )
    found = diagnose(answers)
    assert patterns(found) == ["replica-lagging", "read-path-overloaded"]
    assert found[0].evidence == {
        "replica_lag_s": 12.0,
        "reads_moved_per_s": 3.0,
        "postgres_cpu_cores": {LEADER: 0.3, STANDBY: 0.1},
    }


def test_a_cold_cache_under_traffic_and_a_failing_one() -> None:
    [cold] = diagnose(healthy(cache_hits_per_s=[({}, 8.0)]))
    assert cold.pattern == "cache-low-hit-ratio" and cold.evidence["hit_ratio"] == 0.2
    # Little traffic says nothing of the ratio.
    quiet = healthy(cache_requests_per_s=[({}, 0.2)], cache_hits_per_s=[({}, 0.0)])
    assert diagnose(quiet) == []
    [failing] = diagnose(healthy(cache_failures_per_s=[({}, 1.5)]))
    assert failing.pattern == "cache-failing"


def test_connections_near_a_frontend_s_limit() -> None:
    [near] = diagnose(healthy(frontend_sessions=[({"proxy": "public"}, 7000.0)]))
    assert near.pattern == "connections-near-limit" and near.severity == WARNING
    [full] = diagnose(healthy(frontend_sessions=[({"proxy": "public"}, 8000.0)]))
    assert full.severity == CRITICAL and full.evidence["proxy"] == "public"


def test_connections_near_the_limit_at_every_tier_and_pgbouncer_s_waits() -> None:
    answers = healthy(
        postgres_connections_used=[({"process": "postgres-1-exporter"}, 0.85)],
        pgbouncer_clients_used=[({}, 1.0)],
        notifier_connections_used=[({"process": "notifier-1"}, 0.3)],
        pgbouncer_wait_s=[({"database": "telemetry_bounded"}, 2.5), ({"database": "x"}, 0.0)],
    )
    found = diagnose(answers)
    tiers = [(f.evidence.get("tier"), f.severity) for f in found]
    assert tiers == [("PostgreSQL", WARNING), ("PgBouncer", CRITICAL), (None, WARNING)]
    assert found[0].evidence["holder"] == "postgres-1-exporter"
    assert found[2].pattern == "pgbouncer-clients-waiting"
    assert found[2].evidence == {"database": "telemetry_bounded", "max_wait_s": 2.5}


def test_ingest_saturated_or_refusing_and_the_machine_busy() -> None:
    answers = healthy(
        ingest_cpu=[({"process": "ingest-1"}, 0.97), ({"process": "ingest-2"}, 0.4)],
        machine_cpu_busy=[({}, 0.95)],
    )
    found = diagnose(answers)
    assert patterns(found) == ["ingest-saturated", "machine-cpu-saturated"]
    assert found[0].evidence == {"cpu_cores_by_process": {"ingest-1": 0.97}}
    [refusing] = diagnose(healthy(ingest_refused_per_s=[({}, 4.0)]))
    assert refusing.pattern == "ingest-refusing" and refusing.severity == CRITICAL


def test_missing_metrics_are_no_finding() -> None:
    # A young stack, or a part not scraped yet: nothing to say, nothing invented.
    assert diagnose({}) == []


async def test_ask_reads_each_query_and_drops_non_finite_values() -> None:
    def prometheus(request: httpx.Request) -> httpx.Response:
        query = request.url.params["query"]
        value = "NaN" if query == doctor.QUERIES["flush_p99_s"] else "1.5"
        result = [{"metric": {"group": "g"}, "value": [0, value]}]
        return httpx.Response(200, json={"status": "success", "data": {"result": result}})

    answers = await doctor.ask("http://p", transport=httpx.MockTransport(prometheus))
    assert set(answers) == set(doctor.QUERIES)
    assert answers["flush_p99_s"] == [] and answers["replica_lag_s"] == [({"group": "g"}, 1.5)]

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"status": "error", "error": "parse error"})

    with pytest.raises(doctor.PrometheusUnanswered, match="parse error"):
        await doctor.ask("http://p", transport=httpx.MockTransport(refusing))
