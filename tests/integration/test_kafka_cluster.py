"""Kafka as a three-broker KRaft cluster (`telemetry up --kafka 3`, docs/ha.md): topics
with three copies taking a write once two have it, and a broker killed with SIGKILL under a
fleet of drivers while a customer follows a job. Nothing acknowledged is lost: every ping
answered 202 is stored; ingest answers 503 only, inside one window after the kill; the
stream, the relay and the notifier go on; the broker rejoins when started again, and the
supervisor restarts one that crashes.

The stack is this module's own: it kills brokers."""

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench.scenarios.failover import stored_of
from bench.ws_client import JobWatcher, watch_until
from infra import kafka
from infra.stack import Stack
from runtime.auth import issue_token
from schemas import topics
from schemas.auth import Role
from tests.support.fleet import Fleet
from tests.support.stack import running_stack, scratch_config, until, wait_for

pytestmark = pytest.mark.integration

DRIVERS = 20
# After the kill: the window is over once this many pings in a row were answered 202.
RECOVERED_RUN = 300
JOB = {"pickup": {"lat": 12.97, "lon": 77.59}, "dropoff": {"lat": 12.93, "lon": 77.62}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Stack]:
    # On the lighter PostgreSQL layout (--no-postgres-ha): Kafka is what this module
    # tests, and so the suite runs both layouts (the others run the default, Patroni).
    config = scratch_config(kafka_brokers=3, postgres_ha=False)
    with running_stack(config, "cluster") as running:
        yield running


async def _describe(bootstrap: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topics.PINGS])
        [answer] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topics.PINGS)]
        )
        configs = {entry[0]: entry[1] for entry in answer.resources[0][4]}
        return list(described["partitions"]), configs
    finally:
        await admin.close()


def partitions(stack: Stack) -> list[dict[str, Any]]:
    return asyncio.run(_describe(stack.config.kafka_bootstrap))[0]


def test_topics_keep_three_copies_and_take_a_write_once_two_have_it(cluster: Stack) -> None:
    described, configs = asyncio.run(_describe(cluster.config.kafka_bootstrap))
    assert len(described) == topics.DRIVER_TOPIC_PARTITIONS
    assert all(sorted(p["replicas"]) == [1, 2, 3] for p in described)
    assert all(sorted(p["isr"]) == [1, 2, 3] for p in described)
    # Leadership is spread: each broker leads some partitions.
    assert {p["leader"] for p in described} == {1, 2, 3}
    assert configs["min.insync.replicas"] == "2"
    assert configs["unclean.leader.election.enable"] == "false"


def test_a_broker_killed_under_the_fleet_loses_nothing_acknowledged(cluster: Stack) -> None:
    config = cluster.config
    fleet = Fleet(cluster, DRIVERS)
    api = cluster.urls("api")[0]
    key = config.jwt_private_key
    owner, driver = f"cust-{uuid.uuid4().hex[:8]}", fleet.drivers[0]
    dispatcher = {"Authorization": f"Bearer {issue_token(key, sub='disp', role=Role.DISPATCHER)}"}
    customer = {"Authorization": f"Bearer {issue_token(key, sub=owner, role=Role.CUSTOMER)}"}
    r = httpx.post(api + "/v1/jobs", json=JOB, headers=customer, timeout=30)
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]

    # The broker leading the most partitions of pings.v1.
    leaders = Counter(p["leader"] for p in partitions(cluster))
    victim = kafka.name(config, leaders.most_common(1)[0][0])

    async def drive() -> tuple[list[int], list[int], list[int]]:
        async with httpx.AsyncClient(timeout=30) as client:
            before = [s for _ in range(5) for s in await fleet.round(client)]
            cluster.kill(victim)  # SIGKILL, and left down
            during: list[int] = []
            run = 0
            while run < RECOVERED_RUN:
                for status in await fleet.round(client):
                    during.append(status)
                    run = run + 1 if status == 202 else 0
                assert len(during) < 10 * RECOVERED_RUN, Counter(during)
            after = [s for _ in range(10) for s in await fleet.round(client)]
            # The relay and the notifier, on two brokers: an event and a position reach a
            # customer following the job.
            watcher = JobWatcher(
                cluster.records["notifier-1"].endpoint["ws"],
                customer["Authorization"].removeprefix("Bearer "),
                uuid.UUID(job_id),
            )

            async def act() -> None:
                await until(lambda: watcher.tally.snapshots == 1)
                r = await client.post(
                    f"{api}/v1/jobs/{job_id}/assign", json={"driver_id": driver},
                    headers=dispatcher,
                )  # fmt: skip
                assert r.status_code == 200, r.text
                await until(lambda: len(watcher.tally.events) >= 1)
                assert await fleet.post(client, driver) == 202

            actor = asyncio.create_task(act())
            seen = await watch_until(watcher, lambda m: m["type"] == "position", 90)
            await actor
            assert [m["type"] for m in seen][-1] == "position"
            return before, during, after

    before, during, after = asyncio.run(drive())
    assert set(before) == {202}
    # Failures are 503s only, and only inside one window: once pings were accepted again,
    # every later answer was a 202.
    assert set(during) <= {202, 503}, Counter(during)
    assert set(after) == {202}
    print(f"after the kill of {victim}: {Counter(during)}")

    # Every acknowledged ping is stored by the stream, on the two brokers left.
    wait_for(lambda: True if stored_of(cluster, fleet.acked) == len(fleet.acked) else None, 120)

    # Started again, the broker catches up: every partition has three copies in sync.
    cluster.start(victim)
    wait_for(lambda: True if all(len(p["isr"]) == 3 for p in partitions(cluster)) else None, 120)


def test_the_supervisor_restarts_a_crashed_broker(cluster: Stack) -> None:
    name = kafka.name(cluster.config, 2)
    crashed = cluster.records[name].ref
    cluster.crash(name)
    wait_for(lambda: True if cluster.records[name].ref != crashed else None, 60)
    wait_for(lambda: True if kafka.ready(cluster.config, 2) else None, 120)
    wait_for(lambda: True if all(len(p["isr"]) == 3 for p in partitions(cluster)) else None, 120)
    assert cluster.records[name].restarts >= 1
