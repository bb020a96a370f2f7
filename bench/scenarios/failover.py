"""failover: Kafka brokers killed with SIGKILL under a fleet of drivers, on a stack of its
own with three brokers (`up --kafka 3`). For each kill: ingest's window of failed answers
(from the kill to the last failure after it), how many answers failed and how, when no
partition was led by the dead broker any more, and how long the broker took to rejoin
(every partition three copies in sync again) once started again. At the end: the pings
ingest acknowledged against those stored.

PostgreSQL leader kills are not part of it yet: the stack's PostgreSQL has no automatic
failover (docs/ha.md)."""

import asyncio
import shutil
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
from infra import kafka, postgres
from infra.stack import Stack, scratch_config
from runtime.auth import issue_token
from runtime.geo import destination
from schemas import topics
from schemas.auth import Role

# This scenario starts its own stack: it kills brokers.
NEEDS_STACK = False


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


def windows(kills: list[dict[str, Any]], answers: list[tuple[float, int]]) -> None:
    """Adds to each kill the answers sent while the broker was down, with the window from
    the kill to the last failed one, and the answers sent from its start to the next kill
    (a broker starting takes CPU the others need, on two cores)."""
    ends = [k["killed_at"] for k in kills[1:]] + [float("inf")]
    for kill, end in zip(kills, ends, strict=True):
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
    settle_s = float(options.get("settle_s", 15))
    config = scratch_config("telemetry-bench-failover-", kafka_brokers=3)
    own = Stack(config, stack.report)
    try:
        own.up()
        fleet = Fleet(own, drivers, interval_s)

        async def drive() -> list[dict[str, Any]]:
            limits = httpx.Limits(max_connections=drivers, max_keepalive_connections=drivers)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                tasks = [asyncio.create_task(fleet.driver(client, i)) for i in range(drivers)]
                try:
                    return await broker_kills(own, fleet, kills, settle_s)
                finally:
                    await asyncio.sleep(settle_s)
                    fleet.running = False
                    await asyncio.gather(*tasks)

        started = time.monotonic()
        result = asyncio.run(drive())
        windows(result, fleet.answers)
        stack.report("waiting for the stream to store every acknowledged ping")
        deadline = time.monotonic() + 180
        stored = stored_of(own, fleet.acked)
        while stored < len(fleet.acked) and time.monotonic() < deadline:
            time.sleep(1)
            stored = stored_of(own, fleet.acked)
    finally:
        own.down()
        shutil.rmtree(config.state_dir, ignore_errors=True)
    for kill in result:
        kill["killed_at_s"] = round(kill.pop("killed_at") - started, 1)
        kill.pop("restarted_at")
    first = min((k["killed_at_s"] for k in result), default=float("inf"))
    return {
        "config": {
            "drivers": drivers,
            "interval_s": interval_s,
            "broker_kills": kills,
            "settle_s": settle_s,
        },
        "broker_kills": result,
        "answers": dict(Counter(str(s) for _, s in fleet.answers)),
        "answers_before_the_first_kill": dict(
            Counter(str(s) for t, s in fleet.answers if t - started < first)
        ),
        "unavailable_reasons": dict(fleet.unavailable),
        "timeline": [(round(t - started, 2), s) for t, s in fleet.answers],
        "acknowledged": len(fleet.acked),
        "stored": stored,
        "lost": len(fleet.acked) - stored,
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
        f"acknowledged {report['acknowledged']} pings, stored {report['stored']},"
        f" lost {report['lost']}"
    )
    lines.append("PostgreSQL leader kills: not measured (no automatic failover yet, docs/ha.md)")
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
    for k in report["broker_kills"]:
        ax.axvline(k["killed_at_s"], color="red", linestyle="--")
        ax.annotate(f"kill {k['broker']}", (k["killed_at_s"], 0), rotation=90, fontsize=8)
    ax.set_xlabel("s since the fleet started")
    ax.legend()
    return save_figure(fig, path)
