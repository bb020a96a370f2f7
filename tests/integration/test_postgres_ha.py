"""PostgreSQL under Patroni (`telemetry up`'s default layout, docs/ha.md): two nodes, one
leading and one a synchronous standby, reached through HAProxy's primary and replica
ports. The leader killed with SIGKILL under a fleet of drivers and a writer of jobs, a
switchover under the same load, and etcd lost: every job answered 201 and every ping
answered 202 is in the database afterwards, a failed job is a 503 with Retry-After (never
a hang), writes succeed again, and the old leader comes back as a replica.

The stack is this module's own: it kills nodes."""

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from bench.scenarios.failover import JOB, stored_jobs, stored_of
from infra import patroni, postgres
from infra.config import StackConfig
from infra.stack import Stack
from runtime import doctor
from runtime.auth import issue_token
from schemas.auth import Role
from tests.support.fleet import Fleet
from tests.support.stack import running_stack, scratch_config, session_storage, wait_for

pytestmark = pytest.mark.integration

DRIVERS = 10
# After the fault: writes are back once this many jobs in a row were answered 201.
RECOVERED_RUN = 20


@pytest.fixture(scope="module")
def ha() -> Iterator[Stack]:
    with running_stack(scratch_config(postgres_ha=True), "postgres-ha") as running:
        yield running


def settled(stack: Stack) -> list[dict[str, object]] | None:
    """The members once one leads and the other streams from it as its synchronous
    standby, on the same timeline."""
    members = patroni.members(stack.config)
    roles = sorted(str(m.get("role")) for m in members)
    timelines = {m.get("timeline") for m in members}
    return members if roles == ["leader", "sync_standby"] and len(timelines) == 1 else None


def finding(config: StackConfig, pattern: str) -> doctor.Finding | None:
    found = doctor.diagnose(asyncio.run(doctor.ask(config.prometheus_url)))
    return next((f for f in found if f.pattern == pattern), None)


def test_one_leader_and_a_synchronous_standby_behind_the_two_ports(ha: Stack) -> None:
    config = ha.config
    wait_for(lambda: settled(ha), 120, 0.5)
    leader = patroni.leader(config)
    assert leader is not None
    standby = next(n for n in postgres.ha_nodes() if n != leader)
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        row = conn.execute("SELECT pg_is_in_recovery(), inet_server_port()").fetchone()
        assert row == (False, postgres.node_port(config, leader))
    with psycopg.connect(postgres.dsn(config, "replica")) as conn:
        row = conn.execute("SELECT pg_is_in_recovery(), inet_server_port()").fetchone()
        assert row == (True, postgres.node_port(config, standby))
    # A commit waits for the standby: Patroni names it the synchronous one.
    with psycopg.connect(postgres.superuser_dsn(config)) as conn:
        names = conn.execute("SHOW synchronous_standby_names").fetchone()
        commit = conn.execute("SHOW synchronous_commit").fetchone()
    assert names is not None and patroni.name(standby) in names[0]
    assert commit == ("on",)
    # Both nodes run the session's storage, and `telemetry status` shows their roles.
    for role in ("primary", "replica"):
        assert postgres.describe(config, role)["storage"].split()[0] == session_storage()
    status = ha.status()
    assert status[patroni.name(leader)]["role"] == "leader"
    assert status[patroni.name(standby)]["role"] == "sync_standby"
    assert status[patroni.name(leader)]["timeline"] == status[patroni.name(standby)]["timeline"]


class JobWriter:
    """A customer creating jobs one after another through the api, every answer kept."""

    def __init__(self, stack: Stack) -> None:
        self.url = stack.urls("api")[0] + "/v1/jobs"
        token = issue_token(
            stack.config.jwt_private_key, sub=f"cust-{uuid.uuid4().hex[:8]}", role=Role.CUSTOMER
        )
        self.headers = {"Authorization": f"Bearer {token}"}
        self.created: list[str] = []
        self.answers: list[int] = []
        self.unavailable_without_retry_after = 0

    async def post(self, client: httpx.AsyncClient) -> int:
        status, _ = await asyncio.gather(self._post(client), asyncio.sleep(JOB_EVERY_S))
        return status

    async def _post(self, client: httpx.AsyncClient) -> int:
        try:
            r = await client.post(self.url, json=JOB, headers=self.headers)
            status = r.status_code
        except httpx.TimeoutException:
            status = 0  # no answer at all: the contract promises one
        self.answers.append(status)
        if status == 201:
            self.created.append(r.json()["job_id"])
        elif status == 503 and "Retry-After" not in r.headers:
            self.unavailable_without_retry_after += 1
        return status


Fault = Callable[[], Coroutine[Any, Any, object]]
# Each driver pings this often, and the customer creates a job this often at most: under
# ingest's and the api's rate limits.
PING_EVERY_S = 0.5
JOB_EVERY_S = 0.05


def under_load(stack: Stack, fault: Fault) -> tuple[Fleet, JobWriter]:
    """Drivers pinging and a customer creating jobs one after another, before, during and
    after `fault`: all 202 and 201 before; after it, answers until RECOVERED_RUN jobs in a
    row were created; then all 202 and 201 again."""
    fleet, writer = Fleet(stack, DRIVERS), JobWriter(stack)

    async def drive() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(3):
                assert await writer.post(client) == 201
            pinging = asyncio.create_task(ping(client))
            faulted = asyncio.create_task(fault())
            run = 0
            while run < RECOVERED_RUN or not faulted.done():
                run = run + 1 if await writer.post(client) == 201 else 0
                assert len(writer.answers) < 5000, Counter(writer.answers)
            await faulted
            for _ in range(5):
                assert await writer.post(client) == 201
            pinging.cancel()

    async def ping(client: httpx.AsyncClient) -> None:
        while True:
            await asyncio.gather(fleet.round(client), asyncio.sleep(PING_EVERY_S))

    asyncio.run(drive())
    # Failures are 503s with Retry-After, never a hang or another error.
    assert set(writer.answers) <= {201, 503}, Counter(writer.answers)
    assert writer.unavailable_without_retry_after == 0
    assert set(fleet.answers) == {202}, Counter(fleet.answers)
    print(f"jobs answered: {Counter(writer.answers)}, pings: {Counter(fleet.answers)}")
    return fleet, writer


def unpublished(stack: Stack) -> int:
    with psycopg.connect(postgres.dsn(stack.config, "primary")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND error IS NULL"
        ).fetchone()
    return int(row[0]) if row else 0


def everything_acknowledged_is_stored(stack: Stack, fleet: Fleet, writer: JobWriter) -> None:
    """Every created job and every accepted ping stored (the stream retried its batches
    through the fault), and the relay went on: every job's event published."""
    assert stored_jobs(stack, writer.created) == len(writer.created)
    wait_for(lambda: True if stored_of(stack, fleet.acked) == len(fleet.acked) else None, 120)
    wait_for(lambda: True if unpublished(stack) == 0 else None, 120)


def test_the_leader_killed_under_load_loses_nothing_acknowledged(ha: Stack) -> None:
    config = ha.config
    wait_for(lambda: settled(ha), 120, 0.5)
    old = patroni.leader(config)
    assert old is not None

    async def kill_the_leader() -> None:
        # The node's machine lost: Patroni and its PostgreSQL killed, and kept down until
        # the other node leads (the supervisor would restart a Patroni killed alone).
        patroni.kill_server(config, old)
        ha.kill(patroni.name(old))
        await asyncio.to_thread(
            wait_for, lambda: True if patroni.leader(config) not in (None, old) else None, 120
        )

    fleet, writer = under_load(ha, kill_the_leader)
    new = patroni.leader(config)
    assert new is not None and new != old
    everything_acknowledged_is_stored(ha, fleet, writer)

    # Started again, the old leader rejoins as the new one's standby.
    ha.start(patroni.name(old))
    members = wait_for(lambda: settled(ha), 180, 0.5)
    assert {str(m["name"]): m["role"] for m in members}[patroni.name(old)] == "sync_standby"


def test_a_switchover_under_load_loses_nothing_acknowledged(ha: Stack) -> None:
    config = ha.config
    wait_for(lambda: settled(ha), 180, 0.5)
    old = patroni.leader(config)

    async def switch() -> None:
        await asyncio.to_thread(patroni.switchover, config)

    fleet, writer = under_load(ha, switch)
    assert patroni.leader(config) not in (None, old)
    everything_acknowledged_is_stored(ha, fleet, writer)
    wait_for(lambda: settled(ha), 180, 0.5)


def test_with_the_standby_lost_the_leader_goes_on_alone(ha: Stack) -> None:
    """synchronous_mode_strict is off: Patroni drops the lost standby from the synchronous
    names and the leader takes writes alone until it is back (docs/ha.md)."""
    config = ha.config
    wait_for(lambda: settled(ha), 180, 0.5)
    leader = patroni.leader(config)
    assert leader is not None
    [standby] = patroni.replicas(config)

    def alone() -> bool | None:
        with psycopg.connect(postgres.superuser_dsn(config)) as conn:
            row = conn.execute("SHOW synchronous_standby_names").fetchone()
        return True if row == ("",) else None

    async def kill_the_standby() -> None:
        patroni.kill_server(config, standby)
        ha.kill(patroni.name(standby))
        await asyncio.to_thread(wait_for, alone, 60)

    fleet, writer = under_load(ha, kill_the_standby)
    assert patroni.leader(config) == leader
    everything_acknowledged_is_stored(ha, fleet, writer)
    # No read failed, yet `telemetry doctor` names the lost standby from the leader's count.
    missing = wait_for(lambda: finding(config, "standby-missing"), 60, 1)
    assert missing.evidence["primary"] == f"{patroni.name(leader)}-exporter"
    ha.start(patroni.name(standby))
    wait_for(lambda: settled(ha), 180, 0.5)


def test_with_etcd_lost_the_leader_keeps_taking_writes(ha: Stack) -> None:
    """failsafe_mode: the leader cannot renew its lock, but it reaches the other node's
    Patroni, which cannot be promoting meanwhile, so it keeps leading."""
    config = ha.config
    wait_for(lambda: settled(ha), 180, 0.5)
    leader = patroni.leader(config)
    writer = JobWriter(ha)

    async def write_for(seconds: float) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            deadline = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < deadline:
                await writer.post(client)

    ha.kill("etcd")
    try:
        # Past twice the lock's life: without failsafe the leader would have demoted.
        asyncio.run(write_for(2 * patroni.TTL_S + patroni.LOOP_WAIT_S))
        assert patroni.leader(config) == leader
    finally:
        ha.start("etcd")
    assert set(writer.answers) == {201}, Counter(writer.answers)
    assert stored_jobs(ha, writer.created) == len(writer.created)
    wait_for(lambda: settled(ha), 120, 0.5)
