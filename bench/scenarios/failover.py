"""failover: servers killed with SIGKILL under a fleet of drivers and customers creating
jobs, on a stack of its own with three Kafka brokers and PostgreSQL under Patroni (`up
--kafka 3`, Patroni being the default layout).

Kafka brokers first: for each kill, ingest's window of failed answers (from the kill to the
last failure after it), how many answers failed and how, when no partition was led by the
dead broker any more, and how long the broker took to rejoin (every partition three copies
in sync again) once started again.

Then PostgreSQL's leader: for each kill (Patroni and its server, kept down as a lost
machine would be), the write outage (from the kill to the first job created by a request
sent after it), the failed job answers, when the other node was promoted, and once the old
leader is started again how long it took to be the synchronous standby again (rewound and
caught up). Then the synchronous standby (not strict: the leader goes on alone): the job
answers while it is down and the longest a job waited. At the end: the pings and the jobs
acknowledged against those stored."""

import asyncio
import shutil
import statistics
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import matplotlib.pyplot as plt
import psycopg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench.report import save_figure
from infra import kafka, patroni, postgres
from infra.stack import Stack, scratch_config
from runtime.auth import issue_token
from runtime.geo import destination
from schemas import topics
from schemas.auth import Role

# This scenario starts its own stack: it kills brokers.
NEEDS_STACK = False
# The job its customers create.
JOB = {"pickup": {"lat": 12.97, "lon": 77.59}, "dropoff": {"lat": 12.93, "lon": 77.62}}


async def _leaders(bootstrap: str) -> tuple[Counter[int], int]:
    """Partitions of pings.v1 each broker leads, and the fewest copies in sync of any."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topics.PINGS])
        parts = described["partitions"]
        return Counter(p["leader"] for p in parts), min(len(p["isr"]) for p in parts)
    finally:
        await admin.close()


class Fleet:
    """Drivers posting one ping a request every `interval_s`, each answer kept with its time."""

    def __init__(self, stack: Stack, drivers: int, interval_s: float) -> None:
        self.urls = [url + "/v1/pings" for url in stack.urls("ingest")]
        key = stack.config.jwt_private_key
        prefix = f"failover{uuid.uuid4().hex[:6]}"
        self.tokens = [
            issue_token(key, sub=f"{prefix}-{i}", role=Role.DRIVER) for i in range(drivers)
        ]
        self.interval_s = interval_s
        # (monotonic time sent, status; 0: no answer); the 503s' reasons counted apart.
        self.answers: list[tuple[float, int]] = []
        self.unavailable: Counter[str] = Counter()
        self.acked: list[str] = []
        self.running = True

    async def driver(self, client: httpx.AsyncClient, i: int) -> None:
        url, token = self.urls[i % len(self.urls)], self.tokens[i]
        step = 0
        await asyncio.sleep(self.interval_s * i / len(self.tokens))  # spread over the interval
        while self.running:
            step += 1
            lat, lon = destination(12.97, 77.59, 90.0, float(step))
            ping_id = str(uuid.uuid4())
            ping = {
                "ping_id": ping_id,
                "ts": datetime.now(UTC).isoformat(),
                "lat": lat,
                "lon": lon,
            }
            sent = time.monotonic()
            try:
                r = await client.post(
                    url, json={"pings": [ping]}, headers={"Authorization": f"Bearer {token}"}
                )
                status = r.status_code
                if status == 503:
                    self.unavailable[r.json()["error"]["message"]] += 1
            except httpx.HTTPError:
                status = 0
            self.answers.append((sent, status))
            if status == 202:
                self.acked.append(ping_id)
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - sent)))


class Customers:
    """Customers creating jobs through the api, each one every `interval_s`, every answer
    kept with the times it was sent and answered."""

    def __init__(self, stack: Stack, customers: int, interval_s: float) -> None:
        self.url = stack.urls("api")[0] + "/v1/jobs"
        key = stack.config.jwt_private_key
        prefix = f"failover{uuid.uuid4().hex[:6]}"
        self.tokens = [
            issue_token(key, sub=f"{prefix}-c{i}", role=Role.CUSTOMER) for i in range(customers)
        ]
        self.interval_s = interval_s
        # (sent, answered, status; 0: no answer).
        self.answers: list[tuple[float, float, int]] = []
        self.created: list[str] = []
        self.running = True

    async def customer(self, client: httpx.AsyncClient, i: int) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[i]}"}
        await asyncio.sleep(self.interval_s * i / len(self.tokens))
        while self.running:
            sent = time.monotonic()
            try:
                r = await client.post(self.url, json=JOB, headers=headers)
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            self.answers.append((sent, time.monotonic(), status))
            if status == 201:
                self.created.append(r.json()["job_id"])
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - sent)))


def stored_jobs(stack: Stack, job_ids: list[str]) -> int:
    with psycopg.connect(postgres.dsn(stack.config, "primary")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE job_id = ANY(%s::uuid[])", [job_ids]
        ).fetchone()
    return int(row[0]) if row else 0


def stored_of(stack: Stack, ping_ids: list[str]) -> int:
    with psycopg.connect(postgres.dsn(stack.config, "primary")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pings WHERE ping_id = ANY(%s::uuid[])", [ping_ids]
        ).fetchone()
    return int(row[0]) if row else 0


async def _until(check: Any, timeout_s: float) -> float:
    """Seconds until `check()` (awaited) holds; -1 past the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await check():
            return round(time.monotonic() - started, 2)
        await asyncio.sleep(0.2)  # the poll interval, bounded by the deadline
    return -1.0


async def broker_kills(
    stack: Stack, fleet: Fleet, kills: int, settle_s: float
) -> list[dict[str, Any]]:
    config = stack.config
    bootstrap = config.kafka_bootstrap
    result = []
    for _ in range(kills):
        await asyncio.sleep(settle_s)
        leaders, _ = await _leaders(bootstrap)
        node = leaders.most_common(1)[0][0]
        name = kafka.name(config, node)
        stack.report(f"kill -9 {name} (leads {leaders[node]} partitions of {topics.PINGS})")
        killed_at = time.monotonic()
        await asyncio.to_thread(stack.kill, name)

        async def moved(node: int = node) -> bool:
            try:
                return node not in (await _leaders(bootstrap))[0]
            except (KafkaError, OSError, TimeoutError):  # a look during the election
                return False

        leaders_moved_s = await _until(moved, 60)
        await asyncio.sleep(settle_s)
        await asyncio.to_thread(stack.start, name)
        restarted_at = time.monotonic()

        async def rejoined() -> bool:
            return (await _leaders(bootstrap))[1] == 3

        rejoined_s = await _until(rejoined, 180)
        result.append(
            {
                "broker": name,
                "killed_at": killed_at,
                "restarted_at": restarted_at,
                "leaders_moved_s": leaders_moved_s,
                "down_s": round(restarted_at - killed_at, 1),
                "rejoined_s": rejoined_s,
            }
        )
    return result


def _settled(config: Any) -> bool:
    """One leader and its synchronous standby, on one timeline."""
    members = patroni.members(config)
    roles = sorted(str(m.get("role")) for m in members)
    return roles == ["leader", "sync_standby"] and len({m.get("timeline") for m in members}) == 1


async def node_kills(
    stack: Stack, kills: int, settle_s: float, *, leader: bool
) -> list[dict[str, Any]]:
    """PostgreSQL's leader (or its synchronous standby) killed, Patroni and its server, as a
    lost machine: kept down `settle_s` past the other node's promotion (past the kill, for
    the standby), then started again, and how long it took to be the synchronous standby
    again (rewound and caught up)."""
    config = stack.config
    role = "the PostgreSQL leader" if leader else "the synchronous standby"
    result = []
    for _ in range(kills):
        await asyncio.sleep(settle_s)
        if await _until(lambda: asyncio.to_thread(_settled, config), 180) < 0:
            raise RuntimeError("PostgreSQL's nodes did not settle before a kill")
        if leader:
            node = await asyncio.to_thread(patroni.leader, config)
        else:
            [node] = await asyncio.to_thread(patroni.replicas, config)
        assert node is not None
        name = patroni.name(node)
        stack.report(f"kill -9 {name}, {role} (Patroni and its server)")
        killed_at = time.monotonic()
        patroni.kill_server(config, node)
        await asyncio.to_thread(stack.kill, name)
        kill: dict[str, Any] = {"node": name, "killed_at": killed_at}

        async def promoted(node: int = node) -> bool:
            return await asyncio.to_thread(patroni.leader, config) not in (None, node)

        if leader:
            kill["promoted_s"] = await _until(promoted, 120)
        await asyncio.sleep(settle_s)
        await asyncio.to_thread(stack.start, name)
        kill["restarted_at"] = time.monotonic()
        kill["down_s"] = round(kill["restarted_at"] - killed_at, 1)
        kill["rejoined_s"] = await _until(lambda: asyncio.to_thread(_settled, config), 240)
        result.append(kill)
    return result


def write_stalls(kills: list[dict[str, Any]], answers: list[tuple[float, float, int]]) -> None:
    """Adds to each standby kill the job answers while it was down, and the longest a job
    request sent then waited for its answer."""
    for kill in kills:
        down = [(a - t, s) for t, a, s in answers if kill["killed_at"] <= t < kill["restarted_at"]]
        kill["job_answers_while_down"] = dict(Counter(str(s) for _, s in down))
        kill["longest_job_answer_s"] = round(max((w for w, _ in down), default=0.0), 2)


def write_outages(kills: list[dict[str, Any]], answers: list[tuple[float, float, int]]) -> None:
    """Adds to each leader kill its write outage: from the kill to the answer of the first
    job created by a request sent after it; and the job answers until the next kill."""
    ends = [k["killed_at"] for k in kills[1:]] + [float("inf")]
    for kill, end in zip(kills, ends, strict=False):  # no kills: nothing
        after = [(a, s) for t, a, s in answers if kill["killed_at"] <= t < end]
        created = [a for a, s in after if s == 201]
        kill["outage_s"] = round(min(created) - kill["killed_at"], 2) if created else -1.0
        kill["job_answers"] = dict(Counter(str(s) for _, s in after))


def windows(kills: list[dict[str, Any]], answers: list[tuple[float, int]]) -> None:
    """Adds to each kill the answers sent while the broker was down, with the window from
    the kill to the last failed one, and the answers sent from its start to the next kill
    (a broker starting takes CPU the others need, on two cores)."""
    ends = [k["killed_at"] for k in kills[1:]] + [float("inf")]
    for kill, end in zip(kills, ends, strict=False):  # no kills: nothing
        down = [(t, s) for t, s in answers if kill["killed_at"] <= t < kill["restarted_at"]]
        failed = [t for t, s in down if s != 202]
        kill["answers_while_down"] = dict(Counter(str(s) for _, s in down))
        kill["window_s"] = round(max(failed) - kill["killed_at"], 2) if failed else 0.0
        back = [s for t, s in answers if kill["restarted_at"] <= t < end]
        kill["answers_after_start"] = dict(Counter(str(s) for s in back))


def run(stack: Stack, options: dict[str, Any]) -> dict[str, Any]:
    drivers = int(options.get("drivers", 200))
    interval_s = float(options.get("interval_s", 1.0))
    kills = int(options.get("broker_kills", 3))
    leader_kills = int(options.get("leader_kills", 10))
    standby_kills = int(options.get("standby_kills", 2))
    customers = int(options.get("customers", 5))
    job_every_s = float(options.get("job_every_s", 0.5))
    settle_s = float(options.get("settle_s", 15))
    config = scratch_config("telemetry-bench-failover-", kafka_brokers=3, postgres_ha=True)
    own = Stack(config, stack.report)
    try:
        own.up()
        fleet = Fleet(own, drivers, interval_s)
        writers = Customers(own, customers, job_every_s)

        async def drive() -> tuple[list[dict[str, Any]], ...]:
            limits = httpx.Limits(max_connections=drivers, max_keepalive_connections=drivers)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                tasks = [asyncio.create_task(fleet.driver(client, i)) for i in range(drivers)]
                tasks += [
                    asyncio.create_task(writers.customer(client, i)) for i in range(customers)
                ]
                try:
                    brokers = await broker_kills(own, fleet, kills, settle_s)
                    leaders = await node_kills(own, leader_kills, settle_s, leader=True)
                    standbys = await node_kills(own, standby_kills, settle_s, leader=False)
                    return brokers, leaders, standbys
                finally:
                    await asyncio.sleep(settle_s)
                    fleet.running = writers.running = False
                    await asyncio.gather(*tasks)

        started = time.monotonic()
        result, leaders, standbys = asyncio.run(drive())
        windows(result, fleet.answers)
        write_outages(leaders, writers.answers)
        write_stalls(standbys, writers.answers)
        stack.report("waiting for the stream to store every acknowledged ping")
        deadline = time.monotonic() + 180
        stored = stored_of(own, fleet.acked)
        while stored < len(fleet.acked) and time.monotonic() < deadline:
            time.sleep(1)
            stored = stored_of(own, fleet.acked)
        jobs_stored = stored_jobs(own, writers.created)
    finally:
        own.down()
        shutil.rmtree(config.state_dir, ignore_errors=True)
    for kill in result + leaders + standbys:
        kill["killed_at_s"] = round(kill.pop("killed_at") - started, 1)
        kill.pop("restarted_at")
    first = min((k["killed_at_s"] for k in result), default=float("inf"))
    outages = sorted(k["outage_s"] for k in leaders)
    return {
        "config": {
            "drivers": drivers,
            "interval_s": interval_s,
            "broker_kills": kills,
            "leader_kills": leader_kills,
            "standby_kills": standby_kills,
            "customers": customers,
            "job_every_s": job_every_s,
            "settle_s": settle_s,
        },
        "broker_kills": result,
        "leader_kills": leaders,
        "standby_kills": standbys,
        "write_outage_p50_s": round(statistics.median(outages), 2) if outages else None,
        "write_outage_max_s": outages[-1] if outages else None,
        "answers": dict(Counter(str(s) for _, s in fleet.answers)),
        "answers_before_the_first_kill": dict(
            Counter(str(s) for t, s in fleet.answers if t - started < first)
        ),
        "unavailable_reasons": dict(fleet.unavailable),
        "timeline": [(round(t - started, 2), s) for t, s in fleet.answers],
        "job_timeline": [(round(t - started, 2), s) for t, _, s in writers.answers],
        "acknowledged": len(fleet.acked),
        "stored": stored,
        "lost": len(fleet.acked) - stored,
        "jobs_acknowledged": len(writers.created),
        "jobs_stored": jobs_stored,
        "jobs_lost": len(writers.created) - jobs_stored,
    }


def summary(report: dict[str, Any]) -> list[str]:
    c = report["config"]
    lines = [
        f"{c['drivers']} drivers, a ping each every {c['interval_s']} s, to ingest; three"
        f" brokers; {c['broker_kills']} kill -9s of the broker leading the most partitions",
    ]
    for k in report["broker_kills"]:
        lines.append(
            f"{k['broker']} killed at {k['killed_at_s']} s: ingest's failure window"
            f" {k['window_s']} s, answers while down {k['answers_while_down']}; leaders moved"
            f" in {k['leaders_moved_s']} s; started again after {k['down_s']} s, rejoined (3"
            f" in sync) in {k['rejoined_s']} s; answers from its start to the next kill"
            f" {k['answers_after_start']}"
        )
    lines.append(
        f"answers before the first kill {report['answers_before_the_first_kill']};"
        f" 503s by reason {report['unavailable_reasons']}"
    )
    lines.append(
        f"{c['customers']} customers each creating a job every {c['job_every_s']} s;"
        f" {c['leader_kills']} kill -9s of the PostgreSQL leader, kept down {c['settle_s']} s"
        " past the promotion"
    )
    for k in report["leader_kills"]:
        lines.append(
            f"{k['node']} killed at {k['killed_at_s']} s: write outage {k['outage_s']} s"
            f" (the other promoted in {k['promoted_s']} s); job answers until the next kill"
            f" {k['job_answers']}; started again after {k['down_s']} s, the synchronous"
            f" standby again in {k['rejoined_s']} s"
        )
    lines.append(
        f"write outage p50 {report['write_outage_p50_s']} s, max {report['write_outage_max_s']} s"
    )
    for k in report["standby_kills"]:
        lines.append(
            f"the standby {k['node']} killed at {k['killed_at_s']} s: job answers while it was"
            f" down {k['job_answers_while_down']}, the longest wait for one"
            f" {k['longest_job_answer_s']} s; started again after {k['down_s']} s, the"
            f" synchronous standby again in {k['rejoined_s']} s"
        )
    lines.append(
        f"acknowledged {report['acknowledged']} pings, stored {report['stored']},"
        f" lost {report['lost']}; jobs created {report['jobs_acknowledged']}, stored"
        f" {report['jobs_stored']}, lost {report['jobs_lost']}"
    )
    return lines


def plot(report: dict[str, Any], path: Path) -> Path:
    """Answers a second, accepted and failed, with the kills marked."""
    per_second: dict[int, Counter[str]] = {}
    for t, status in report["timeline"]:
        per_second.setdefault(int(t), Counter())["202" if status == 202 else "failed"] += 1
    seconds = sorted(per_second)
    fig, ax = plt.subplots(figsize=(12, 5))
    fig.suptitle(f"{report['scenario']} - {report['started_at']}")
    ax.plot(seconds, [per_second[s]["202"] for s in seconds], label="202 a second")
    ax.plot(seconds, [per_second[s]["failed"] for s in seconds], label="failed a second")
    jobs: dict[int, Counter[str]] = {}
    for t, status in report["job_timeline"]:
        jobs.setdefault(int(t), Counter())["201" if status == 201 else "failed"] += 1
    job_seconds = sorted(jobs)
    ax.plot(job_seconds, [jobs[s]["201"] for s in job_seconds], label="jobs created a second")
    ax.plot(job_seconds, [jobs[s]["failed"] for s in job_seconds], label="jobs failed a second")
    for k in report["broker_kills"] + report["leader_kills"] + report["standby_kills"]:
        victim = k.get("broker") or k["node"]
        ax.axvline(k["killed_at_s"], color="red", linestyle="--")
        ax.annotate(f"kill {victim}", (k["killed_at_s"], 0), rotation=90, fontsize=8)
    ax.set_xlabel("s since the fleet started")
    ax.legend()
    return save_figure(fig, path)
