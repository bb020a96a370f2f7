"""`telemetry doctor` and the ops page's findings: the platform's known bottlenecks, named
from the live metrics in Prometheus, each with its evidence and what to do
(docs/ops.md, "telemetry doctor").

The queries are fixed here; `diagnose` is pure (the answers in, the findings out), so each
pattern is tested on recorded answers. The patterns:

- stream lag by partition: with skew (a hot key), without (too few workers, up to the
  partition count), or no consumer at all;
- the database bound on writes: the stream's flushes slow or failing while it lags, with
  PostgreSQL's CPU and lock waits (the postgres exporter's queries, infra/exporters.py) to
  tell a busy server from a blocked one; and backends waiting long for a lock on their own;
- the read path: no standby streaming from the primary, the replica lagging past the api's
  limit, reads moved to the primary, the api's database gate refusing reads;
- the view cache: a low hit ratio under traffic, or Redis failing it;
- connections near their limit at any tier: HAProxy's frontends, PostgreSQL's servers,
  PgBouncer (and its clients waiting for a server), the notifier's processes;
- ingest saturated (a process near a whole core) or refusing pings (Kafka away);
- the machine's CPU near saturation."""

import asyncio
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from schemas.topics import DRIVER_TOPIC_PARTITIONS, STREAMS_GROUP

WARNING = "warning"
CRITICAL = "critical"

# Thresholds: where a figure stops being healthy (the alert rules' own where they overlap).
LAG_WARN_S = 30.0
LAG_CRITICAL_S = 120.0
SKEW = 5.0  # the worst partition this many times the typical one: a hot key
FLUSH_SLOW_S = 1.0
REPLICA_LAG_S = 5.0  # the api's default replica_max_lag_s
HIT_RATIO_LOW = 0.5
CACHE_TRAFFIC_PER_S = 1.0
CONNECTIONS_NEAR = 0.8
CPU_NEAR = 0.9
LOCK_WAIT_S = 5.0  # five times the migrations' lock_timeout: no migration holds one so long
DATABASE_CPU_SHARE = 0.5  # a server using half the machine's cores bounds it on CPU

QUERIES: dict[str, str] = {
    "partition_lag_s": "max by (group, topic, partition) (telemetry_consumer_lag_seconds)",
    "partition_lag_messages": (
        "max by (group, topic, partition) (telemetry_consumer_lag_messages)"
    ),
    "group_members": "max by (group) (telemetry_consumer_group_members)",
    "flush_p99_s": (
        "histogram_quantile(0.99, sum by (le) (rate(streams_flush_seconds_bucket[5m])))"
    ),
    "batch_failures_per_s": "sum(rate(streams_batch_failures_total[5m]))",
    "postgres_cpu_cores": "max by (process) (rate(pg_server_cpu_seconds_total[1m]))",
    "lock_waiting": "max by (process) (pg_lock_waits_waiting)",
    "lock_wait_longest_s": "max by (process) (max_over_time(pg_lock_waits_longest_seconds[5m]))",
    "machine_cores": 'count(node_cpu_seconds_total{mode="idle"})',
    "primary_standbys": (
        "max by (process) (pg_standbys_streaming and on (process) (pg_server_is_primary == 1))"
    ),
    "replica_lag_s": "max(telemetry_replica_replay_lag_seconds)",
    "replica_skipped_per_s": "sum(rate(api_replica_skipped_total[5m]))",
    "db_gate_refused_per_s": "sum(rate(api_db_saturated_total[5m]))",
    "cache_requests_per_s": "sum(rate(api_cache_requests_total[5m]))",
    "cache_hits_per_s": 'sum(rate(api_cache_requests_total{result="hit"}[5m]))',
    "cache_failures_per_s": "sum(rate(api_cache_unavailable_total[5m]))",
    "frontend_sessions": "max by (proxy) (haproxy_frontend_current_sessions)",
    "frontend_limit": "max by (proxy) (haproxy_frontend_limit_sessions)",
    # Every other tier's connections as a share of its limit, by what holds them.
    "postgres_connections_used": (
        "sum by (process) (pg_stat_activity_count) / max by (process) (pg_settings_max_connections)"
    ),
    "pgbouncer_clients_used": (
        "sum(telemetry_pgbouncer_clients) / max(telemetry_pgbouncer_max_client_connections)"
    ),
    "pgbouncer_wait_s": "max by (database) (telemetry_pgbouncer_max_wait_seconds)",
    "notifier_connections_used": (
        "max by (process) (notifier_connections / notifier_connections_limit)"
    ),
    "ingest_cpu": 'rate(process_cpu_seconds_total{job="ingest"}[1m])',
    "ingest_refused_per_s": "sum(rate(ingest_unavailable_total[5m]))",
    "machine_cpu_busy": '1 - avg(rate(node_cpu_seconds_total{mode="idle"}[1m]))',
}

# One query's answer: (labels, value) per series.
Series = Sequence[tuple[Mapping[str, str], float]]


@dataclass(frozen=True)
class Finding:
    """A bottleneck named: how bad, what shows it, and what to do."""

    pattern: str
    severity: str
    summary: str
    advice: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PrometheusUnanswered(Exception):
    """Prometheus did not answer, or refused a query."""


async def ask(
    url: str, transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 5.0
) -> dict[str, Series]:
    """Every query's answer from the Prometheus at `url`, non-finite values left out."""

    async def one(client: httpx.AsyncClient, expr: str) -> Series:
        try:
            response = await client.get(url + "/api/v1/query", params={"query": expr})
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusUnanswered(f"{url}: {exc!r}") from exc
        if body.get("status") != "success":
            raise PrometheusUnanswered(f"{expr}: {body.get('error', response.text[:200])}")
        samples = [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]
        return [(labels, value) for labels, value in samples if math.isfinite(value)]

    async with httpx.AsyncClient(transport=transport, timeout=timeout_s) as client:
        answers = await asyncio.gather(*(one(client, expr) for expr in QUERIES.values()))
    return dict(zip(QUERIES, answers, strict=True))


def scalar(answers: Mapping[str, Series], name: str) -> float | None:
    series = answers.get(name, ())
    return series[0][1] if series else None


def by(answers: Mapping[str, Series], name: str, label: str) -> dict[str, float]:
    return {labels.get(label, ""): value for labels, value in answers.get(name, ())}


def exit_code(findings: Sequence[Finding]) -> int:
    """0 healthy, 1 warnings, 2 anything critical."""
    if any(f.severity == CRITICAL for f in findings):
        return 2
    return 1 if findings else 0


def diagnose(answers: Mapping[str, Series]) -> list[Finding]:
    findings: list[Finding] = []
    for check in (_stream, _database, _read_path, _cache, _connections, _ingest, _machine):
        findings.extend(check(answers))
    return findings


def _stream(answers: Mapping[str, Series]) -> list[Finding]:
    lag: dict[str, dict[str, float]] = {}
    for labels, value in answers.get("partition_lag_s", ()):
        lag.setdefault(labels.get("group", ""), {})[labels.get("partition", "")] = value
    waiting: dict[str, float] = {}
    for labels, value in answers.get("partition_lag_messages", ()):
        group = labels.get("group", "")
        waiting[group] = waiting.get(group, 0.0) + value
    members = by(answers, "group_members", "group")
    findings = []
    for group in sorted(set(lag) | set(waiting)):
        partitions = lag.get(group, {})
        if members.get(group, 1) == 0 and waiting.get(group, 0) > 0:
            oldest = max(partitions.values(), default=0.0)
            findings.append(
                Finding(
                    "stream-stopped",
                    CRITICAL,
                    f"{group} has no consumer: {waiting[group]:.0f} records wait, the "
                    f"oldest {oldest:.0f} s",
                    "Start its processes (`telemetry up`; `telemetry status` shows which are "
                    "down) and read their logs (`telemetry logs`).",
                    {
                        "group": group,
                        "members": 0,
                        "records_waiting": waiting[group],
                        "worst_lag_s": round(oldest, 1),
                    },
                )
            )
            continue
        worst_partition, worst = max(partitions.items(), key=lambda kv: kv[1], default=("", 0))
        if worst < LAG_WARN_S:
            continue
        typical = statistics.median(partitions.values())
        severity = CRITICAL if worst >= LAG_CRITICAL_S else WARNING
        evidence = {
            "group": group,
            "worst_partition": worst_partition,
            "worst_lag_s": round(worst, 1),
            "median_lag_s": round(typical, 1),
            "members": members.get(group),
        }
        if worst >= SKEW * max(typical, 1.0):
            findings.append(
                Finding(
                    "stream-lag-hot-key",
                    severity,
                    f"{group} lags on partition {worst_partition} ({worst:.0f} s) while the "
                    f"others keep up (median {typical:.0f} s): a hot key",
                    "One key (a driver posting far more than the others, or a replay) "
                    "loads one partition; more workers do not help it. Find the key "
                    "(`telemetry lag`, the partition's records) and limit or fix its "
                    "sender.",
                    evidence,
                )
            )
            continue
        count = members.get(group)
        if count is not None and count < DRIVER_TOPIC_PARTITIONS:
            advice = (
                f"Every partition lags alike and {count:.0f} workers share "
                f"{DRIVER_TOPIC_PARTITIONS} partitions: `telemetry scale streams "
                f"{min(int(count) * 2, DRIVER_TOPIC_PARTITIONS)}` (at most "
                f"{DRIVER_TOPIC_PARTITIONS}; past that a worker idles)."
            )
        else:
            advice = (
                "A worker per partition already: the limit is past the workers (see the "
                "database finding, if any)."
            )
        findings.append(
            Finding(
                "stream-lag",
                severity,
                f"{group} is {worst:.0f} s behind on every partition alike",
                advice,
                evidence,
            )
        )
    return findings


def _database(answers: Mapping[str, Series]) -> list[Finding]:
    flush = scalar(answers, "flush_p99_s")
    failures = scalar(answers, "batch_failures_per_s") or 0.0
    stream_lags = [
        v
        for labels, v in answers.get("partition_lag_s", ())
        if labels.get("group") == STREAMS_GROUP
    ]
    lagging = max(stream_lags, default=0.0) >= LAG_WARN_S
    cpu = {p: round(v, 2) for p, v in by(answers, "postgres_cpu_cores", "process").items()}
    locks = by(answers, "lock_wait_longest_s", "process")
    findings = _lock_waits(answers, locks)
    if failures > 0:
        findings.append(
            Finding(
                "database-writes-failing",
                CRITICAL,
                f"the stream's batches fail to write ({failures:.2f}/s)",
                "The database refuses or drops the stream's writes: `telemetry status` "
                "(PostgreSQL's nodes, PgBouncer), `telemetry logs streams`. Under Patroni a "
                "failover takes about 15 s and ends by itself.",
                {"batch_failures_per_s": round(failures, 3), "flush_p99_s": flush},
            )
        )
    elif flush is not None and flush >= FLUSH_SLOW_S and lagging:
        findings.append(_database_bound(flush, cpu, locks, scalar(answers, "machine_cores")))
    return findings


def _database_bound(
    flush: float, cpu: dict[str, float], locks: dict[str, float], cores: float | None
) -> Finding:
    """The stream lags on slow flushes: blocked (lock waits), busy (CPU), or neither."""
    evidence: dict[str, Any] = {
        "flush_p99_s": round(flush, 3),
        "postgres_cpu_cores": cpu,
        "lock_wait_longest_s": {p: round(v, 1) for p, v in locks.items()},
        "machine_cores": cores,
    }
    busiest, busiest_cpu = max(cpu.items(), key=lambda kv: kv[1], default=("", 0.0))
    if max(locks.values(), default=0.0) >= LOCK_WAIT_S:
        cause = "writes wait for locks"
        advice = (
            "Something holds a lock the writes need (see the postgres-lock-waits finding): "
            "end or shorten it; more workers only queue more writers behind it."
        )
    elif cores and busiest_cpu >= DATABASE_CPU_SHARE * cores:
        cause = f"{busiest} uses {busiest_cpu:.1f} of the machine's {cores:.0f} cores"
        advice = (
            "PostgreSQL's CPU bounds the writes: more workers will not help. Look at what "
            "else it runs (`pg_stat_statements`: the continuous aggregates' refresh, the "
            "api's reads if the replica is away), or give it more cores."
        )
    else:
        cause = "neither its CPU nor lock waits"
        advice = (
            "Not CPU, not locks: the disk's writes and fsyncs (the node exporter's disk "
            "figures), or the network to it. `telemetry bench drain` shows where a flush's "
            "time goes."
        )
    return Finding(
        "database-bound-writes",
        WARNING,
        f"the stream lags and its flushes take {flush:.2f} s (p99): the database bounds "
        f"the writes ({cause})",
        advice,
        evidence,
    )


def _lock_waits(answers: Mapping[str, Series], longest: dict[str, float]) -> list[Finding]:
    waiting = by(answers, "lock_waiting", "process")
    return [
        Finding(
            "postgres-lock-waits",
            WARNING,
            f"statements on {process} waited {seconds:.0f} s for a lock in the last 5 "
            f"minutes ({waiting.get(process, 0):.0f} waiting now)",
            "Find the holder: `SELECT pid, pg_blocking_pids(pid), query FROM "
            "pg_stat_activity WHERE wait_event_type = 'Lock'` (the PostgresLockWaits "
            "runbook). Our migrations give up a lock after 1 s; a manual DDL or a long "
            "transaction is the usual holder.",
            {"process": process, "longest_s": round(seconds, 1), "waiting": waiting.get(process)},
        )
        for process, seconds in sorted(longest.items())
        if seconds >= LOCK_WAIT_S
    ]


def _read_path(answers: Mapping[str, Series]) -> list[Finding]:
    findings = [
        Finding(
            "standby-missing",
            WARNING,
            f"no standby streams from the primary ({primary}): a failover has nowhere to "
            "go, and the reads run on the primary",
            "See the StandbyNotStreaming runbook: `telemetry status` (the node down?), "
            "its log (`telemetry logs postgres-N`).",
            {"primary": primary, "standbys_streaming": 0},
        )
        for primary, streaming in by(answers, "primary_standbys", "process").items()
        if streaming < 1
    ]
    lag = scalar(answers, "replica_lag_s")
    skipped = scalar(answers, "replica_skipped_per_s") or 0.0
    if lag is not None and lag >= REPLICA_LAG_S:
        findings.append(
            Finding(
                "replica-lagging",
                WARNING,
                f"the replica replays {lag:.0f} s behind; the api reads from the primary",
                "The primary carries the reads too while this lasts: see the ReplicaLagging "
                "runbook (docs/runbooks/ReplicaLagging.md).",
                {
                    "replica_lag_s": round(lag, 1),
                    "reads_moved_per_s": round(skipped, 2),
                    # A replica busy replaying, or with reads, shows its CPU here.
                    "postgres_cpu_cores": by(answers, "postgres_cpu_cores", "process"),
                },
            )
        )
    refused = scalar(answers, "db_gate_refused_per_s") or 0.0
    if refused > 0:
        findings.append(
            Finding(
                "read-path-overloaded",
                WARNING,
                f"the api's database gate refuses {refused:.2f} reads/s (503 overloaded)",
                "More reads than the database connections the api may hold: raise the "
                "cache's hit ratio first, then the gate (`API_DB_MAX_CONCURRENCY`) or the "
                "api's processes (`telemetry scale api N`).",
                {"refused_per_s": round(refused, 3)},
            )
        )
    return findings


def _cache(answers: Mapping[str, Series]) -> list[Finding]:
    failures = scalar(answers, "cache_failures_per_s") or 0.0
    if failures > 0:
        return [
            Finding(
                "cache-failing",
                WARNING,
                f"Redis fails the api's view cache ({failures:.2f}/s): views come from the "
                "database",
                "See the CacheDegraded runbook (docs/runbooks/CacheDegraded.md).",
                {"failures_per_s": round(failures, 3)},
            )
        ]
    requests = scalar(answers, "cache_requests_per_s") or 0.0
    hits = scalar(answers, "cache_hits_per_s") or 0.0
    if requests >= CACHE_TRAFFIC_PER_S and hits / requests < HIT_RATIO_LOW:
        return [
            Finding(
                "cache-low-hit-ratio",
                WARNING,
                f"the view cache answers {hits / requests:.0%} of {requests:.1f} reads/s",
                "Most reads reach the database: views read once each (many distinct jobs) "
                "cannot hit; a view read often and missing means its time to live is short "
                "for how often it is read, or the writes invalidate it as fast.",
                {"hit_ratio": round(hits / requests, 3), "requests_per_s": round(requests, 2)},
            )
        ]
    return []


# (query, the label naming what holds them, the tier, what to do near the limit)
TIERS = (
    (
        "postgres_connections_used", "process", "PostgreSQL",
        "Connections from outside PgBouncer, or idle in a transaction: see the "
        "PostgresConnectionsNearLimit runbook.",
    ),
    (
        "pgbouncer_clients_used", "", "PgBouncer",
        "More client connections than its max_client_conn allows soon: see the "
        "PgBouncerConnectionsNearLimit runbook.",
    ),
    (
        "notifier_connections_used", "process", "the notifier",
        "`telemetry scale notifier N`, with HAProxy's notifier budget.",
    ),
)  # fmt: skip


def _connections(answers: Mapping[str, Series]) -> list[Finding]:
    limits = by(answers, "frontend_limit", "proxy")
    findings = []
    for query, label, tier, advice in TIERS:
        for labels, used in answers.get(query, ()):
            if used >= CONNECTIONS_NEAR:
                holder = labels.get(label, "") if label else ""
                findings.append(
                    Finding(
                        "connections-near-limit",
                        CRITICAL if used >= 1 else WARNING,
                        f"{tier}{f' ({holder})' if holder else ''} uses {used:.0%} of its "
                        "connections",
                        advice,
                        {"tier": tier, "holder": holder, "used": round(used, 3)},
                    )
                )
    for labels, waited in answers.get("pgbouncer_wait_s", ()):
        if waited >= 1.0:
            findings.append(
                Finding(
                    "pgbouncer-clients-waiting",
                    WARNING,
                    f"clients of PgBouncer's {labels.get('database', '')} wait {waited:.1f} s "
                    "for a server",
                    "Its pool's servers are all busy: slow transactions, or a pool too small "
                    "(the PgBouncerClientsWaiting runbook).",
                    {"database": labels.get("database", ""), "max_wait_s": round(waited, 2)},
                )
            )
    for proxy, current in sorted(by(answers, "frontend_sessions", "proxy").items()):
        limit = limits.get(proxy)
        if limit and current / limit >= CONNECTIONS_NEAR:
            findings.append(
                Finding(
                    "connections-near-limit",
                    CRITICAL if current >= limit else WARNING,
                    f"HAProxy's {proxy} holds {current:.0f} of its {limit:.0f} connections",
                    "New connections queue or are refused past the limit: raise it "
                    "(docs/configuration.md, `TELEMETRY_HAPROXY_*_MAXCONN`) if the machine "
                    "has the file descriptors, or add processes behind it.",
                    {"proxy": proxy, "sessions": current, "limit": limit},
                )
            )
    return findings


def _ingest(answers: Mapping[str, Series]) -> list[Finding]:
    findings = []
    refused = scalar(answers, "ingest_refused_per_s") or 0.0
    if refused > 0:
        findings.append(
            Finding(
                "ingest-refusing",
                CRITICAL,
                f"ingest answers 503 to {refused:.2f} batches/s: Kafka does not take them",
                "Kafka is away or refuses writes (a full disk, brokers down): `telemetry "
                "status`; drivers resend from their buffers meanwhile.",
                {"refused_per_s": round(refused, 3)},
            )
        )
    busy = {labels.get("process", ""): v for labels, v in answers.get("ingest_cpu", ())}
    saturated = {p: round(v, 2) for p, v in busy.items() if v >= CPU_NEAR}
    if saturated:
        findings.append(
            Finding(
                "ingest-saturated",
                WARNING,
                f"ingest processes near a whole core: {', '.join(sorted(saturated))}",
                "Each ingest process uses one core at most: `telemetry scale ingest N` (up "
                "to the machine's cores, which the other tiers share).",
                {"cpu_cores_by_process": saturated},
            )
        )
    return findings


def _machine(answers: Mapping[str, Series]) -> list[Finding]:
    busy = scalar(answers, "machine_cpu_busy")
    if busy is not None and busy >= CPU_NEAR:
        return [
            Finding(
                "machine-cpu-saturated",
                WARNING,
                f"the machine's CPU is {busy:.0%} busy",
                "Every tier shares these cores: scaling one takes from the others. Find the "
                "busiest (`telemetry bench` reports CPU per component) or add cores.",
                {"cpu_busy": round(busy, 3)},
            )
        ]
    return []
