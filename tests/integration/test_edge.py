"""The edge (docs/edge.md) on the real stack, through its one public port: nginx's
cache in front of HAProxy in front of the services. Every route reaches its service; the
cache keeps share views only, one request per key however many ask; a process that dies
under load costs no GET, a POST in flight gets an error answer, WebSockets stay up; the
supervisor brings a dead process back, and gives up on one that keeps crashing."""

import asyncio
import contextlib
import functools
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Self

import aiohttp
import httpx
import psycopg
import pytest

from bench.ws_client import JobWatcher, watch_until
from infra import edge, haproxy, keys, postgres, runtimes, supervisor
from infra.config import StackConfig
from infra.procs import free_port, stop, wait_until
from infra.stack import Stack
from schemas.auth import Role
from tests.support.driving import ping_at
from tests.support.handshakes import close_all, open_many
from tests.support.stack import metric, wait_for

pytestmark = pytest.mark.integration

BODY = {"pickup": {"lat": 12.97, "lon": 77.59}, "dropoff": {"lat": 12.93, "lon": 77.62}}
Token = Callable[..., str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def public(stack: Stack) -> str:
    url = stack.public_url()
    assert url is not None, "the stack runs no edge"
    return url


def ws(stack: Stack) -> str:
    url = stack.public_url("ws")
    assert url is not None
    return url


def create_job(public: str, customer_token: str) -> str:
    r = httpx.post(public + "/v1/jobs", json=BODY, headers=bearer(customer_token))
    assert r.status_code == 201, r.text
    return str(r.json()["job_id"])


def share(public: str, customer_token: str, job_id: str) -> str:
    r = httpx.post(f"{public}/v1/jobs/{job_id}/share", json={}, headers=bearer(customer_token))
    assert r.status_code == 201, r.text
    return str(r.json()["url"])


def api_requests(stack: Stack) -> float:
    """Requests HAProxy has sent to the api's processes (health checks are not counted)."""
    stats = stack.records[haproxy.NAME].endpoint["metrics"].removesuffix("/metrics")
    return metric(stats, "haproxy_backend_http_requests_total", proxy="api")


def herd(url: str, count: int) -> Counter[tuple[int, str | None]]:
    """`count` GETs of `url` at once, each on its own connection: (status, cache status)."""

    async def run() -> list[tuple[int, str | None]]:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> tuple[int, str | None]:
                async with session.get(url) as r:
                    await r.read()
                    return r.status, r.headers.get(edge.CACHE_STATUS_HEADER)

            return await asyncio.gather(*(one() for _ in range(count)))

    return Counter(asyncio.run(run()))


def test_every_route_reaches_its_service_through_one_port(
    stack: Stack, public: str, token: Token
) -> None:
    status = stack.status()
    assert status[edge.NAME]["healthy"] and status[haproxy.NAME]["healthy"]
    # Pings go to ingest: its answer, and its counter moved.
    driver = f"drv-edge-{uuid.uuid4().hex[:6]}"
    accepted_before = sum(
        metric(url, "ingest_pings_accepted_total") for url in stack.urls("ingest")
    )
    ping = ping_at(datetime.now(UTC), metres_east=0)
    r = httpx.post(
        public + "/v1/pings", json={"pings": [ping]}, headers=bearer(token(Role.DRIVER, driver))
    )
    assert r.status_code == 202 and r.json() == {"accepted": 1, "rejected": []}, r.text
    accepted_after = sum(metric(url, "ingest_pings_accepted_total") for url in stack.urls("ingest"))
    assert accepted_after == accepted_before + 1
    # Jobs, their views and the API's documents go to the api.
    customer = token(Role.CUSTOMER, f"cust-edge-{uuid.uuid4().hex[:6]}")
    job_id = create_job(public, customer)
    r = httpx.get(f"{public}/v1/jobs/{job_id}", headers=bearer(customer))
    assert r.status_code == 200 and r.json()["job_id"] == job_id
    assert httpx.get(public + "/openapi.json").json()["paths"]
    # The WebSocket goes to the notifier, upgraded through both tiers.
    watcher = JobWatcher(ws(stack), customer, uuid.UUID(job_id))
    [snapshot] = asyncio.run(watch_until(watcher, lambda m: m["type"] == "snapshot", 30))
    assert snapshot["job"]["job_id"] == job_id
    # Errors keep the contract's shape at every tier.
    for path in ("/v1/jobs/not-a-uuid", "/v1/nothing-here"):
        r = httpx.get(public + path, headers=bearer(customer))
        assert r.status_code in (404, 422) and set(r.json()["error"]) >= {"code", "message"}
    # HAProxy's exporter counts per backend.
    assert api_requests(stack) > 0


def test_a_browser_app_on_the_dev_server_calls_the_api_and_ingest_through_the_edge(
    public: str, token: Token
) -> None:
    dev_server, elsewhere = "http://localhost:3000", "https://evil.example"
    customer = token(Role.CUSTOMER, f"cust-cors-{uuid.uuid4().hex[:6]}")
    driver = token(Role.DRIVER, f"drv-cors-{uuid.uuid4().hex[:6]}")
    for path, method in (("/v1/jobs", "POST"), ("/v1/pings", "POST"), ("/v1/jobs", "GET")):
        asked = {
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization",
        }
        r = httpx.options(public + path, headers={"Origin": dev_server, **asked})
        assert r.status_code == 200, (path, r.status_code, r.text)
        assert r.headers["access-control-allow-origin"] == dev_server
        assert method in r.headers["access-control-allow-methods"]
        assert "access-control-max-age" in r.headers
        r = httpx.options(public + path, headers={"Origin": elsewhere, **asked})
        assert not [h for h in r.headers if h.lower().startswith("access-control-")], path
    created = httpx.post(
        public + "/v1/jobs", json=BODY, headers={"Origin": dev_server, **bearer(customer)}
    )
    assert created.status_code == 201
    assert created.headers["access-control-allow-origin"] == dev_server
    ping = ping_at(datetime.now(UTC), metres_east=0)
    for origin, expected in ((dev_server, dev_server), (elsewhere, None)):
        r = httpx.post(
            public + "/v1/pings",
            json={"pings": [ping]},
            headers={"Origin": origin, **bearer(driver)},
        )
        assert r.status_code == 202
        assert r.headers.get("access-control-allow-origin") == expected


def test_a_key_rotation_reaches_every_service_without_a_restart(
    stack: Stack, public: str, token: Token
) -> None:
    def kids(url: str) -> set[str]:
        r = httpx.get(url + "/.well-known/jwks.json")
        assert r.status_code == 200 and r.headers["cache-control"].startswith("public")
        return {k["kid"] for k in r.json()["keys"]}

    before = kids(public)  # public, through the edge
    services = ("ingest-1", "api-1", "notifier-1")
    pids = {name: stack.records[name].ref.pid for name in services}
    customer_sub = f"cust-rot-{uuid.uuid4().hex[:6]}"
    old_customer = token(Role.CUSTOMER, customer_sub)
    new_kid = keys.rotate(stack.config)
    assert new_kid not in before
    # The api publishes what it holds: the new document once it has looked (every second).
    api = stack.urls("api")[0]
    wait_for(lambda: kids(api) == before | {new_kid} or None, timeout_s=10)
    # Tokens of the new key, at once, at each service; the old key's still verify.
    customer = token(Role.CUSTOMER, customer_sub)
    driver = token(Role.DRIVER, f"drv-rot-{uuid.uuid4().hex[:6]}")
    ping = ping_at(datetime.now(UTC), metres_east=0)
    r = httpx.post(public + "/v1/pings", json={"pings": [ping]}, headers=bearer(driver))
    assert r.status_code == 202, r.text
    job_id = create_job(public, customer)
    assert httpx.get(f"{public}/v1/jobs/{job_id}", headers=bearer(old_customer)).status_code == 200
    watcher = JobWatcher(ws(stack), customer, uuid.UUID(job_id))
    [snapshot] = asyncio.run(watch_until(watcher, lambda m: m["type"] == "snapshot", 30))
    assert snapshot["job"]["job_id"] == job_id
    assert {name: stack.records[name].ref.pid for name in services} == pids  # no restart


def test_share_views_are_fetched_once_however_many_ask(
    stack: Stack, public: str, token: Token
) -> None:
    customer = token(Role.CUSTOMER, f"cust-herd-{uuid.uuid4().hex[:6]}")
    url = public + share(public, customer, create_job(public, customer))
    # Cold: 2,000 at once for a key nobody fetched; one goes to the api.
    before = api_requests(stack)
    cold = herd(url, 2000)
    assert sum(n for (code, _), n in cold.items() if code == 200) == 2000, cold
    assert api_requests(stack) - before == 1, cold
    # Expired: past its max-age, 2,000 at once; one refreshes it, the others get it stale.
    max_age = int(httpx.get(url).headers["cache-control"].split("max-age=")[1].split(",")[0])
    time.sleep(max_age + 1)  # the deadline the test is about: the entry's expiry
    before = api_requests(stack)
    expired = herd(url, 2000)
    assert sum(n for (code, _), n in expired.items() if code == 200) == 2000, expired
    assert {cache for _, cache in expired} <= {"STALE", "UPDATING", "HIT"}, expired
    wait_for(lambda: True if api_requests(stack) - before >= 1 else None, timeout_s=10)
    assert api_requests(stack) - before == 1, expired


def test_a_revoked_link_is_gone_at_the_edge_within_its_max_age(
    stack: Stack, public: str, token: Token
) -> None:
    customer = token(Role.CUSTOMER, f"cust-revoke-{uuid.uuid4().hex[:6]}")
    job_id = create_job(public, customer)
    url = public + share(public, customer, job_id)
    assert httpx.get(url).status_code == 200
    assert httpx.get(url).headers[edge.CACHE_STATUS_HEADER] == "HIT"
    max_age = int(httpx.get(url).headers["cache-control"].split("max-age=")[1].split(",")[0])
    r = httpx.delete(f"{public}/v1/jobs/{job_id}/share", headers=bearer(customer))
    assert r.json() == {"revoked": 1}
    # Until its max-age ends the edge may serve its copy; the first request past it may
    # still get the old copy while it starts the refresh; the refresh stores the api's
    # public 404 in its place, and nothing later sees the link.
    wait_for(lambda: httpx.get(url).status_code == 404 or None, timeout_s=max_age + 5)
    answers = [httpx.get(url) for _ in range(20)]
    assert {r.status_code for r in answers} == {404}
    assert answers[-1].headers[edge.CACHE_STATUS_HEADER] == "HIT"  # the 404, from the edge
    assert answers[-1].json()["error"]["code"] == "not_found"


def test_private_and_authenticated_answers_are_never_cached(
    stack: Stack, public: str, token: Token
) -> None:
    owner_id = f"cust-own-{uuid.uuid4().hex[:6]}"
    owner = token(Role.CUSTOMER, owner_id)
    other = token(Role.CUSTOMER, f"cust-oth-{uuid.uuid4().hex[:6]}")
    job_id = create_job(public, owner)
    url = f"{public}/v1/jobs/{job_id}"
    for _ in range(3):
        mine = httpx.get(url, headers=bearer(owner))
        assert mine.status_code == 200 and mine.headers["cache-control"].startswith("private")
        assert mine.headers[edge.CACHE_STATUS_HEADER] == "BYPASS"
    # Neither another user nor an anonymous client gets the owner's view from the cache.
    theirs = httpx.get(url, headers=bearer(other))
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    assert owner_id not in theirs.text
    for _ in range(2):
        anonymous = httpx.get(url)
        assert anonymous.status_code == 401 and owner_id not in anonymous.text
        assert anonymous.headers[edge.CACHE_STATUS_HEADER] == "MISS"
    # A share view asked for with credentials bypasses the cache too.
    link = public + share(public, owner, job_id)
    assert httpx.get(link).status_code == 200
    assert httpx.get(link, headers=bearer(other)).headers[edge.CACHE_STATUS_HEADER] == "BYPASS"


class Steady:
    """One kind of request through the edge from a few threads until stopped, each answer
    counted; half the threads open a connection per request, half keep theirs."""

    def __init__(
        self, send: Callable[[httpx.Client], httpx.Response], ok: int = 200, threads: int = 4
    ) -> None:
        self.send, self.ok = send, ok
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []  # what each other answer said (which tier, and why)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i % 2 == 0,)) for i in range(threads)
        ]

    def _run(self, reuse: bool) -> None:
        with httpx.Client(timeout=15) as kept:
            while not self._stop.is_set():
                try:
                    if reuse:
                        r = self.send(kept)
                    else:
                        with httpx.Client(timeout=15) as new:
                            r = self.send(new)
                    self.outcomes[str(r.status_code)] += 1
                    if r.status_code != self.ok:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.outcomes[type(exc).__name__] += 1
                    connection = "reused" if reuse else "new"
                    self.failures.append(f"{type(exc).__name__} ({connection} connection): {exc}")

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wait_for_more(self, count: int) -> None:
        target = sum(self.outcomes.values()) + count
        wait_for(lambda: True if sum(self.outcomes.values()) >= target else None, 30)


def steady_gets(url: str, headers: dict[str, str]) -> Steady:
    return Steady(lambda client: client.get(url, headers=headers))


class SteadyPings(Steady):
    """A ping a request, each from a driver of its own (under the per-driver rate limit),
    through the edge; the ids of those accepted are kept, to find them stored."""

    def __init__(self, public: str, token: Token) -> None:
        super().__init__(self._post, ok=202)
        self.public, self.token = public, token
        self.accepted: list[str] = []

    def _post(self, client: httpx.Client) -> httpx.Response:
        ping = ping_at(datetime.now(UTC), 0.0)
        driver = bearer(self.token(Role.DRIVER, f"drv-roll-{uuid.uuid4().hex[:8]}"))
        r = client.post(self.public + "/v1/pings", json={"pings": [ping]}, headers=driver)
        if r.status_code == 202:
            self.accepted.append(ping["ping_id"])
        return r


@pytest.fixture
def two_apis(stack: Stack) -> Iterator[None]:
    stack.scale("api", 2)
    try:
        yield
    finally:
        stack.scale("api", 1)


def restarted(stack: Stack, name: str, old_pid: int) -> int | None:
    record = stack.records.get(name)
    if record is None or record.ref.pid == old_pid or not record.ref.alive():
        return None
    return record.ref.pid if stack.components[name].ready() else None


def in_rotation(public: str, job_id: str, customer: str) -> bool | None:
    """An api process answers through the edge (an uncached read)."""
    r = httpx.get(f"{public}/v1/jobs/{job_id}", headers=bearer(customer))
    return True if r.status_code == 200 else None


def test_each_route_takes_the_body_it_needs_and_metrics_stay_private(
    stack: Stack, public: str, token: Token
) -> None:
    customer = bearer(token(Role.CUSTOMER, f"cus-body-{uuid.uuid4().hex[:6]}"))
    # The services' own metrics are not public (Prometheus scrapes their ports).
    r = httpx.get(public + "/metrics")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert httpx.get(stack.urls("api")[0] + "/metrics").status_code == 200
    # A JSON route: 2 MiB is refused by the edge before any service sees it.
    big = b'{"pickup": "' + b"x" * (2 * 2**20) + b'"}'
    r = httpx.post(public + "/v1/jobs", content=big, headers=customer)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
    # The proof photo's route takes a photo-sized body (the api answers it: 404, not this
    # driver's job), and the edge refuses one past a photo's limit.
    job_id = create_job(public, token(Role.CUSTOMER, "cus-body"))
    driver = bearer(token(Role.DRIVER, "drv-body"))
    for size, status in ((5 * 2**20, 404), (12 * 2**20, 413)):
        files = {"photo": ("p.jpg", b"\xff" * size, "image/jpeg")}
        r = httpx.post(f"{public}/v1/jobs/{job_id}/complete", files=files, headers=driver)
        assert r.status_code == status, (size, r.text)


def test_kill_9_of_an_api_process_under_gets_fails_none_and_it_comes_back(
    stack: Stack, public: str, token: Token
) -> None:
    customer = token(Role.CUSTOMER, f"cust-kill-{uuid.uuid4().hex[:6]}")
    job_id = create_job(public, customer)
    # Read by a dispatcher: a customer this fast would be held to their rate (429).
    dispatcher = token(Role.DISPATCHER, f"disp-kill-{uuid.uuid4().hex[:6]}")
    with steady_gets(f"{public}/v1/jobs/{job_id}", bearer(dispatcher)) as gets:
        gets.wait_for_more(50)
        stack.scale("api", 2)  # HAProxy reloads under the load
        gets.wait_for_more(100)
        old = stack.records["api-1"].ref.pid
        stack.crash("api-1")
        wait_for(lambda: restarted(stack, "api-1", old), timeout_s=30)
        gets.wait_for_more(200)
        stack.scale("api", 1)  # and again, with api-2 stopping under it
        gets.wait_for_more(100)
    assert set(gets.outcomes) == {"200"}, (gets.outcomes, gets.failures)
    assert stack.status()["api-1"]["restarts"] >= 1


def test_a_rolling_restart_of_the_api_under_gets_fails_none(
    stack: Stack, public: str, token: Token
) -> None:
    customer = token(Role.CUSTOMER, f"cust-roll-{uuid.uuid4().hex[:6]}")
    job_id = create_job(public, customer)
    dispatcher = token(Role.DISPATCHER, f"disp-roll-{uuid.uuid4().hex[:6]}")
    before = stack.records["api-1"].ref.pid
    with steady_gets(f"{public}/v1/jobs/{job_id}", bearer(dispatcher)) as gets:
        gets.wait_for_more(50)
        stack.roll("api")  # api-2 started, api-1 drained, replaced, api-2 drained, stopped
        gets.wait_for_more(50)
    assert set(gets.outcomes) == {"200"}, (gets.outcomes, gets.failures)
    assert stack.records["api-1"].ref.pid != before
    assert "api-2" not in stack.records and stack.config.api_processes == 1
    assert haproxy.server_stat(stack.config, "api", "api-1")["status"] == "UP"


def test_rolling_restarts_of_ingest_and_the_stream_under_pings_fail_none_and_lose_none(
    stack: Stack, public: str, token: Token
) -> None:
    before = {name: stack.records[name].ref.pid for name in ("ingest-1", "streams-1")}
    with SteadyPings(public, token) as pings:
        pings.wait_for_more(50)
        stack.roll("ingest")  # drained in HAProxy, as the api is
        pings.wait_for_more(50)
        stack.roll("streams")  # the group rebalances onto the extra worker and back
        pings.wait_for_more(50)
    assert set(pings.outcomes) == {"202"}, (pings.outcomes, pings.failures[:5])
    assert all(stack.records[name].ref.pid != pid for name, pid in before.items())
    # Every ping acknowledged is stored, once.
    accepted = list(pings.accepted)

    def all_stored() -> int | None:
        with psycopg.connect(postgres.dsn(stack.config, "primary")) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pings WHERE ping_id = ANY(%s::uuid[])", (accepted,)
            ).fetchone()
        return row[0] if row and row[0] >= len(accepted) else None

    assert wait_for(all_stored, timeout_s=60) == len(accepted)


def test_a_rolling_restart_of_the_notifier_refuses_no_handshake_and_misses_no_event(
    stack: Stack, public: str, token: Token
) -> None:
    customer = token(Role.CUSTOMER, f"cust-wsroll-{uuid.uuid4().hex[:6]}")
    dispatcher = bearer(token(Role.DISPATCHER, "disp-wsroll"))
    job_id = create_job(public, customer)
    watcher = JobWatcher(ws(stack), customer, uuid.UUID(job_id))
    before = stack.records["notifier-1"].ref.pid

    async def run() -> tuple[list[dict[str, object]], list[int]]:
        stream = watcher.messages()
        assert (await anext(stream))["type"] == "snapshot"
        seen: list[dict[str, object]] = []

        async def follow() -> None:
            async for message in stream:
                seen.append(message)

        follower = asyncio.create_task(follow())
        # New handshakes through the edge all along the roll: each must open.
        roll = asyncio.create_task(asyncio.to_thread(stack.roll, "notifier"))
        handshakes: list[int] = []
        while not roll.done():
            statuses, held = await open_many(ws(stack), 1)
            handshakes += statuses
            await close_all(held)
            await asyncio.wait({roll}, timeout=0.2)  # pacing: about five a second
        await roll
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                f"{public}/v1/jobs/{job_id}/assign", json={"driver_id": "drv-r"}, headers=dispatcher
            )
            assert r.status_code == 200, r.text
        await asyncio.to_thread(
            wait_for, lambda: any(m["type"] == "job.status" for m in seen) or None, 30
        )
        follower.cancel()
        return seen, handshakes

    seen, handshakes = asyncio.run(run())
    assert handshakes and set(handshakes) == {101}, Counter(handshakes)
    assert stack.records["notifier-1"].ref.pid != before
    # Moved off each process as it stopped, with a clean close (1001, going away), and
    # resumed by seq: the event after the roll arrived, once, with no gap.
    assert watcher.tally.connects >= 2
    assert set(watcher.tally.closes) == {1001}, watcher.tally.closes
    assert (watcher.tally.duplicates, watcher.tally.gaps) == (0, 0)
    assert [m["seq"] for m in seen if m["type"] == "job.status"] == [2]


def haproxy_processes(stack: Stack) -> str:
    """The master's list of workers, old ones (still finishing after a reload) included."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as master:
        master.settimeout(5)
        master.connect(str(haproxy.master_socket_path(stack.config)))
        master.sendall(b"show proc\n")
        return master.recv(65536).decode(errors="replace")


def api_servers(stack: Stack) -> list[dict[str, str]]:
    """HAProxy's view of the api backend's servers, for a failure's message."""
    csv = httpx.get(haproxy.stats_url(stack.config) + "/;csv", timeout=5).text.lstrip("# ")
    rows = [
        dict(zip(csv.splitlines()[0].split(","), line.split(","), strict=False))
        for line in csv.splitlines()[1:]
    ]
    fields = ("svname", "status", "scur", "stot", "hrsp_2xx", "hrsp_5xx", "check_status", "lastchg")
    return [{f: row.get(f, "") for f in fields} for row in rows if row.get("pxname") == "api"]


def test_a_post_in_flight_when_its_process_dies_gets_an_error_answer(
    stack: Stack, public: str, token: Token, two_apis: None
) -> None:
    customer = token(Role.CUSTOMER, f"cust-post-{uuid.uuid4().hex[:6]}")
    victim = stack.records["api-1"].ref
    answers: list[tuple[int, dict[str, object]]] = []

    def post() -> None:
        r = httpx.post(public + "/v1/jobs", json=BODY, headers=bearer(customer), timeout=60)
        answers.append((r.status_code, r.json()))

    # Frozen, api-1 still takes connections but answers nothing: the POSTs HAProxy sends it
    # are in flight when it dies.
    victim_pid = victim.pid
    os.kill(victim_pid, signal.SIGSTOP)
    posts = [threading.Thread(target=post) for _ in range(6)]
    started = time.monotonic()
    try:
        for thread in posts:
            thread.start()
        if not wait_until(lambda: len(answers) >= 3, timeout_s=20):  # api-2's
            pytest.fail(
                f"{len(answers)} answers within 20 s: {answers}; {api_servers(stack)};"
                f" HAProxy's processes: {haproxy_processes(stack)}"
            )
    finally:
        # Never left frozen, whatever failed: the tests after this one need an api.
        os.kill(victim_pid, signal.SIGKILL)
    for thread in posts:
        thread.join(timeout=30)
    assert len(answers) == 6, "a POST got no answer"
    assert time.monotonic() - started < 30
    codes = Counter(code for code, _ in answers)
    assert codes[201] >= 3 and set(codes) <= {201, 502}, answers
    assert codes[502] >= 1, "no POST was in flight at the kill"
    for code, body in answers:
        if code == 502:
            assert body["error"]["code"] == "bad_gateway"  # type: ignore[index]
    wait_for(lambda: restarted(stack, "api-1", victim_pid), timeout_s=30)


def test_a_websocket_through_both_tiers_outlives_an_api_process(
    stack: Stack, public: str, token: Token
) -> None:
    customer = token(Role.CUSTOMER, f"cust-ws-{uuid.uuid4().hex[:6]}")
    dispatcher = bearer(token(Role.DISPATCHER, "disp-edge"))
    job_id = create_job(public, customer)
    watcher = JobWatcher(ws(stack), customer, uuid.UUID(job_id))

    async def run() -> list[dict[str, object]]:
        stream = watcher.messages()
        first = await anext(stream)
        assert first["type"] == "snapshot"
        old = stack.records["api-1"].ref.pid
        stack.crash("api-1")
        await asyncio.to_thread(wait_for, lambda: restarted(stack, "api-1", old), 30)
        # Back in HAProxy's rotation (its next check) before the write goes through it.
        await asyncio.to_thread(wait_for, lambda: in_rotation(public, job_id, customer), 10)
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                f"{public}/v1/jobs/{job_id}/assign", json={"driver_id": "drv-e"}, headers=dispatcher
            )
            assert r.status_code == 200, r.text
        seen = []
        async with asyncio.timeout(30):
            async for message in stream:
                seen.append(message)
                if message["type"] == "job.status":
                    break
        return seen

    seen = asyncio.run(run())
    assert seen[-1]["seq"] == 2
    assert watcher.tally.connects == 1, "the WebSocket was reconnected"


def replaced_or_given_up(stack: Stack, name: str, pid: int) -> bool | None:
    record = stack.records[name]
    return True if record.gave_up or record.ref.pid != pid else None


def test_a_process_that_keeps_crashing_is_given_up_on_and_status_says_so(
    stack: Stack,
) -> None:
    name = "photo-worker-1"
    try:
        for _ in range(12):
            record = stack.records[name]
            if record.gave_up:
                break
            stack.crash(name)
            # The supervisor starts it again after a growing pause; crash that one too.
            wait_for(functools.partial(replaced_or_given_up, stack, name, record.ref.pid), 60)
        status = stack.status()[name]
        assert status["gave_up"] and not status["healthy"] and not status["running"]
        time.sleep(6 * supervisor.INTERVAL_S)  # six of its looks: still nothing
        assert not stack.running(name)
    finally:
        stack.start(name)  # an operator's `telemetry up` does the same
    assert stack.status()[name]["healthy"]
    assert "gave_up" not in stack.status()[name]


@contextlib.contextmanager
def tiers_beside(stack: Stack, **settings: int) -> Iterator[StackConfig]:
    """An HAProxy and an nginx of their own, with `settings` (lowered limits), in front of
    the stack's services: the limits are tried without touching the stack's tiers."""
    scratch = stack.config.state_dir / f"beside-{uuid.uuid4().hex[:6]}"
    ports = {
        "haproxy_port": free_port(),
        "haproxy_stats_port": free_port(),
        "edge_port": free_port(),
        "edge_status_port": free_port(),
    }
    config = stack.config.model_copy(update={"state_dir": scratch, **ports, **settings})
    config.run_dir.mkdir(parents=True)
    config.logs_dir.mkdir(parents=True)
    haproxy.prepare(config)
    started = [runtimes.spawn(config, haproxy.command(config))]
    try:
        edge.prepare(config)
        started.append(runtimes.spawn(config, edge.command(config)))
        assert wait_until(lambda: haproxy.ready(config) and edge.ready(config), 30)
        yield config
    finally:
        for ref in reversed(started):
            stop(ref, timeout_s=10)


def test_a_client_past_its_request_rate_gets_429_and_others_go_on(
    stack: Stack, token: Token
) -> None:
    with tiers_beside(stack, edge_requests_per_client_s=1, edge_request_burst=3) as config:
        url = edge.url(config) + "/v1/jobs"
        headers = bearer(token(Role.CUSTOMER, f"cust-rate-{uuid.uuid4().hex[:6]}"))
        answers = [httpx.get(url, headers=headers) for _ in range(10)]
        statuses = [r.status_code for r in answers]
        assert statuses[:4] == [200] * 4 and set(statuses[4:]) == {429}, statuses
        refused = answers[-1]
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert refused.headers["Retry-After"] == "1"
        # The stack's own edge, with the local defaults, is not limited by this client.
        assert httpx.get(f"{stack.public_url()}/v1/jobs", headers=headers).status_code == 200


def test_a_client_past_its_connections_gets_429_at_the_handshake(stack: Stack) -> None:
    with tiers_beside(stack, edge_connections_per_client=3) as config:

        async def hold() -> list[int]:
            statuses, held = await open_many(edge.ws_url(config), 4)
            await close_all(held)
            return statuses

        assert asyncio.run(hold()) == [101, 101, 101, 429]


def test_each_service_has_its_own_connection_budget_at_haproxy(stack: Stack, token: Token) -> None:
    # WebSockets past the notifier's budget are refused; the api's requests still pass.
    with tiers_beside(stack, haproxy_notifier_maxconn=2) as config:
        ws_url = haproxy.url(config).replace("http://", "ws://") + haproxy.WS_PATH

        async def hold() -> tuple[list[int], int]:
            statuses, held = await open_many(ws_url, 3)
            headers = bearer(token(Role.CUSTOMER, f"cust-budget-{uuid.uuid4().hex[:6]}"))
            async with httpx.AsyncClient() as client:
                api = await client.get(haproxy.url(config) + "/v1/jobs", headers=headers)
            await close_all(held)
            return statuses, api.status_code

        statuses, api_status = asyncio.run(hold())
        assert statuses == [101, 101, 503] and api_status == 200
