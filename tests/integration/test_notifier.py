"""The notifier (docs/notifier.md) on the real stack: snapshot then live events and
positions, exact resume from the Redis log and from PostgreSQL, resync, who may follow
which job, a slow consumer cut off with bounded memory, kill -9 of a process under its
clients, and the property that clients dropping and resuming at random on two processes
see every event exactly once, in order."""

import asyncio
import contextlib
import random
import secrets
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bench.ws_client import JobWatcher, watch_until
from infra.config import StackConfig
from infra.procs import ProcessRef, stop
from infra.redis import url as redis_url
from infra.services import ServiceSpec, variants
from infra.stack import Stack
from schemas import topics
from schemas.auth import Role
from tests.support.driving import ping_at, stored
from tests.support.handshakes import close_all, open_many
from tests.support.stack import metric, until, wait_for

BODY = {"pickup": {"lat": 12.97, "lon": 77.59}, "dropoff": {"lat": 12.93, "lon": 77.62}}
Token = Callable[..., str]


def ws_url(stack: Stack) -> str:
    return stack.records["notifier-1"].endpoint["ws"]


def api_url(stack: Stack) -> str:
    return stack.urls("api")[0]


class Jobs:
    """Jobs made and moved through the stack's api, as customers and dispatchers do."""

    def __init__(self, stack: Stack, token: Token) -> None:
        self.url = api_url(stack)
        self.token = token
        self.dispatcher = {"Authorization": f"Bearer {token(Role.DISPATCHER, 'disp-ws')}"}

    def create(self, customer: str) -> str:
        r = httpx.post(
            self.url + "/v1/jobs",
            json=BODY,
            headers={"Authorization": f"Bearer {self.token(Role.CUSTOMER, customer)}"},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["job_id"])

    async def assign(self, client: httpx.AsyncClient, job_id: str, driver: str) -> int:
        """A new event (a dispatcher may assign again until the pickup); its seq."""
        r = await client.post(
            f"{self.url}/v1/jobs/{job_id}/assign",
            json={"driver_id": driver},
            headers=self.dispatcher,
        )
        assert r.status_code == 200, r.text
        return int(r.json()["seq"])

    def events(self, job_id: str, count: int, driver: str = "drv-ws") -> int:
        async def run() -> int:
            seq = 0
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(count):
                    seq = await self.assign(client, job_id, driver)
            return seq

        return asyncio.run(run())

    def share(self, job_id: str, customer: str) -> str:
        r = httpx.post(
            f"{self.url}/v1/jobs/{job_id}/share",
            json={},
            headers={"Authorization": f"Bearer {self.token(Role.CUSTOMER, customer)}"},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["token"])


@pytest.fixture
def jobs(stack: Stack, token: Token) -> Jobs:
    return Jobs(stack, token)


def customer() -> str:
    return f"cust-{uuid.uuid4().hex[:10]}"


def follow(
    url: str | list[str], token: str, job_id: str, until: Callable[[dict[str, Any]], bool],
    *, last_seq: int | None = None, timeout_s: float = 30,
) -> tuple[list[dict[str, Any]], JobWatcher]:  # fmt: skip
    watcher = JobWatcher(url, token, uuid.UUID(job_id), last_seq=last_seq)
    return asyncio.run(watch_until(watcher, until, timeout_s)), watcher


def is_event(seq: int) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"].startswith("job.") and m["seq"] == seq


def refusal(url: str, *messages: dict[str, Any] | str) -> tuple[int, str]:
    """Sends `messages` on one connection; the close code and reason the server gave."""

    async def run() -> tuple[int, str]:
        async with connect(url, compression=None) as ws:
            for m in messages:
                await ws.send(m if isinstance(m, str) else orjson.dumps(m).decode())
            try:
                async with asyncio.timeout(20):
                    async for _ in ws:
                        pass
            except ConnectionClosed:
                pass
            assert ws.close_code is not None
            return ws.close_code, ws.close_reason or ""

    return asyncio.run(run())


# --- the protocol ---------------------------------------------------------------------


def test_snapshot_then_events_then_positions_in_order(
    stack: Stack, jobs: Jobs, token: Token, config: StackConfig
) -> None:
    owner, driver = customer(), f"drv-{uuid.uuid4().hex[:8]}"
    job_id = jobs.create(owner)
    watcher = JobWatcher(ws_url(stack), token(Role.CUSTOMER, owner), uuid.UUID(job_id))
    fix = datetime.now(UTC)

    async def act() -> None:
        await until(lambda: watcher.tally.snapshots == 1)  # then the events are live ones
        async with httpx.AsyncClient(timeout=30) as client:
            await jobs.assign(client, job_id, driver)
            pings = [ping_at(fix, 0.0)]
            r = await client.post(
                f"http://127.0.0.1:{config.ingest_port}/v1/pings",
                json={"pings": pings},
                headers={"Authorization": f"Bearer {token(Role.DRIVER, driver)}"},
            )
            assert r.status_code == 202, r.text

    async def run() -> list[dict[str, Any]]:
        actor = asyncio.create_task(act())
        try:
            seen = await watch_until(watcher, lambda m: m["type"] == "position", 60)
        except TimeoutError:
            # Which stage stopped it: the event (the relay), the ping (the stream's write),
            # or the position (the stream's send, the notifier's reader)?
            streams = stack.records["streams-1"].endpoint["url"]
            notifier = stack.records["notifier-1"].endpoint["url"]
            pytest.fail(
                f"no position within 60 s; the client saw {watcher.tally}; the ping stored:"
                f" {bool(stored(config, driver))}; the stream wrote"
                f" {metric(streams, 'streams_pings_written_total')} pings, its batch"
                f" failures: {metric(streams, 'streams_batch_failures_total')}; the"
                f" notifier read {metric(notifier, 'notifier_records_consumed_total')} records"
            )
        await actor
        return seen

    seen = asyncio.run(run())
    kinds = [m["type"] for m in seen]
    assert kinds[0] == "snapshot" and seen[0]["seq"] == 1 and seen[0]["job"]["status"] == "created"
    assert seen[0]["job"]["customer_id"] == owner
    assigned = next(m for m in seen if m["type"] == "job.status")
    assert assigned["seq"] == 2 and assigned["status"] == "assigned"
    assert assigned["data"]["driver_id"] == driver
    position = seen[-1]
    assert position["job_id"] == job_id and "driver_id" not in position
    assert datetime.fromisoformat(position["ts"]) == fix.replace(microsecond=fix.microsecond)
    assert watcher.tally.duplicates == 0 and watcher.tally.gaps == 0

    # A new subscriber of an assigned job gets the driver's position in its snapshot.
    [snapshot], _ = follow(
        ws_url(stack), token(Role.DISPATCHER, "disp-any"), job_id, lambda m: True
    )
    assert snapshot["position"] is not None and snapshot["job"]["driver_id"] == driver


def test_a_resume_replays_exactly_the_missed_events_from_redis_then_postgres(
    stack: Stack, jobs: Jobs, token: Token, config: StackConfig
) -> None:
    owner = customer()
    job_id = jobs.create(owner)
    newest = jobs.events(job_id, 12)  # seq 2..13
    url = ws_url(stack)
    log_key = f"notifier:log:{job_id}"
    with redis.Redis.from_url(redis_url(config)) as r:
        # Written by the process that consumed them (once the relay has published them):
        # what a resume replays first.
        wait_for(lambda: True if r.xlen(log_key) == newest else None)
    before = metric(stack.urls("notifier")[0], "notifier_resumes_total", source="redis")

    seen, _ = follow(url, token(Role.CUSTOMER, owner), job_id, is_event(newest), last_seq=4)
    assert seen[0]["type"] == "snapshot" and seen[0]["resumed_from"] == 4
    assert [m["seq"] for m in seen[1:]] == list(range(5, newest + 1))
    assert metric(stack.urls("notifier")[0], "notifier_resumes_total", source="redis") == before + 1

    # The log lost its head (Redis restarted without it, say): PostgreSQL serves the resume.
    with redis.Redis.from_url(redis_url(config)) as r:
        r.xtrim(log_key, minid="9-0", approximate=False)
    pg_before = metric(stack.urls("notifier")[0], "notifier_resumes_total", source="postgres")
    seen, _ = follow(url, token(Role.CUSTOMER, owner), job_id, is_event(newest), last_seq=4)
    assert [m["seq"] for m in seen[1:]] == list(range(5, newest + 1))
    assert metric(stack.urls("notifier")[0], "notifier_resumes_total", source="postgres") == (
        pg_before + 1
    )

    # Nothing missed: the snapshot, then live.
    seen, _ = follow(url, token(Role.CUSTOMER, owner), job_id, lambda m: True, last_seq=newest)
    assert seen[0]["type"] == "snapshot" and seen[0]["seq"] == newest


def test_redis_stopped_resumes_come_from_postgres_and_live_events_still_flow(
    stack: Stack, jobs: Jobs, token: Token
) -> None:
    owner = customer()
    job_id = jobs.create(owner)
    jobs.events(job_id, 3)  # seq 2..4
    stack.stop("redis")
    try:
        watcher = JobWatcher(
            ws_url(stack), token(Role.CUSTOMER, owner), uuid.UUID(job_id), last_seq=1
        )

        async def run() -> list[dict[str, Any]]:
            async def more() -> None:
                await until(lambda: watcher.tally.snapshots == 1)
                async with httpx.AsyncClient(timeout=30) as client:
                    await jobs.assign(client, job_id, "drv-ws")

            task = asyncio.create_task(more())
            seen = await watch_until(watcher, is_event(5), 60)
            await task
            return seen

        seen = asyncio.run(run())
    finally:
        stack.start("redis")
    assert [m["seq"] for m in seen if m["type"] != "snapshot"] == [2, 3, 4, 5]
    assert metric(stack.urls("notifier")[0], "notifier_log_failures_total") > 0


def test_resync_when_the_missed_events_are_no_longer_retained(
    stack: Stack, jobs: Jobs, token: Token, config: StackConfig
) -> None:
    owner = customer()
    job_id = jobs.create(owner)
    with variants(config, "notifier", 1, {"NOTIFIER_RETAINED_EVENTS": "10"}, "ws-short") as [
        (spec, _)
    ]:
        url = spec.endpoint["ws"]
        newest = jobs.events(job_id, 20)  # seq 2..21
        seen, _ = follow(
            url, token(Role.CUSTOMER, owner), job_id, lambda m: m["type"] == "snapshot",
            last_seq=1,
        )  # fmt: skip
        assert [m["type"] for m in seen] == ["resync", "snapshot"]
        assert seen[0]["reason"] == "not_retained"
        assert seen[1]["resumed_from"] is None and seen[1]["seq"] == newest
        # Within retention: replayed.
        seen, _ = follow(url, token(Role.CUSTOMER, owner), job_id, is_event(newest), last_seq=12)
        assert [m["seq"] for m in seen[1:]] == list(range(13, newest + 1))
        # A seq the job never had.
        seen, _ = follow(
            url, token(Role.CUSTOMER, owner), job_id, lambda m: m["type"] == "snapshot",
            last_seq=newest + 5,
        )  # fmt: skip
        assert seen[0] == {"type": "resync", "job_id": job_id, "reason": "unknown_seq"}


# --- who may follow what ----------------------------------------------------------------


def test_who_may_follow_which_job(stack: Stack, jobs: Jobs, token: Token) -> None:
    url = ws_url(stack)
    owner = customer()
    job_id, other_job = jobs.create(owner), jobs.create(customer())
    jobs.events(job_id, 1)  # assigned to drv-ws
    sub = {"type": "subscribe", "job_id": job_id}

    def auth(tok: str) -> dict[str, str]:
        return {"type": "auth", "token": tok}

    # Someone else's job and a job that does not exist: the same refusal.
    for tok, job in [
        (token(Role.CUSTOMER, owner), other_job),
        (token(Role.CUSTOMER, customer()), job_id),
        (token(Role.DRIVER, "drv-other"), job_id),
        (token(Role.CUSTOMER, owner), str(uuid.uuid4())),
    ]:
        assert refusal(url, auth(tok), {"type": "subscribe", "job_id": job})[0] == 4403
    # The assigned driver and a dispatcher may.
    for tok in (token(Role.DRIVER, "drv-ws"), token(Role.DISPATCHER, "d-1")):
        seen, _ = follow(url, tok, job_id, lambda m: True)
        assert seen[0]["type"] == "snapshot"

    # Bad tokens, no auth first, bad messages.
    assert refusal(url, auth("not.a.jwt"), sub)[0] == 4401
    assert refusal(url, auth(token(Role.CUSTOMER, owner, ttl_s=-60)), sub)[0] == 4401
    assert refusal(url, auth("A" * 32), sub)[0] == 4401  # share-shaped, unknown
    assert refusal(url, sub)[0] == 4401
    assert refusal(url, "{not json")[0] == 4400
    tok = token(Role.CUSTOMER, owner)
    assert refusal(url, auth(tok), "{not json")[0] == 4400
    assert refusal(url, auth(tok), {"type": "subscribe", "job_id": "x"})[0] == 4400
    assert (
        refusal(url, auth(tok), {"type": "subscribe", "job_id": job_id, "last_seq": -1})[0] == 4400
    )
    assert refusal(url, auth(tok), {**sub, "extra": 1})[0] == 4400
    assert refusal(url, auth(tok), auth(tok))[0] == 4400

    # A share token sees its job, as the share view, and events without their data.
    share = jobs.share(job_id, owner)
    assert refusal(url, auth(share), {"type": "subscribe", "job_id": other_job})[0] == 4403
    watcher = JobWatcher(url, share, uuid.UUID(job_id))

    async def run() -> list[dict[str, Any]]:
        async def more() -> None:
            await until(lambda: watcher.tally.snapshots == 1)
            async with httpx.AsyncClient(timeout=30) as client:
                await jobs.assign(client, job_id, "drv-ws2")

        task = asyncio.create_task(more())
        seen = await watch_until(watcher, lambda m: m["type"] == "job.status", 30)
        await task
        return seen

    seen = asyncio.run(run())
    assert set(seen[0]["job"]) == {
        "status", "driver_position", "eta_seconds", "eta_basis", "updated_at", "expires_at"
    }  # fmt: skip
    assert seen[-1]["data"] == {} and seen[-1]["status"] == "assigned"
    # A share link's holder need not know the job's id (the share view does not show it):
    # its link's job. A user must name the job.
    assert refusal(url, auth(tok), {"type": "subscribe"})[0] == 4400

    async def by_link() -> dict[str, Any]:
        async with connect(url, compression=None) as ws:
            await ws.send(orjson.dumps(auth(share)).decode())
            await ws.send(orjson.dumps({"type": "subscribe"}).decode())
            return dict(orjson.loads(await ws.recv()))

    snapshot = asyncio.run(by_link())
    assert snapshot["type"] == "snapshot" and snapshot["job"]["status"] == "assigned"


def test_a_revoked_share_links_open_connections_are_closed(
    stack: Stack, jobs: Jobs, token: Token
) -> None:
    # A link revoked (DELETE, or the job's cancel) ends its live connections within
    # NOTIFIER_SHARE_RECHECK_S; the owner's own connection to the job goes on.
    owner = customer()
    job_id = jobs.create(owner)
    revoked = jobs.share(job_id, owner)
    owners = {"Authorization": f"Bearer {token(Role.CUSTOMER, owner)}"}
    url = ws_url(stack)

    async def closed(tok: str) -> tuple[int | None, str, float]:
        async with connect(url, compression=None) as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": tok}).decode())
            await ws.send(orjson.dumps({"type": "subscribe", "job_id": job_id}).decode())
            assert orjson.loads(await ws.recv())["type"] == "snapshot"
            started = time.monotonic()
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.delete(f"{jobs.url}/v1/jobs/{job_id}/share", headers=owners)
                assert r.json() == {"revoked": 1}
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(30):
                    async for _ in ws:
                        pass
            return ws.close_code, ws.close_reason or "", time.monotonic() - started

    async def still_open(tok: str) -> bool:
        async with connect(url, compression=None) as ws:
            await ws.send(orjson.dumps({"type": "auth", "token": tok}).decode())
            await ws.send(orjson.dumps({"type": "subscribe", "job_id": job_id}).decode())
            assert orjson.loads(await ws.recv())["type"] == "snapshot"
            async with httpx.AsyncClient(timeout=30) as client:
                await jobs.assign(client, job_id, "drv-after-revoke")
            while (m := orjson.loads(await ws.recv()))["type"] != "job.status":
                pass
            return bool(m["data"]["driver_id"] == "drv-after-revoke")

    code, reason, after_s = asyncio.run(closed(revoked))
    assert (code, reason) == (4401, "share link revoked")
    assert after_s <= 10 + 2  # the default recheck, and the close's own round trip
    assert asyncio.run(still_open(token(Role.CUSTOMER, owner)))
    assert refusal(url, {"type": "auth", "token": revoked})[0] == 4401  # and no new one


def test_no_auth_in_time_closes_the_connection(stack: Stack, config: StackConfig) -> None:
    with variants(config, "notifier", 1, {"NOTIFIER_AUTH_TIMEOUT_S": "0.5"}, "ws-auth") as [
        (spec, _)
    ]:
        code, reason = refusal(spec.endpoint["ws"])
    assert (code, reason) == (4401, "no auth message in time")


def test_a_browser_page_from_an_unlisted_origin_cannot_open_a_connection(
    stack: Stack, config: StackConfig
) -> None:
    url = stack.ws_urls()[0]

    async def handshake(origin: str | None) -> int:
        try:
            async with connect(url, origin=origin, compression=None):  # type: ignore[arg-type]
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    answers = {
        origin: asyncio.run(handshake(origin))
        for origin in (None, "http://localhost:3000", "https://evil.example", "null")
    }
    assert answers == {
        None: 101,  # an app or a device: no Origin
        "http://localhost:3000": 101,  # the listed dev server
        "https://evil.example": 403,
        "null": 403,
    }


def test_connections_waiting_for_auth_and_unknown_share_tokens_are_capped(
    stack: Stack, config: StackConfig
) -> None:
    settings = {
        "NOTIFIER_MAX_UNAUTHENTICATED_PER_CLIENT": "2",
        "NOTIFIER_FAILED_SHARE_LOOKUPS_PER_S": "0.01",
        "NOTIFIER_FAILED_SHARE_LOOKUP_BURST": "2",
    }
    with variants(config, "notifier", 1, settings, "ws-admission") as [(spec, _)]:
        url = spec.endpoint["ws"]

        async def waiting() -> list[int]:
            statuses, held = await open_many(url, 3)
            await held.pop(0).close()  # one gives up: a place is free again, once it lands
            deadline = time.monotonic() + 5
            while True:
                again, opened = await open_many(url, 1)
                held += opened
                if again == [101] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)  # the poll's pace; the deadline bounds it
            await close_all(held)
            return statuses + again

        assert asyncio.run(waiting()) == [101, 101, 503, 101]
        # Random share tokens: two lookups, then refused without one.
        reasons = [
            refusal(url, {"type": "auth", "token": secrets.token_urlsafe(24)}) for _ in range(3)
        ]
        assert reasons[:2] == [(4401, "unknown or expired share link")] * 2
        assert reasons[2][0] == 4401 and "too many unknown share links" in reasons[2][1]


# --- flow control -------------------------------------------------------------------------


def rss(ref: ProcessRef) -> int:
    """Resident memory in bytes (/proc: VmRSS is in kB)."""
    for line in Path(f"/proc/{ref.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {ref.pid}")


def test_a_client_that_stops_reading_is_cut_off_and_memory_stays_bounded(
    stack: Stack, jobs: Jobs, token: Token, config: StackConfig
) -> None:
    owner = customer()
    job_id = jobs.create(owner)
    note = "x" * 2_500
    records = 16_000  # 40 MB of events for the one job, far past every buffer on the way

    async def run(spec: ServiceSpec, ref: ProcessRef) -> tuple[int, int, list[int], JobWatcher]:
        url = spec.endpoint["ws"]
        tok = token(Role.CUSTOMER, owner)
        # max_queue=1: once one message waits unread, the client stops reading its socket.
        stalled = await connect(url, compression=None, max_queue=1, max_size=None)
        await stalled.send(orjson.dumps({"type": "auth", "token": tok}).decode())
        await stalled.send(orjson.dumps({"type": "subscribe", "job_id": job_id}).decode())
        reader = JobWatcher(url, tok, uuid.UUID(job_id))
        stream = reader.messages()
        assert (await anext(stream))["type"] == "snapshot"
        # Both subscribed: the stalled one's snapshot written too.
        await until(lambda: metric(spec.url, "notifier_messages_sent_total", type="snapshot") == 2)
        before = rss(ref)

        async def produce() -> None:
            producer = AIOKafkaProducer(bootstrap_servers=config.kafka_bootstrap)
            await producer.start()
            try:
                for seq in range(2, 2 + records):
                    event = {
                        "v": 1, "job_id": job_id, "seq": seq, "type": "job.status",
                        "status": "assigned", "at": datetime.now(UTC).isoformat(),
                        "data": {"note": note},
                    }  # fmt: skip
                    await producer.send(topics.JOB_EVENTS, orjson.dumps(event), key=job_id.encode())
                    if seq % 500 == 0:
                        await producer.flush()  # and the reader reads meanwhile
            finally:
                await producer.stop()

        producing = asyncio.create_task(produce())
        got: list[int] = []
        async with asyncio.timeout(120):
            async for message in stream:  # the reading client keeps up, every event
                if message["type"] == "job.status":
                    got.append(message["seq"])
                if got and got[-1] == 1 + records:
                    break
        await producing
        await stream.aclose()  # type: ignore[attr-defined]
        peak = rss(ref)
        with contextlib.suppress(Exception):
            await stalled.close()
        return before, peak, got, reader

    with variants(config, "notifier", 1, {}, "ws-slow") as [(spec, ref)]:
        before, peak, got, reader = asyncio.run(run(spec, ref))
        cut = metric(spec.url, "notifier_slow_consumer_disconnects_total")
        closes = metric(spec.url, "notifier_closes_total", code="4408")
    assert got == list(range(2, 2 + records))
    assert reader.tally.connects == 1  # the reading client was never cut
    assert cut == 1 and closes == 1
    # 40 MB went to the reader; the stalled one held at most its limit and socket buffers.
    assert peak - before < 16 * 2**20, f"RSS grew {(peak - before) / 2**20:.1f} MiB"


def test_a_peer_that_stops_answering_pings_is_closed(
    stack: Stack, jobs: Jobs, token: Token, config: StackConfig
) -> None:
    owner = customer()
    job_id = jobs.create(owner)

    async def run(url: str) -> None:
        # max_queue=1: once a message waits unread, the client reads nothing more, pongs
        # included (a phone gone to sleep, a half-open connection).
        ws = await connect(url, compression=None, max_queue=1)
        await ws.send(orjson.dumps({"type": "auth", "token": token(Role.CUSTOMER, owner)}).decode())
        await ws.send(orjson.dumps({"type": "subscribe", "job_id": job_id}).decode())
        await until(lambda: metric(spec.url, "notifier_closes_total", code="1011") == 1, 30)
        ws.transport.abort()

    env = {"NOTIFIER_PING_INTERVAL_S": "0.5"}
    with variants(config, "notifier", 1, env, "ws-keepalive") as [(spec, _)]:
        asyncio.run(run(spec.endpoint["ws"]))
        assert metric(spec.url, "notifier_connections") == 0
        assert metric(spec.url, "notifier_messages_sent_total", type="ping") >= 1


# --- failures ----------------------------------------------------------------------------


@contextlib.contextmanager
def two_notifiers(config: StackConfig, name: str) -> Iterator[list[tuple[ServiceSpec, ProcessRef]]]:
    with variants(config, "notifier", 2, {}, name) as started:
        yield started


async def drive_events(
    jobs: Jobs, job_ids: list[str], rounds: int, on_round: Callable[[int], None]
) -> dict[str, int]:
    """`rounds` rounds of one job event on every job (`on_round(n)` after round n, as the
    events flow); the newest seq of each job."""
    newest: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for n in range(rounds):
            for job_id in job_ids:
                newest[job_id] = await jobs.assign(client, job_id, "drv-flow")
            on_round(n)
    return newest


def check_exactly_once(watchers: list[JobWatcher], newest: dict[str, int]) -> None:
    """Every watcher began with `last_seq=1`: it must have had 2..newest, each once, in
    order (the tally records arrivals as they came, duplicates and gaps apart)."""
    for w in watchers:
        assert w.tally.duplicates == 0 and w.tally.gaps == 0, (w.job_id, w.tally)
        assert w.tally.resyncs == 0
        assert w.tally.events == list(range(2, newest[str(w.job_id)] + 1)), w.tally.events


def test_kill_9_of_a_notifier_its_clients_resume_on_the_other_with_nothing_lost(
    stack: Stack, jobs: Jobs, token: Token, config: StackConfig
) -> None:
    owner = customer()
    job_ids = [jobs.create(owner) for _ in range(4)]
    tok = token(Role.CUSTOMER, owner)
    with two_notifiers(config, "ws-kill") as [(a, a_ref), (b, _)]:
        # Each client starts on A; after a drop it tries B, then A, and so on.
        watchers = [
            JobWatcher([a.endpoint["ws"], b.endpoint["ws"]], tok, uuid.UUID(j), last_seq=1)
            for j in job_ids
            for _ in range(5)
        ]

        def kill_a(n: int) -> None:
            if n == 10:  # everyone subscribed on A, events still to come
                stop(a_ref, sig=signal.SIGKILL)

        newest = asyncio.run(follow_while_events_flow(jobs, job_ids, watchers, 40, kill_a))
    check_exactly_once(watchers, newest)
    assert all(w.tally.connects >= 2 for w in watchers)  # every one of them moved


async def follow_while_events_flow(
    jobs: Jobs,
    job_ids: list[str],
    watchers: list[JobWatcher],
    rounds: int,
    on_round: Callable[[int], None],
) -> dict[str, int]:
    """The watchers follow their jobs (each subscribed first) while `rounds` rounds of job
    events flow, until each has its job's newest seq; the newest seqs."""

    async def follow(w: JobWatcher) -> None:
        async for _ in w.messages():
            pass

    followers = [asyncio.create_task(follow(w)) for w in watchers]
    try:
        await until(lambda: all(w.tally.snapshots for w in watchers))
        newest = await drive_events(jobs, job_ids, rounds, on_round)
        await until(lambda: all(w.last_seq == newest[str(w.job_id)] for w in watchers))
    finally:
        for f in followers:
            f.cancel()
        # Their connections close as the tasks end: a transport lets go of its socket in
        # the loop's next turn, which must come before asyncio.run closes the loop.
        await asyncio.gather(*followers, return_exceptions=True)
        await asyncio.sleep(0)  # that turn
    return newest


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    # (which client, after which round of events) its connection drops, as networks do.
    drops=st.lists(st.tuples(st.integers(0, 23), st.integers(0, 29)), min_size=10, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_clients_dropping_and_resuming_at_random_see_every_event_once_in_order(
    stack: Stack, jobs: Jobs, token: Token, config: StackConfig, pair: list[str],
    drops: list[tuple[int, int]], seed: int,
) -> None:  # fmt: skip
    owner = customer()
    job_ids = [jobs.create(owner) for _ in range(6)]
    tok = token(Role.CUSTOMER, owner)
    rng = random.Random(seed)
    watchers = [
        JobWatcher(rng.sample(pair, 2), tok, uuid.UUID(job_ids[i % 6]), last_seq=1, rng=rng)
        for i in range(24)
    ]

    schedule: dict[int, list[int]] = {}
    for index, after_round in drops:
        schedule.setdefault(after_round, []).append(index)

    def drop(n: int) -> None:
        for index in schedule.get(n, []):
            watchers[index].drop_connection()

    newest = asyncio.run(follow_while_events_flow(jobs, job_ids, watchers, 30, drop))
    check_exactly_once(watchers, newest)


@pytest.fixture(scope="module")
def pair(stack: Stack, config: StackConfig) -> Iterator[list[str]]:
    with two_notifiers(config, "ws-pair") as started:
        yield [spec.endpoint["ws"] for spec, _ in started]
