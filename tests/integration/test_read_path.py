"""The read path (docs/services.md, "Api: reads") on the real stack, counted: database reads for a
herd, 304 without a read, write-through, read-your-writes with the replica's replay
paused, Redis down or hanging, and 503 past the database cap. Extra api processes with
their own settings run beside the stack's (`infra.services.api_variants`)."""

import asyncio
import contextlib
import dataclasses
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import redis
from prometheus_client import CollectorRegistry

from api.reads.cache import Envelope
from api.reads.routing import DbGate, Pools, ReadMetrics, ReadRouter, Rows
from infra import patroni, pgbouncer, postgres, services
from infra.config import StackConfig
from infra.procs import free_port
from infra.redis import url as redis_url
from infra.services import api_variants
from infra.stack import Stack
from runtime.postgres import open_pool
from schemas.auth import Role
from tests.support.stack import metric, wait_for

BODY = {"pickup": {"lat": 12.97, "lon": 77.59}, "dropoff": {"lat": 12.93, "lon": 77.62}}
Token = Callable[..., str]


def bearer(token: Token, role: Role, sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role, sub)}"}


def total(urls: list[str], name: str, **labels: str) -> float:
    return sum(metric(url, name, **labels) for url in urls)


def herd(urls: list[str], path: str, headers: dict[str, str], clients: int) -> list[int]:
    """`clients` requests at once, spread over `urls`; their statuses."""

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            answers = await asyncio.gather(
                *(client.get(urls[i % len(urls)] + path, headers=headers) for i in range(clients))
            )
        return [r.status_code for r in answers]

    return asyncio.run(run())


def cached(config: StackConfig, view: str, key: str) -> Envelope | None:
    with redis.Redis.from_url(redis_url(config)) as client:
        raw = client.hget(f"api:view:{view}:{key}", "env")
    return None if raw is None else Envelope.decode(raw)


def expire(config: StackConfig, view: str, key: str) -> None:
    """Makes the stored entry one that expired a moment ago (kept for stale serving)."""
    env = cached(config, view, key)
    assert env is not None, "nothing cached to expire"
    expired = dataclasses.replace(env, fresh_until=time.time() - 0.5)
    with redis.Redis.from_url(redis_url(config)) as client:
        client.hset(f"api:view:{view}:{key}", "env", expired.encode())


def fresh(env: Envelope | None) -> bool:
    return env is not None and env.fresh(time.time())


def forget(config: StackConfig, view: str, key: str) -> None:
    with redis.Redis.from_url(redis_url(config)) as client:
        client.delete(f"api:view:{view}:{key}")


def relayed(config: StackConfig, job_id: str) -> bool:
    """Every event of the new job has been published and its view written through. The
    relay writes views after its round commits (jobs/relay.py), so a sent row alone is not
    enough: until the view is there, its write-through is still to come."""
    with psycopg.connect(postgres.dsn(config, "primary"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox WHERE key = %s AND sent_at IS NULL", [job_id]
        ).fetchone()
    return row == (0,) and cached(config, "job", job_id) is not None


def new_job(config: StackConfig, headers: dict[str, str], base: str | None = None) -> str:
    base = base or f"http://127.0.0.1:{config.api_port}"
    r = httpx.post(f"{base}/v1/jobs", json=BODY, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["job_id"])


def test_a_herd_on_an_expired_or_missing_view_reads_the_database_once_across_processes(
    config: StackConfig, token: Token
) -> None:
    tag = uuid.uuid4().hex[:6]
    ops = bearer(token, Role.OPS, f"ops-{tag}")  # reads only: no write of theirs to wait for
    job_id = new_job(config, bearer(token, Role.DISPATCHER, f"disp-{tag}"))
    path = f"/v1/jobs/{job_id}"
    wait_for(lambda: relayed(config, job_id) or None)  # no write-through to come
    with api_variants(config, 2, {"API_JOB_VIEW_FRESH_S": "60"}) as urls:
        assert httpx.get(urls[0] + path, headers=ops).status_code == 200
        wait_for(lambda: cached(config, "job", job_id))

        expire(config, "job", job_id)
        before = total(urls, "api_db_reads_total", view="job")
        assert herd(urls, path, ops, 400) == [200] * 400
        # The lease's holder refreshes in the background while everyone is served stale.
        wait_for(lambda: fresh(cached(config, "job", job_id)) or None)
        assert total(urls, "api_db_reads_total", view="job") - before == 1
        assert total(urls, "api_cache_requests_total", view="job", result="stale") > 0

        forget(config, "job", job_id)
        before = total(urls, "api_db_reads_total", view="job")
        assert herd(urls, path, ops, 400) == [200] * 400
        # Cold: one process loads, the other waits for what it stores.
        assert total(urls, "api_db_reads_total", view="job") - before == 1
        assert total(urls, "api_cache_requests_total", view="job", result="coalesced") > 0


def test_revalidation_is_a_304_without_a_read_and_a_change_is_written_through(
    config: StackConfig, token: Token
) -> None:
    tag = uuid.uuid4().hex[:6]
    ops, dispatcher = bearer(token, Role.OPS, f"ops-{tag}"), bearer(token, Role.DISPATCHER, tag)
    job_id = new_job(config, dispatcher)
    path = f"/v1/jobs/{job_id}"
    # The stack's relay wrote the new job's view with its own freshness: this process's
    # (a minute) applies from its own first load.
    wait_for(lambda: relayed(config, job_id) or None)
    forget(config, "job", job_id)
    with api_variants(config, 1, {"API_JOB_VIEW_FRESH_S": "60"}) as [url]:
        first = httpx.get(url + path, headers=ops)
        assert first.status_code == 200
        assert first.headers["Cache-Control"] == "private, max-age=60"
        etag = first.headers["ETag"]
        reads = metric(url, "api_db_reads_total", view="job")
        for _ in range(20):
            again = httpx.get(url + path, headers=ops | {"If-None-Match": etag})
            assert (again.status_code, again.headers["ETag"], again.content) == (304, etag, b"")
        assert metric(url, "api_db_reads_total", view="job") == reads

        # The change goes through the stack's api (its relay writes the view through): this
        # process's entry is fresh for a minute, so only the write-through can show it.
        r = httpx.post(
            f"http://127.0.0.1:{config.api_port}{path}/assign",
            json={"driver_id": f"drv-{tag}"},
            headers=dispatcher,
        )
        assert r.status_code == 200, r.text
        wait_for(lambda: httpx.get(url + path, headers=ops).json()["status"] == "assigned" or None)
        changed = httpx.get(url + path, headers=ops | {"If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["ETag"] != etag
        assert metric(url, "api_db_reads_total", view="job") == reads

        share = httpx.post(f"{url}{path}/share", headers=dispatcher).json()
        public = httpx.get(url + share["url"])
        assert public.headers["Cache-Control"] == (
            "public, max-age=5, stale-while-revalidate=5, stale-if-error=30"
        )
        not_modified = httpx.get(
            url + share["url"], headers={"If-None-Match": public.headers["ETag"]}
        )
        assert not_modified.status_code == 304


def test_a_principal_reads_their_own_writes_while_the_replica_replays_nothing(
    config: StackConfig, token: Token
) -> None:
    customer = bearer(token, Role.CUSTOMER, f"cus-{uuid.uuid4().hex[:6]}")
    # The lag check would send every read to the primary after a few seconds: off here,
    # so the replica's own position decides.
    settings = {"API_REPLICA_MAX_LAG_S": "3600", "API_JOB_VIEW_FRESH_S": "60"}
    with api_variants(config, 1, settings) as [url], postgres.replay_paused(config) as replica:
        created = []
        for i in range(10):
            # Written through this process or through the stack's: the position is in Redis.
            job_id = new_job(config, customer, base=url if i % 2 else None)
            created.append(job_id)
            seen = httpx.get(f"{url}/v1/jobs/{job_id}", headers=customer)
            assert (seen.status_code, seen.json()["status"]) == (200, "created"), seen.text
            assert httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=customer).status_code == 200
            after = httpx.get(f"{url}/v1/jobs/{job_id}", headers=customer).json()
            assert after["status"] == "cancelled"
        with psycopg.connect(replica, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM jobs WHERE job_id = ANY(%s)", [created])
            assert row.fetchone() == (0,)  # the replica had none of it: every read was fresh
        assert (
            metric(
                url, "api_db_reads_total", view="job", target="primary", reason="read_your_writes"
            )
            >= 1
        )


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers (a Redis hung)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_views_are_served_from_the_database_when_redis_is_down_or_hangs(
    config: StackConfig, token: Token
) -> None:
    tag = uuid.uuid4().hex[:6]
    ops, customer = bearer(token, Role.OPS, f"ops-{tag}"), bearer(token, Role.CUSTOMER, tag)
    with black_hole() as hung:
        for redis_at in (free_port(), hung):
            env = {"API_REDIS_URL": f"redis://127.0.0.1:{redis_at}/0"}
            with api_variants(config, 1, env) as [url]:
                job_id = new_job(config, customer, base=url)
                share = httpx.post(f"{url}/v1/jobs/{job_id}/share", headers=customer).json()
                for _ in range(3):
                    mine = httpx.get(f"{url}/v1/jobs/{job_id}", headers=customer)
                    assert (mine.status_code, mine.json()["status"]) == (200, "created")
                    assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=ops).status_code == 200
                    assert httpx.get(url + share["url"]).json()["status"] == "created"
                assert httpx.post(f"{url}/v1/jobs/{job_id}/cancel", headers=customer).is_success
                mine = httpx.get(f"{url}/v1/jobs/{job_id}", headers=customer)
                assert mine.json()["status"] == "cancelled"
                assert herd([url], f"/v1/jobs/{job_id}", ops, 100) == [200] * 100
                assert metric(url, "api_cache_unavailable_total") > 0


def test_reads_past_the_database_cap_are_refused_with_503_and_retry_after(
    config: StackConfig, token: Token
) -> None:
    ops = bearer(token, Role.OPS, f"ops-{uuid.uuid4().hex[:6]}")
    settings = {
        "API_DB_MAX_CONCURRENCY": "1",
        "API_DB_MAX_WAITING": "0",
        "API_CACHE_ENABLED": "false",
    }
    with api_variants(config, 1, settings) as [url]:

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=300)) as client:
                return await asyncio.gather(
                    *(client.get(f"{url}/v1/jobs/{uuid.uuid4()}", headers=ops) for _ in range(300))
                )

        answers = asyncio.run(run())
        statuses = [r.status_code for r in answers]
        refused = [r for r in answers if r.status_code == 503]
        assert set(statuses) <= {404, 503} and refused, statuses
        for r in refused:
            assert 1 <= int(r.headers["Retry-After"]) <= 3
            assert r.json()["error"]["code"] == "overloaded"
        assert metric(url, "api_db_saturated_total") == len(refused)
        assert metric(url, "api_db_reads_in_flight_peak") == 1


def test_with_the_replica_gone_every_route_is_still_served_through_the_edge(
    stack: Stack, config: StackConfig, token: Token
) -> None:
    # Readiness is the primary: a replica away degrades reads to the primary and never takes
    # the api out of HAProxy (which checks /readyz every second and marks a process down
    # after two failures). Without Patroni the api falls back itself, shown by the metric;
    # under Patroni, HAProxy's replica frontend sends reads to the leader while no standby
    # runs, so the api still sees a replica (the leader, 0 s behind).
    ha = config.postgres_ha
    customer = bearer(token, Role.CUSTOMER, f"cus-{uuid.uuid4().hex[:6]}")
    edge = stack.public_url()
    assert edge is not None
    api = stack.urls("api")
    job_id = new_job(config, customer, edge)
    dispatcher = bearer(token, Role.DISPATCHER, f"disp-{uuid.uuid4().hex[:6]}")
    r = httpx.post(
        f"{edge}/v1/jobs/{job_id}/assign", json={"driver_id": "drv-replica"}, headers=dispatcher
    )
    assert r.status_code == 200, r.text  # its track reads the driver's fixes too
    replica = "postgres-replica"
    if ha:
        replica = patroni.name(wait_for(lambda: patroni.replicas(config) or None)[0])
    stack.stop(replica)
    try:
        if ha:
            wait_for(lambda: None if patroni.replicas(config) else True)
        else:
            wait_for(lambda: True if total(api, "api_replica_up") == 0 else None)
            assert all(httpx.get(url + "/readyz").json()["replica"] is False for url in api)
        fallbacks = total(api, "api_db_reads_total", view="job", target="primary")
        statuses = []
        deadline = time.monotonic() + 5  # past HAProxy's two failed checks, twice over
        while time.monotonic() < deadline:
            forget(config, "job", job_id)  # a miss: the read itself must fall back
            statuses.append(httpx.get(f"{edge}/v1/jobs/{job_id}", headers=customer).status_code)
            statuses.append(httpx.get(f"{edge}/v1/jobs", headers=customer).status_code)
            track = httpx.get(f"{edge}/v1/jobs/{job_id}/track", headers=customer)
            statuses.append(track.status_code)  # through the router: its fallback too
            statuses.append(httpx.post(f"{edge}/v1/jobs", json=BODY, headers=customer).status_code)
            time.sleep(0.2)  # the pace of the look, bounded by the deadline above
        assert set(statuses) == {200, 201}, statuses
        if not ha:
            assert total(api, "api_db_reads_total", view="job", target="primary") > fallbacks
    finally:
        stack.start(replica)
    if ha:
        wait_for(lambda: True if patroni.replicas(config) else None, 120, 0.5)
        # HAProxy ends the leader's read sessions (PgBouncer's) as it puts the standby back;
        # a next test reading through PgBouncer before then would lose its connection.
        wait_for(lambda: reads_reach_a_standby(config), 60, 0.5)
    wait_for(lambda: True if total(api, "api_replica_up") == len(api) else None)


def reads_reach_a_standby(config: StackConfig) -> bool | None:
    try:
        with psycopg.connect(postgres.dsn(config, "replica"), connect_timeout=2) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return None
    return True if row == (True,) else None


def test_the_api_and_the_notifier_reach_the_database_with_a_statement_timeout(
    config: StackConfig,
) -> None:
    # Their every statement ends within the setting; the stream's entries keep none (their
    # transactions set their own bounds).
    for bounded, expected in ((True, f"{config.client_statement_timeout_s:.0f}s"), (False, "0")):
        for read_only in (True, False):
            dsn = pgbouncer.dsn(config, read_only=read_only, bounded=bounded)
            with psycopg.connect(dsn, prepare_threshold=None, autocommit=True) as conn:
                row = conn.execute("SHOW statement_timeout").fetchone()
            assert row == (expected,), (bounded, read_only)
    env = {spec.name: spec.env for spec in services.specs(config)}
    for name, prefix in (("api-1", "API"), ("notifier-1", "NOTIFIER")):
        for variable in (f"{prefix}_READ_DSN", f"{prefix}_WRITE_DSN"):
            assert "dbname=telemetry_api" in env[name][variable], variable


def test_redis_refuses_a_client_without_its_password(config: StackConfig) -> None:
    # A local process cannot read the views, nor plant one with any `owners`.
    with redis.Redis(port=config.redis_port, socket_timeout=2) as anonymous:
        try:
            anonymous.get("api:view:job:anything")
        except redis.AuthenticationError:
            pass
        except redis.ResponseError as exc:  # older servers: a plain NOAUTH error
            assert "NOAUTH" in str(exc)
        else:
            raise AssertionError("Redis answered a client without the password")
    with redis.Redis.from_url(redis_url(config)) as client:
        assert client.ping()


def test_a_replica_read_cancelled_in_conflict_with_recovery_is_served_by_the_primary(
    config: StackConfig,
) -> None:
    # A replica read cancelled in conflict with recovery. An exclusive lock taken on the
    # primary (a migration, a chunk dropped, VACUUM truncating a table) replays on the
    # replica, which cancels the reads holding that table once `max_standby_streaming_delay`
    # has passed (SQLSTATE 40001). The router runs the whole read again on the primary,
    # once: served, never a 503.
    table = f"conflict_probe_{uuid.uuid4().hex[:8]}"
    primary = postgres.dsn(config, "primary")
    with psycopg.connect(primary, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (x int)")
        conn.execute(f"INSERT INTO {table} VALUES (1)")
    replica_su = postgres.replica_superuser_dsn(config)
    with psycopg.connect(replica_su, autocommit=True) as replica:
        wait_for(lambda: replica.execute("SELECT to_regclass(%s)", [table]).fetchone() != (None,))
        replica.execute("ALTER SYSTEM SET max_standby_streaming_delay = '1s'")
        replica.execute("SELECT pg_reload_conf()")
        conflicts = "SELECT confl_lock FROM pg_stat_database_conflicts WHERE datname = %s"
        before = replica.execute(conflicts, [postgres.DATABASE]).fetchone()
        try:
            got, registry = asyncio.run(_read_during_a_lock(config, table))
        finally:
            replica.execute("ALTER SYSTEM RESET max_standby_streaming_delay")
            replica.execute("SELECT pg_reload_conf()")
            with psycopg.connect(primary, autocommit=True) as conn:
                conn.execute(f"DROP TABLE {table}")
        after = replica.execute(conflicts, [postgres.DATABASE]).fetchone()
    assert (got.target, got.rows) == ("primary", [{"x": 1}])
    labels = {"view": "probe", "target": "primary", "reason": "recovery_conflict"}
    assert registry.get_sample_value("api_db_reads_total", labels) == 1
    assert before is not None and after is not None and after[0] == before[0] + 1


async def _read_during_a_lock(config: StackConfig, table: str) -> tuple[Rows, CollectorRegistry]:
    """A replica read of `table` whose second statement runs while the primary takes an
    exclusive lock on it."""
    pools = Pools(
        read=await open_pool(postgres.dsn(config, "replica"), min_size=1, max_size=1, name="r"),
        write=await open_pool(postgres.dsn(config, "primary"), min_size=1, max_size=1, name="w"),
    )
    registry = CollectorRegistry()
    metrics = ReadMetrics(registry)
    router = ReadRouter(pools, DbGate(1, 0, 1.0, metrics), metrics, max_lag_s=3600)

    async def held(conn: psycopg.AsyncConnection[Any], rows: list[dict[str, Any]]) -> None:
        await conn.execute(f"SELECT pg_sleep(4) FROM {table}")  # holds it: lock replay waits

    async def lock_on_the_primary() -> None:
        # Once the replica's statement holds the table (seen in its pg_stat_activity).
        probe = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND state = 'active'"
        replica_su = postgres.replica_superuser_dsn(config)
        async with await psycopg.AsyncConnection.connect(replica_su, autocommit=True) as replica:
            async with asyncio.timeout(10):
                while True:
                    row = await (
                        await replica.execute(probe, [f"SELECT pg_sleep(4) FROM {table}"])
                    ).fetchone()
                    if row is not None and row[0] > 0:
                        break
                    await asyncio.sleep(0.05)  # polled, within the deadline above
        async with await psycopg.AsyncConnection.connect(postgres.dsn(config, "primary")) as conn:
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            await conn.commit()

    try:
        (got, _), _ = await asyncio.gather(
            router.read_then("probe", f"SELECT x FROM {table}", [], held), lock_on_the_primary()
        )
    finally:
        for pool in (pools.reader(), pools.writer()):
            await pool.close()
    return got, registry


def test_a_customer_past_their_rate_gets_429_and_other_tenants_go_on(
    config: StackConfig, token: Token
) -> None:
    # A tenant flooding the api (ingest holds each device to its own rate: test_ingest.py).
    flood = bearer(token, Role.CUSTOMER, f"cus-{uuid.uuid4().hex[:6]}")
    other = bearer(token, Role.CUSTOMER, f"cus-{uuid.uuid4().hex[:6]}")
    settings = {"API_PRINCIPAL_RATE_PER_S": "2", "API_PRINCIPAL_BURST": "5"}
    with api_variants(config, 1, settings) as [url]:
        job_id = new_job(config, other, base=url)

        async def run() -> tuple[list[httpx.Response], list[int]]:
            async with httpx.AsyncClient(timeout=30) as client:
                flooding = [
                    client.get(f"{url}/v1/jobs/{uuid.uuid4()}", headers=flood) for _ in range(40)
                ] + [client.post(f"{url}/v1/jobs", json=BODY, headers=flood) for _ in range(10)]
                answers = await asyncio.gather(*flooding)
                # Meanwhile, another tenant: a few requests, each answered.
                mine = [
                    (await client.get(f"{url}/v1/jobs/{job_id}", headers=other)).status_code
                    for _ in range(3)
                ]
            return answers, mine

        answers, mine = asyncio.run(run())
    statuses = [r.status_code for r in answers]
    assert statuses.count(429) >= 40, statuses  # 5 in the burst, hardly any refill
    assert set(statuses) <= {404, 201, 429}
    for r in answers:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["Retry-After"]) >= 1
    assert mine == [200, 200, 200]
