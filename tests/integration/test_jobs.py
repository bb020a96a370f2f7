"""Jobs against the real api, PgBouncer and PostgreSQL: the lifecycle, who may do what,
idempotent retries, events and outbox rows written with each change, pagination."""

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from io import BytesIO
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from infra import devices, pgbouncer, postgres
from infra.config import StackConfig
from infra.redis import url as redis_url
from infra.stack import Stack
from jobs import relay
from jobs.blob_sweep import SweepLimits, sweep_blobs
from jobs.blobs import DirectoryBlobStore
from runtime.geo import destination
from runtime.postgres import open_pool
from schemas import topics
from schemas.auth import Role
from schemas.jobs import JobEvent, JobStatus
from tests.support.crafted_photos import corrupt_gps_jpeg
from tests.support.driving import ping_at, post, stored, wait_stored
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration

BODY = {"pickup": {"lat": 12.97, "lon": 77.59}, "dropoff": {"lat": 12.93, "lon": 77.62}}


class Caller:
    """One principal talking to the api."""

    def __init__(
        self, config: StackConfig, token: Callable[..., str], role: Role | None, sub: str
    ) -> None:
        """`role` None: a caller without a token."""
        self.sub = sub
        self.base = f"http://127.0.0.1:{config.api_port}"
        self.headers = {} if role is None else {"Authorization": f"Bearer {token(role, sub)}"}

    def post(self, path: str, body: Any = None, key: str | None = None) -> httpx.Response:
        headers = self.headers | ({"Idempotency-Key": key} if key else {})
        return httpx.post(self.base + path, json=body, headers=headers)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.base + path, headers=self.headers, params=params)


@pytest.fixture
def people(config: StackConfig, token: Callable[..., str]) -> dict[str, Caller]:
    tag = uuid.uuid4().hex[:6]
    return {
        "customer": Caller(config, token, Role.CUSTOMER, f"cus-{tag}"),
        "other_customer": Caller(config, token, Role.CUSTOMER, f"cus2-{tag}"),
        "dispatcher": Caller(config, token, Role.DISPATCHER, f"disp-{tag}"),
        "driver": Caller(config, token, Role.DRIVER, f"drv-{tag}"),
        "other_driver": Caller(config, token, Role.DRIVER, f"drv2-{tag}"),
        "ops": Caller(config, token, Role.OPS, f"ops-{tag}"),
    }


def events(config: StackConfig, job_id: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        # One snapshot for both reads: an event committing between them is in both or neither.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        rows = conn.execute(
            "SELECT seq, type, data ->> 'action' FROM job_events WHERE job_id = %s ORDER BY seq",
            [job_id],
        ).fetchall()
        outbox = conn.execute(
            "SELECT (payload ->> 'seq')::int FROM outbox WHERE key = %s AND topic = %s ORDER BY id",
            [job_id, topics.JOB_EVENTS],
        ).fetchall()
    # Every event has its outbox row, in the same order.
    assert [r[0] for r in outbox] == [r[0] for r in rows]
    return [(r[0], r[1], r[2]) for r in rows]


def test_a_job_goes_from_created_to_picked_up_with_an_event_per_change(
    config: StackConfig, people: dict[str, Caller], token: Callable[..., str]
) -> None:
    customer, dispatcher, driver = people["customer"], people["dispatcher"], people["driver"]
    r = customer.post("/v1/jobs", BODY | {"reference": "order 17"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["status"], job["customer_id"], job["driver_id"]) == (
        "created", customer.sub, None,
    )  # fmt: skip
    assert job["seq"] == 1 and job["reference"] == "order 17"
    path = f"/v1/jobs/{job['job_id']}"

    r = dispatcher.post(f"{path}/assign", {"driver_id": driver.sub})
    assert (r.status_code, r.json()["status"], r.json()["driver_id"]) == (
        200, "assigned", driver.sub,
    )  # fmt: skip
    # The driver's position shows on the job while it is under way.
    post(config, token(Role.DRIVER, driver.sub), [ping_at(datetime.now(UTC), 0)])
    seen = wait_for(
        lambda: body if (body := customer.get(path).json())["driver_position"] else None
    )
    assert seen["status"] == "assigned" and seen["driver_position"]["lat"] == pytest.approx(
        12.97, abs=0.01
    )
    # Via the pickup (where the driver stands) to the dropoff, 5 km away: minutes, not hours.
    assert seen["eta_basis"] == "live" and 300 < seen["eta_seconds"] < 3600
    r = driver.post(f"{path}/pickup")
    assert (r.status_code, r.json()["status"], r.json()["seq"]) == (200, "picked_up", 3)
    assert driver.get(path).json()["status"] == "picked_up"
    assert events(config, job["job_id"]) == [
        (1, "job.created", None),
        (2, "job.status", "assign"),
        (3, "job.status", "pickup"),
    ]
    # Wrong order: a conflict, and nothing written.
    assert dispatcher.post(f"{path}/assign", {"driver_id": "drv-x"}).status_code == 409
    assert customer.post(f"{path}/cancel").status_code == 409
    assert len(events(config, job["job_id"])) == 3


# Who may call what: every endpoint x every caller, each cell on a job in the state the
# endpoint wants (so that a refusal is about the caller, never about the job's state).
# "customer" owns the job and "driver" is assigned to it once it is assigned.
CALLERS = ("customer", "other_customer", "dispatcher", "driver", "other_driver", "ops", "nobody")
MATRIX: dict[str, tuple[str, tuple[int, ...]]] = {
    # endpoint: (the job's state, one status per caller in CALLERS' order)
    "create": ("none", (201, 201, 201, 403, 403, 403, 401)),
    "list": ("none", (200, 200, 200, 200, 200, 200, 401)),
    "assign": ("created", (403, 404, 200, 404, 404, 403, 401)),
    "cancel": ("assigned", (200, 404, 200, 403, 404, 403, 401)),
    "pickup": ("assigned", (403, 404, 403, 200, 404, 403, 401)),
    "complete": ("picked_up", (403, 404, 403, 202, 404, 403, 401)),
    "get": ("assigned", (200, 404, 200, 200, 404, 200, 401)),
    "track": ("assigned", (200, 404, 200, 200, 404, 200, 401)),
    "share": ("assigned", (201, 404, 201, 403, 404, 403, 401)),
    "open_share": ("assigned", (200, 200, 200, 200, 200, 200, 200)),
    "task": ("completing", (200, 404, 200, 200, 404, 200, 401)),
}


def job_in(people: dict[str, Caller], state: str) -> tuple[str, str | None]:
    """A new job of "customer" in `state`: its path, and its task id once completing."""
    path = f"/v1/jobs/{people['customer'].post('/v1/jobs', BODY).json()['job_id']}"
    task_id = None
    if state != "created":
        people["dispatcher"].post(f"{path}/assign", {"driver_id": people["driver"].sub})
    if state in ("picked_up", "completing"):
        assert people["driver"].post(f"{path}/pickup").status_code == 200
    if state == "completing":
        task_id = send_photo(people["driver"], path, jpeg()).json()["task_id"]
    return path, task_id


def call(people: dict[str, Caller], endpoint: str, caller: Caller) -> httpx.Response:
    path, task_id = ("/v1/jobs", None)
    state = MATRIX[endpoint][0]
    if state != "none":
        path, task_id = job_in(people, state)
    match endpoint:
        case "create":
            return caller.post("/v1/jobs", BODY)
        case "list":
            return caller.get("/v1/jobs")
        case "assign":
            return caller.post(f"{path}/assign", {"driver_id": people["driver"].sub})
        case "cancel" | "pickup":
            return caller.post(f"{path}/{endpoint}")
        case "complete":
            return send_photo(caller, path, jpeg())
        case "get":
            return caller.get(path)
        case "track":
            return caller.get(f"{path}/track")
        case "share":
            return caller.post(f"{path}/share")
        case "open_share":
            link = people["customer"].post(f"{path}/share").json()
            return caller.get(link["url"])
        case "task":
            return caller.get(f"/v1/tasks/{task_id}")
    raise AssertionError(endpoint)


def test_who_may_do_what(
    config: StackConfig, token: Callable[..., str], people: dict[str, Caller]
) -> None:
    everyone = people | {"nobody": Caller(config, token, None, "nobody")}
    wrong = {}
    for endpoint, (_, expected) in MATRIX.items():
        for name, status in zip(CALLERS, expected, strict=True):
            answer = call(people, endpoint, everyone[name])
            if answer.status_code != status:
                wrong[(endpoint, name)] = (answer.status_code, status)
            elif status >= 400:  # every refusal is the JSON envelope, with a code
                assert answer.json()["error"]["code"], (endpoint, name, answer.text)
    assert not wrong, wrong  # (endpoint, caller): (got, expected)
    # Lists hold only what the caller may see.
    path, _ = job_in(people, "assigned")
    job_id = path.rsplit("/", 1)[1]
    for name, sees in {
        "customer": True, "other_customer": False, "dispatcher": True, "driver": True,
        "other_driver": False, "ops": True,
    }.items():  # fmt: skip
        listed = {j["job_id"] for j in people[name].get("/v1/jobs").json()["jobs"]}
        assert (job_id in listed) == sees, name
    assert people["other_customer"].get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    r = people["customer"].post("/v1/jobs", BODY | {"customer_id": "someone-else"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


# Broken object-level authorization (BOLA): each of these, by one tenant on another
# tenant's job, is a 404 (never a 403 that would confirm the id exists), and changes nothing.
FOREIGN_CALLS: dict[str, Callable[[Caller, str, str], httpx.Response]] = {
    "get": lambda c, path, task: c.get(path),
    "track": lambda c, path, task: c.get(f"{path}/track"),
    "task": lambda c, path, task: c.get(f"/v1/tasks/{task}"),
    "assign": lambda c, path, task: c.post(f"{path}/assign", {"driver_id": c.sub}),
    "cancel": lambda c, path, task: c.post(f"{path}/cancel"),
    "pickup": lambda c, path, task: c.post(f"{path}/pickup"),
    "complete": lambda c, path, task: send_photo(c, path, jpeg((64, 48))),
    "share": lambda c, path, task: c.post(f"{path}/share"),
    "revoke": lambda c, path, task: httpx.delete(f"{c.base}{path}/share", headers=c.headers),
}


@pytest.fixture(scope="module")
def tenants(config: StackConfig, token: Callable[..., str]) -> list[dict[str, Any]]:
    """Three tenants, each a customer with a job its own driver has picked up, and one
    whose proof is in (a task)."""
    tag = uuid.uuid4().hex[:6]
    dispatcher = Caller(config, token, Role.DISPATCHER, f"disp-{tag}")
    made = []
    for i in range(3):
        people = {
            "customer": Caller(config, token, Role.CUSTOMER, f"cus-{i}-{tag}"),
            "driver": Caller(config, token, Role.DRIVER, f"drv-{i}-{tag}"),
            "dispatcher": dispatcher,
        }
        picked_up, _ = job_in(people, "picked_up")
        completing, task = job_in(people, "completing")
        made.append(people | {"jobs": [picked_up, completing], "task": task})
    return made


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    reader=st.integers(0, 2),
    owner=st.integers(0, 2),
    role=st.sampled_from(["customer", "driver"]),
    job=st.integers(0, 1),
    action=st.sampled_from(sorted(FOREIGN_CALLS)),
)
def test_one_tenant_never_reaches_anothers_jobs(
    tenants: list[dict[str, Any]], reader: int, owner: int, role: str, job: int, action: str
) -> None:
    assume(reader != owner)
    caller, target = tenants[reader][role], tenants[owner]
    path = target["jobs"][job]
    answer = FOREIGN_CALLS[action](caller, path, target["task"])
    assert answer.status_code == 404, (action, role, answer.text)
    assert answer.json()["error"]["code"] == "not_found"
    # Listed: only what is the caller's own.
    listed = caller.get("/v1/jobs").json()["jobs"]
    assert all(caller.sub in (j["customer_id"], j["driver_id"]) for j in listed), listed
    # Nothing changed: the owner still sees the job where it was.
    assert target["customer"].get(path).json()["status"] in (
        ("picked_up",) if job == 0 else ("completing", "completed")
    )


def test_bad_input_is_refused_in_the_envelope(people: dict[str, Caller]) -> None:
    dispatcher = people["dispatcher"]
    for body in (
        {},
        {"pickup": {"lat": 91, "lon": 0}, "dropoff": BODY["dropoff"]},
        BODY | {"unknown": 1},
        BODY | {"reference": "x" * 201},
        BODY | {"reference": "a\u0000b"},  # PostgreSQL text holds no NUL byte
        BODY | {"customer_id": "bad id with spaces"},
    ):
        r = dispatcher.post("/v1/jobs", body)
        assert r.status_code == 422, body
        assert r.json()["error"]["code"] == "invalid"
    job = dispatcher.post("/v1/jobs", BODY).json()
    r = dispatcher.post(f"/v1/jobs/{job['job_id']}/assign", {"driver_id": "a\u0000b"})
    assert r.status_code == 422
    assert dispatcher.get("/v1/jobs", cursor="not-a-cursor").status_code == 422
    assert dispatcher.get("/v1/jobs", limit=0).status_code == 422
    # A JSON body past 64 KiB: refused from its length, or while it streams in (chunked).
    huge = {"padding": "x" * 70_000}
    headers = dispatcher.headers | {"Content-Type": "application/json"}

    def chunks() -> Any:
        yield orjson.dumps(huge)

    for content in (orjson.dumps(huge), chunks()):
        r = httpx.post(f"{dispatcher.base}/v1/jobs", content=content, headers=headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_a_retried_post_with_its_idempotency_key_changes_nothing_twice(
    config: StackConfig, people: dict[str, Caller]
) -> None:
    customer, dispatcher = people["customer"], people["dispatcher"]
    key = uuid.uuid4().hex
    first = customer.post("/v1/jobs", BODY, key=key)
    again = customer.post("/v1/jobs", BODY, key=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    # The same key with another body is a client bug: refused, nothing created.
    other = customer.post("/v1/jobs", BODY | {"reference": "other"}, key=key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # Keys belong to their principal: another customer's same key is theirs alone.
    assert people["other_customer"].post("/v1/jobs", BODY, key=key).json() != first.json()

    # Concurrent retries of one assign: one change, one event, the same answer to all.
    job_id = first.json()["job_id"]
    assign_key = uuid.uuid4().hex
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: dispatcher.post(
                    f"/v1/jobs/{job_id}/assign", {"driver_id": people["driver"].sub}, assign_key
                ),
                range(8),
            )
        )
    assert {a.status_code for a in answers} == {200}
    assert len({a.text for a in answers}) == 1
    assert [e[2] for e in events(config, job_id)] == [None, "assign"]
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        created = conn.execute(
            "SELECT count(*) FROM jobs WHERE customer_id = %s", [customer.sub]
        ).fetchone()
    assert created == (1,)


def test_the_callers_jobs_come_newest_first_in_pages(people: dict[str, Caller]) -> None:
    customer, dispatcher, driver = people["customer"], people["dispatcher"], people["driver"]
    made = [customer.post("/v1/jobs", BODY).json()["job_id"] for _ in range(5)]
    people["other_customer"].post("/v1/jobs", BODY)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = customer.get("/v1/jobs", **params).json()
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    dispatcher.post(f"/v1/jobs/{made[0]}/assign", {"driver_id": driver.sub})
    assert [j["job_id"] for j in driver.get("/v1/jobs").json()["jobs"]] == [made[0]]
    assert dispatcher.get("/v1/jobs", limit=200).status_code == 200


def test_a_job_is_cancelled_before_pickup_by_its_customer(
    config: StackConfig, people: dict[str, Caller]
) -> None:
    customer = people["customer"]
    job = customer.post("/v1/jobs", BODY).json()
    path = f"/v1/jobs/{job['job_id']}"
    assert people["other_customer"].post(f"{path}/cancel").status_code == 404
    r = customer.post(f"{path}/cancel")
    assert (r.status_code, r.json()["status"]) == (200, "cancelled")
    assert customer.post(f"{path}/cancel").status_code == 409
    assert people["dispatcher"].post(f"{path}/assign", {"driver_id": "d"}).status_code == 409
    assert [e[1:] for e in events(config, job["job_id"])] == [
        ("job.created", None),
        ("job.status", "cancel"),
    ]
    assert customer.get(path).json()["driver_position"] is None  # never under way


# What a query string could try to order: none of it is a parameter of any POST route.
HOSTILE_QUERY = {
    "action": "complete",
    "status": "completed",
    "driver_id": "intruder",
    "customer_id": "intruder",
    "ttl_s": "60",
}


def test_no_post_route_obeys_a_query_parameter_it_does_not_publish(
    config: StackConfig, people: dict[str, Caller], token: Callable[..., str]
) -> None:
    customer, dispatcher, driver = people["customer"], people["dispatcher"], people["driver"]

    def hostile(caller: Caller, path: str, body: Any = None, **query: str) -> httpx.Response:
        params = HOSTILE_QUERY | query
        return httpx.post(caller.base + path, params=params, json=body, headers=caller.headers)

    checked = set()
    r = hostile(customer, "/v1/jobs", BODY)
    assert r.status_code == 201, r.text
    assert (r.json()["customer_id"], r.json()["status"]) == (customer.sub, "created")
    checked.add("/v1/jobs")
    path = f"/v1/jobs/{r.json()['job_id']}"

    r = hostile(dispatcher, f"{path}/assign", {"driver_id": driver.sub}, action="cancel")
    assert (r.status_code, r.json()["status"], r.json()["driver_id"]) == (
        200, "assigned", driver.sub,
    )  # fmt: skip
    checked.add("/v1/jobs/{job_id}/assign")

    r = hostile(driver, f"{path}/pickup")  # ?action=complete: once moved a job to completing
    assert (r.status_code, r.json()["status"]) == (200, "picked_up"), r.text
    r = hostile(driver, f"{path}/pickup")
    # The driver reads their own writes (the customer's view may be a cached second old).
    assert r.status_code == 409 and driver.get(path).json()["status"] == "picked_up"
    checked.add("/v1/jobs/{job_id}/pickup")

    r = hostile(customer, f"{path}/share")  # ?ttl_s=60: the body's (default) ttl counts
    assert r.status_code == 201, r.text
    expires = datetime.fromisoformat(r.json()["expires_at"])
    assert expires > datetime.now(UTC) + timedelta(hours=23)
    checked.add("/v1/jobs/{job_id}/share")

    r = httpx.post(
        f"{driver.base}{path}/complete",
        params=HOSTILE_QUERY | {"action": "finish"},
        files={"photo": ("proof.jpg", jpeg(), "image/jpeg")},
        headers=driver.headers,
    )
    assert r.status_code == 202, r.text
    checked.add("/v1/jobs/{job_id}/complete")
    job_id = path.rsplit("/", 1)[1]
    # The driver's complete, as published; the worker's finish (if done yet) comes after.
    assert [e[2] for e in events(config, job_id)][:4] == [None, "assign", "pickup", "complete"]

    cancelled = people["customer"].post("/v1/jobs", BODY).json()["job_id"]
    dispatcher.post(f"/v1/jobs/{cancelled}/assign", {"driver_id": driver.sub})
    r = hostile(dispatcher, f"/v1/jobs/{cancelled}/cancel", action="assign")  # once: no driver
    assert (r.status_code, r.json()["status"]) == (200, "cancelled"), r.text
    checked.add("/v1/jobs/{job_id}/cancel")

    # Ingest's one POST: the driver is the token's, whatever the query says.
    pinger = f"drv-q-{uuid.uuid4().hex[:6]}"
    r = httpx.post(
        f"http://127.0.0.1:{config.ingest_port}/v1/pings",
        params=HOSTILE_QUERY,
        json={"pings": [ping_at(datetime.now(UTC), 0)]},
        headers={"Authorization": f"Bearer {token(Role.DRIVER, pinger)}"},
    )
    assert r.status_code == 202, r.text
    assert len(wait_stored(config, pinger, 1)) == 1
    checked.add("/v1/pings")

    # A device's fix (OsmAnd carries it in the query): its registered driver's, whatever
    # else the query says.
    device, owner = f"dev-q-{uuid.uuid4().hex[:6]}", f"drv-dev-q-{uuid.uuid4().hex[:6]}"
    devices.add(config, device, owner)
    lat, lon = destination(12.97, 77.59, 90.0, 0.0)
    fix = {"id": device, "lat": str(lat), "lon": str(lon)}

    def post_fix() -> httpx.Response | None:
        answer = httpx.post(
            f"http://127.0.0.1:{config.ingest_port}/osmand", params=HOSTILE_QUERY | fix
        )
        return answer if answer.status_code != 403 else None  # until ingest has the device

    assert wait_for(post_fix, timeout_s=15).status_code == 200
    assert len(wait_stored(config, owner, 1)) >= 1
    assert stored(config, "intruder") == []
    checked.add("/osmand")

    # Every POST the services publish was tried above.
    published = {
        route
        for base in (customer.base, f"http://127.0.0.1:{config.ingest_port}")
        for route, ops in httpx.get(base + "/openapi.json").json()["paths"].items()
        if "post" in ops
    }
    assert checked == published


async def consume_events(config: StackConfig, start: dict[Any, int], jobs: set[str]) -> list[Any]:
    """(job_id, seq) of every job-events.v1 record of `jobs` from `start`, in arrival order
    per partition (a job's events all lie in one partition: keyed by job id)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        end = await consumer.end_offsets(list(start))
        seen: list[tuple[str, int]] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in start])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = JobEvent.model_validate_json(record.value)
                    if str(event.job_id) in jobs:
                        assert record.key == str(event.job_id).encode()
                        seen.append((str(event.job_id), event.seq))
        return seen
    finally:
        await consumer.stop()


async def end_offsets(config: StackConfig) -> dict[Any, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topics.JOB_EVENTS, p) for p in range(topics.DRIVER_TOPIC_PARTITIONS)]
        consumer.assign(tps)
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


def test_the_relay_killed_mid_flight_publishes_every_event_once_in_order(
    stack: Stack, config: StackConfig, token: Callable[..., str]
) -> None:
    start = asyncio.run(end_offsets(config))
    customer = Caller(config, token, Role.CUSTOMER, f"cus-{uuid.uuid4().hex[:6]}")
    dispatcher = Caller(config, token, Role.DISPATCHER, "disp-relay")

    def make_job(_: int) -> None:
        try:
            job = customer.post("/v1/jobs", BODY).json()
            dispatcher.post(f"/v1/jobs/{job['job_id']}/assign", {"driver_id": "drv-relay"})
        except (httpx.HTTPError, KeyError):
            pass  # the api was killed under this request: whatever it committed must go out

    with ThreadPoolExecutor(8) as pool:
        first = pool.map(make_job, range(40))
        wait_for(lambda: True if len(job_ids(config, customer.sub)) >= 10 else None)
        stack.kill("api-1")  # the relay dies with its process, probably mid-round
        list(first)
    stack.start("api-1")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make_job, range(10)))
    expected = job_events(config, customer.sub)
    wait_for(lambda: True if unsent(config) == 0 else None, timeout_s=60)

    seen = asyncio.run(consume_events(config, start, set(expected)))
    for job_id, seqs in expected.items():
        arrived = [seq for j, seq in seen if j == job_id]
        # Consumers drop a seq they already have; what is left is every event, in order.
        deduplicated = [seq for n, seq in enumerate(arrived) if seq not in arrived[:n]]
        assert deduplicated == seqs, job_id


def job_ids(config: StackConfig, customer: str) -> list[str]:
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        rows = conn.execute("SELECT job_id::text FROM jobs WHERE customer_id = %s", [customer])
        return [r[0] for r in rows.fetchall()]


def job_events(config: StackConfig, customer: str) -> dict[str, list[int]]:
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        rows = conn.execute(
            "SELECT e.job_id::text, e.seq FROM job_events e WHERE e.job_id IN"
            " (SELECT job_id FROM jobs WHERE customer_id = %s) ORDER BY e.job_id, e.seq",
            [customer],
        ).fetchall()
    events: dict[str, list[int]] = {}
    for job_id, seq in rows:
        events.setdefault(job_id, []).append(seq)
    return events


def unsent(config: StackConfig) -> int:
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
    return int(row[0]) if row else -1


def test_a_row_kafka_refuses_for_good_is_dead_lettered_and_the_events_after_it_go_out(
    config: StackConfig, people: dict[str, Caller]
) -> None:
    # A row past the producer's 1 MiB request limit: Kafka refuses it every time. Before,
    # the relay retried the same round forever and no job event or task left again.
    huge = orjson.dumps({"seq": 1, "pad": "x" * (2 * 1024 * 1024)}).decode()
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        row = conn.execute(
            "INSERT INTO outbox (topic, key, payload) VALUES (%s, %s, %s) RETURNING id",
            [topics.JOB_EVENTS, str(uuid.uuid4()), huge],
        ).fetchone()
    assert row is not None
    job_id = people["customer"].post("/v1/jobs", BODY).json()["job_id"]

    def settled() -> tuple[Any, ...] | None:
        with psycopg.connect(postgres.dsn(config, "primary")) as conn:
            poison = conn.execute(
                "SELECT sent_at IS NOT NULL, error FROM outbox WHERE id = %s", [row[0]]
            ).fetchone()
            after = conn.execute(
                "SELECT count(*) FROM outbox WHERE key = %s AND sent_at IS NULL", [job_id]
            ).fetchone()
        return poison if poison and poison[0] and after == (0,) else None

    sent, error = wait_for(settled, timeout_s=60)
    assert sent and "MessageSizeTooLarge" in error
    assert events(config, job_id)[0][1] == "job.created"


def test_a_share_link_shows_the_delivery_to_anyone_until_it_expires(
    config: StackConfig, people: dict[str, Caller]
) -> None:
    customer, dispatcher = people["customer"], people["dispatcher"]
    job = customer.post("/v1/jobs", BODY | {"reference": "secret order"}).json()
    path = f"/v1/jobs/{job['job_id']}"
    assert people["other_customer"].post(f"{path}/share").status_code == 404
    assert people["ops"].post(f"{path}/share").status_code == 403
    r = customer.post(f"{path}/share", {"ttl_s": 600})
    assert r.status_code == 201, r.text
    link = r.json()
    assert link["url"] == f"/v1/share/{link['token']}"
    public = httpx.get(customer.base + link["url"])  # no token: the link is the credential
    assert public.status_code == 200
    assert public.headers["Cache-Control"].startswith("public")
    view = public.json()
    assert view["status"] == "created" and view["expires_at"] == link["expires_at"]
    # Nothing of the customer's: who they are, what the order is, where from.
    assert not {"customer_id", "reference", "pickup", "job_id"} & set(view)
    assert "secret order" not in public.text and customer.sub not in public.text

    # A change shows once the relay has written the job's views through (after its push).
    dispatcher.post(f"{path}/assign", {"driver_id": people["driver"].sub})
    wait_for(lambda: httpx.get(customer.base + link["url"]).json()["status"] == "assigned" or None)
    # Unknown, malformed and expired links are all simply not there.
    assert httpx.get(customer.base + "/v1/share/" + "A" * 32).status_code == 404
    assert httpx.get(customer.base + "/v1/share/bad%20token").status_code == 422
    with psycopg.connect(postgres.dsn(config, "primary"), autocommit=True) as conn:
        conn.execute(
            "UPDATE share_links SET expires_at = now() - interval '1 second' WHERE job_id = %s",
            [job["job_id"]],
        )
    # A link changed by hand shows once its cached view goes (a link ending by itself is
    # never served past its end: tests/unit/test_view_cache.py).
    forget_share_view(config, link["token"])
    expired = wait_for(
        lambda: ((r := httpx.get(customer.base + link["url"])).status_code == 404 and r) or None
    )
    assert expired.json()["error"]["code"] == "not_found"
    assert customer.post(f"{path}/share", {"ttl_s": 10}).status_code == 422  # under a minute


def test_share_links_are_capped_per_job_and_revoked_by_delete_or_cancel(
    config: StackConfig, people: dict[str, Caller]
) -> None:
    customer, dispatcher = people["customer"], people["dispatcher"]
    path = f"/v1/jobs/{customer.post('/v1/jobs', BODY).json()['job_id']}"
    links = [customer.post(f"{path}/share").json() for _ in range(10)]
    r = customer.post(f"{path}/share")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "conflict")
    assert "10 live share links" in r.json()["error"]["message"]
    for url in (links[0]["url"], links[-1]["url"]):
        assert httpx.get(customer.base + url).status_code == 200

    # Who may revoke: whoever may share.
    base = f"{customer.base}{path}/share"
    for name, status in (("other_customer", 404), ("driver", 404), ("ops", 403)):
        assert httpx.delete(base, headers=people[name].headers).status_code == status, name
    r = httpx.delete(base, headers=customer.headers)
    assert (r.status_code, r.json()) == (200, {"revoked": 10})
    for link in links:  # gone at once: their cached views were dropped with them
        assert httpx.get(customer.base + link["url"]).status_code == 404
    assert httpx.delete(base, headers=dispatcher.headers).json() == {"revoked": 0}
    assert customer.post(f"{path}/share").status_code == 201  # under the cap again

    # A cancel ends the job's links too.
    link = customer.post(f"{path}/share").json()
    assert httpx.get(customer.base + link["url"]).status_code == 200
    assert customer.post(f"{path}/cancel").status_code == 200
    wait_for(lambda: httpx.get(customer.base + link["url"]).status_code == 404 or None)


def forget_share_view(config: StackConfig, token: str) -> None:
    digest = hashlib.sha256(token.encode()).hexdigest()
    with redis.Redis.from_url(redis_url(config)) as client:
        client.delete(f"api:view:share:{digest}")


def test_the_track_is_the_drivers_valid_fixes_during_the_job(
    config: StackConfig, people: dict[str, Caller], token: Callable[..., str]
) -> None:
    customer, driver = people["customer"], people["driver"]
    job = customer.post("/v1/jobs", BODY).json()
    path = f"/v1/jobs/{job['job_id']}"
    assert customer.get(f"{path}/track").json()["geometry"] is None  # nobody assigned
    # Before the assignment: not part of the job's track.
    jwt = token(Role.DRIVER, driver.sub)
    post(config, jwt, [ping_at(datetime.now(UTC) - timedelta(seconds=30), -500)])
    wait_for(lambda: True if len(stored(config, driver.sub)) == 1 else None)
    people["dispatcher"].post(f"{path}/assign", {"driver_id": driver.sub})
    start = datetime.now(UTC)
    fixes = [ping_at(start + timedelta(milliseconds=100 * i), 1.0 * i) for i in range(1, 40)]
    fixes.append(ping_at(start + timedelta(seconds=4), 20_000))  # a teleport: not in a track
    post(config, jwt, fixes)
    wait_for(lambda: True if len(stored(config, driver.sub)) == 41 else None)
    r = wait_for(
        lambda: (
            r if (r := customer.get(f"{path}/track")).json()["properties"]["fixes"] == 39 else None
        )
    )
    assert r.headers["Content-Type"].startswith("application/geo+json")
    body = r.json()
    line = body["geometry"]["coordinates"]
    # A straight drive east: its ends are enough.
    assert body["geometry"]["type"] == "LineString" and len(line) == 2
    assert line[0] == pytest.approx([fixes[0]["lon"], fixes[0]["lat"]])
    assert line[-1] == pytest.approx([fixes[38]["lon"], fixes[38]["lat"]])
    assert people["other_customer"].get(f"{path}/track").status_code == 404
    late, early = start.isoformat(), (start - timedelta(hours=1)).isoformat()
    assert customer.get(f"{path}/track", **{"from": late, "to": early}).status_code == 422


def test_a_cancelled_jobs_track_ends_at_its_cancel(
    config: StackConfig, people: dict[str, Caller], token: Callable[..., str]
) -> None:
    # The customer controls the cancel: afterwards the driver's movements are not theirs.
    customer, driver = people["customer"], people["driver"]
    path = f"/v1/jobs/{customer.post('/v1/jobs', BODY).json()['job_id']}"
    people["dispatcher"].post(f"{path}/assign", {"driver_id": driver.sub})
    jwt = token(Role.DRIVER, driver.sub)
    start = datetime.now(UTC)
    # A few milliseconds apart: all of them surely before the cancel below.
    fixes = [ping_at(start + timedelta(milliseconds=i), i / 100) for i in range(1, 4)]
    post(config, jwt, fixes)
    wait_for(lambda: True if len(stored(config, driver.sub)) == 3 else None)
    assert customer.post(f"{path}/cancel").status_code == 200
    after = datetime.now(UTC)  # past the cancel; the fixes below are stored before we ask
    post(
        config, jwt, [ping_at(after + timedelta(milliseconds=10 * i), 3 + i / 10) for i in range(3)]
    )
    wait_for(lambda: True if len(stored(config, driver.sub)) == 6 else None)
    for query in ({}, {"from": after.isoformat()}):
        body = customer.get(f"{path}/track", **query).json()
        assert body["properties"]["fixes"] == (3 if not query else 0), query
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        row = conn.execute(
            "SELECT cancelled_at FROM jobs WHERE job_id = %s", [path.rsplit("/", 1)[1]]
        ).fetchone()
    assert row is not None and start < row[0] < after


def jpeg(size: tuple[int, int] = (1200, 900), gps: bool = True) -> bytes:
    image = Image.new("RGB", size, (30, 140, 90))
    out = BytesIO()
    exif = Image.Exif()
    if gps:
        exif[ExifTags.Base.GPSInfo] = {1: "N", 2: (12.0, 58.0, 1.0)}
    image.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def picked_up_job(people: dict[str, Caller]) -> str:
    job = people["customer"].post("/v1/jobs", BODY).json()
    path = f"/v1/jobs/{job['job_id']}"
    people["dispatcher"].post(f"{path}/assign", {"driver_id": people["driver"].sub})
    assert people["driver"].post(f"{path}/pickup").status_code == 200
    return path


def send_photo(
    driver: Caller, path: str, photo: bytes, key: str | None = None, name: str = "photo"
) -> httpx.Response:
    headers = driver.headers | ({"Idempotency-Key": key} if key else {})
    return httpx.post(
        f"{driver.base}{path}/complete",
        files={name: ("proof.jpg", photo, "image/jpeg")},
        headers=headers,
    )


def task_done(caller: Caller, task_id: str) -> dict[str, Any] | None:
    task = caller.get(f"/v1/tasks/{task_id}").json()
    return task if task["status"] != "pending" else None


def test_complete_answers_202_and_the_worker_completes_the_job(
    config: StackConfig, people: dict[str, Caller]
) -> None:
    customer, driver = people["customer"], people["driver"]
    path = picked_up_job(people)
    assert customer.post(f"{path}/complete").status_code == 403  # the assigned driver only
    key = uuid.uuid4().hex
    r = send_photo(driver, path, jpeg(), key)
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    assert send_photo(driver, path, jpeg(), key).json() == r.json()  # a retry: same task
    task = wait_for(lambda: task_done(customer, task_id))
    assert task["status"] == "done" and task["error"] is None
    assert len(task["result"]["sha256"]) == 64
    assert customer.get(path).json()["status"] == "completed"
    job_id = path.rsplit("/", 1)[1]
    assert [e[1] for e in events(config, job_id)][-2:] == ["job.status", "job.completed"]
    # The stored proof carries no location.
    blobs = DirectoryBlobStore(config.state_dir / "blobs")
    clean = Image.open(BytesIO(blobs.get(task["result"]["photo"])))
    assert not clean.getexif()
    assert people["other_customer"].get(f"/v1/tasks/{task_id}").status_code == 404
    assert send_photo(driver, path, jpeg()).status_code == 409  # completed already


def test_the_proof_photo_is_served_cleaned_to_the_jobs_people_only(
    people: dict[str, Caller],
) -> None:
    customer, driver = people["customer"], people["driver"]
    path = picked_up_job(people)
    assert customer.get(f"{path}/proof").status_code == 404  # no proof yet
    upload = jpeg((1200, 900))
    task_id = send_photo(driver, path, upload).json()["task_id"]
    assert wait_for(lambda: task_done(customer, task_id))["status"] == "done"

    photo = customer.get(f"{path}/proof")
    assert photo.status_code == 200, photo.text
    assert photo.headers["content-type"] == "image/jpeg"
    assert photo.headers["cache-control"].startswith("private")
    assert photo.content != upload  # never the raw upload
    image = Image.open(BytesIO(photo.content))
    assert image.size == (1200, 900) and not image.getexif()  # no location leaves with it
    thumb = customer.get(f"{path}/proof", size="thumb")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(BytesIO(thumb.content)).size) < 1200
    assert thumb.headers["etag"] != photo.headers["etag"]
    # The client's copy is current: 304, no body.
    again = httpx.get(
        f"{customer.base}{path}/proof",
        headers=customer.headers | {"If-None-Match": photo.headers["etag"]},
    )
    assert again.status_code == 304 and again.content == b""
    # The job's customer, a dispatcher and the assigned driver; anyone else: 404.
    for name, status in (("dispatcher", 200), ("driver", 200), ("other_customer", 404),
                         ("other_driver", 404), ("ops", 404)):  # fmt: skip
        r = people[name].get(f"{path}/proof")
        assert r.status_code == status, name
        if status == 200:
            assert r.content == photo.content
    assert httpx.get(f"{customer.base}{path}/proof").status_code == 401
    bad = customer.get(f"{path}/proof", size="huge")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid"
    assert customer.get(f"/v1/jobs/{uuid.uuid4()}/proof").status_code == 404


def test_a_bad_proof_is_refused_and_a_broken_one_sends_the_job_back(
    people: dict[str, Caller],
) -> None:
    driver = people["driver"]
    path = picked_up_job(people)
    for photo, status in (
        (b"not an image at all", 422),
        (b"\xff" * (10 * 1024 * 1024 + 1), 413),
    ):
        r = send_photo(driver, path, photo)
        assert r.status_code == status, r.text
    assert send_photo(driver, path, jpeg(), name="picture").status_code == 422  # no `photo`
    r = httpx.post(f"{driver.base}{path}/complete", json={}, headers=driver.headers)
    assert r.status_code == 422
    bomb = BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")
    r = send_photo(driver, path, bomb.getvalue())
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_photo")
    assert driver.get(path).json()["status"] == "picked_up"  # nothing changed

    # A header that reads well over data that does not: the worker refuses it.
    r = send_photo(driver, path, jpeg()[:3000])
    assert r.status_code == 202
    task = wait_for(lambda: task_done(driver, r.json()["task_id"]))
    assert task["status"] == "failed" and "decoded" in task["error"]
    assert driver.get(path).json()["status"] == "picked_up"  # the driver sends another
    r = send_photo(driver, path, jpeg())
    assert wait_for(lambda: task_done(driver, r.json()["task_id"]))["status"] == "done"


def test_a_photo_that_makes_pillow_raise_is_refused_and_the_worker_goes_on(
    stack: Stack, config: StackConfig, people: dict[str, Caller]
) -> None:
    driver = people["driver"]
    path = picked_up_job(people)
    r = send_photo(driver, path, corrupt_gps_jpeg())
    assert r.status_code == 202, r.text  # its header reads well
    task = wait_for(lambda: task_done(driver, r.json()["task_id"]))
    assert task["status"] == "failed" and "TypeError" in task["error"]
    assert driver.get(path).json()["status"] == "picked_up"  # the driver sends another
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        row = conn.execute(
            "SELECT data FROM job_events WHERE job_id = %s ORDER BY seq DESC LIMIT 1",
            [path.rsplit("/", 1)[1]],
        ).fetchone()
    assert row is not None and row[0]["action"] == "refuse_proof"
    assert "TypeError" in row[0]["reason"]  # why, for the driver's app and the customer
    for name in stack.urls("photo-worker"):
        assert httpx.get(name + "/healthz").status_code == 200
    # The proofs after it are processed.
    r = send_photo(driver, path, jpeg())
    assert wait_for(lambda: task_done(driver, r.json()["task_id"]))["status"] == "done"
    assert driver.get(path).json()["status"] == "completed"


def unique_jpeg() -> bytes:
    return jpeg() + os.urandom(64)  # bytes past the image's end: a new blob each time


def test_an_upload_the_job_cannot_take_is_never_stored(
    config: StackConfig, people: dict[str, Caller]
) -> None:
    driver = people["driver"]
    blob_dir = config.state_dir / "blobs"

    def stored() -> int:
        return sum(1 for _ in blob_dir.glob("*/*"))

    path, _ = job_in(people, "assigned")
    before = stored()
    assert send_photo(driver, path, unique_jpeg()).status_code == 409  # not picked up yet
    assert driver.post(f"{path}/pickup").status_code == 200
    key = uuid.uuid4().hex
    photo = unique_jpeg()
    r = send_photo(driver, path, photo, key)
    assert r.status_code == 202
    assert wait_for(lambda: task_done(driver, r.json()["task_id"]))["status"] == "done"
    assert send_photo(driver, path, unique_jpeg()).status_code == 409  # completed
    assert send_photo(driver, path, photo, key).json() == r.json()  # a retry is replayed
    assert stored() == before + 3  # the accepted upload, its clean photo, its thumbnail


async def test_the_blob_sweep_removes_orphans_and_expired_uploads_only(
    config: StackConfig, people: dict[str, Caller]
) -> None:
    blobs = DirectoryBlobStore(config.state_dir / "blobs")
    path = picked_up_job(people)
    r = send_photo(people["driver"], path, unique_jpeg())
    task = wait_for(lambda: task_done(people["driver"], r.json()["task_id"]))
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        row = conn.execute(
            "SELECT input ->> 'blob' FROM tasks WHERE task_id = %s", [task["task_id"]]
        ).fetchone()
    assert row is not None
    finished = row[0]
    orphan = blobs.put(os.urandom(100))  # a request stored it, then failed
    young = blobs.put(os.urandom(100))  # a request stored it, and has not committed yet
    hour_ago = time.time() - 3600
    for key in (finished, orphan):
        os.utime(blobs.root / key[:2] / key, (hour_ago, hour_ago))
    dsn = pgbouncer.dsn(config, read_only=False)
    pool = await open_pool(dsn, min_size=1, max_size=1, name="blob-sweep-test")
    try:
        await sweep_blobs(pool, blobs, SweepLimits(1800, raw_keep_s=86400, batch=100_000))
        assert not (blobs.root / orphan[:2] / orphan).exists()
        assert (blobs.root / finished[:2] / finished).exists()  # its task finished just now
        assert (blobs.root / young[:2] / young).exists()
        await sweep_blobs(
            pool, blobs, SweepLimits(orphan_after_s=1800, raw_keep_s=0, batch=100_000)
        )
        assert not (blobs.root / finished[:2] / finished).exists()
        # The clean photo and the thumbnail stay.
        assert blobs.get(task["result"]["photo"]) and blobs.get(task["result"]["thumbnail"])
    finally:
        await pool.close()


def test_the_photo_worker_killed_mid_task_completes_each_job_once(
    stack: Stack, config: StackConfig, people: dict[str, Caller]
) -> None:
    stack.stop("photo-worker-1")
    tasks = []
    for _ in range(6):
        path = picked_up_job(people)
        r = send_photo(people["driver"], path, jpeg((3000, 2000)))
        tasks.append((path, r.json()["task_id"]))
    stack.start("photo-worker-1")
    wait_for(lambda: True if task_done(people["driver"], tasks[0][1]) else None)
    stack.kill("photo-worker-1")  # most likely in the middle of the next ones
    stack.start("photo-worker-1")
    for path, task_id in tasks:
        finished = wait_for(partial(task_done, people["driver"], task_id))
        assert finished["status"] == "done"
        job_id = path.rsplit("/", 1)[1]
        kinds = [e[1] for e in events(config, job_id)]
        assert kinds.count("job.completed") == 1 and kinds[-1] == "job.completed"


def test_the_stream_records_the_first_arrival_and_trusts_no_claimed_job(
    config: StackConfig, people: dict[str, Caller], token: Callable[..., str]
) -> None:
    driver = people["driver"]
    path = picked_up_job(people)
    job_id = path.rsplit("/", 1)[1]
    jwt = token(Role.DRIVER, driver.sub)
    dropoff = (BODY["dropoff"]["lat"], BODY["dropoff"]["lon"])
    now = datetime.now(UTC) - timedelta(minutes=5)

    def at(seconds: int, metres_south: float, job: str | None = job_id) -> dict[str, Any]:
        lat, lon = destination(*dropoff, 180.0, metres_south)
        ping = {"ping_id": str(uuid.uuid4()), "ts": (now + timedelta(seconds=seconds)).isoformat()}
        return ping | {"lat": lat, "lon": lon} | ({"job_id": job} if job else {})

    post(config, jwt, [at(0, 1000), at(30, 500)])  # approaching: no arrival yet
    wait_for(lambda: True if len(stored(config, driver.sub)) == 2 else None)
    assert "job.arrived" not in [e[1] for e in events(config, job_id)]
    post(config, jwt, [at(60, 60), at(70, 20)])  # within 100 m
    wait_for(lambda: True if "job.arrived" in [e[1] for e in events(config, job_id)] else None)
    post(config, jwt, [at(80, 5), at(90, 300), at(100, 10)])  # around it: no second event
    wait_for(lambda: True if len(stored(config, driver.sub)) == 7 else None)
    kinds = [e[1] for e in events(config, job_id)]
    assert kinds.count("job.arrived") == 1
    assert customer_sees(people, path)["status"] == "picked_up"  # arrival is not delivery
    # Its record is the event schema's, like every other writer's (jobs/events.py).
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        row = conn.execute(
            "SELECT payload::text FROM outbox WHERE key = %s AND payload->>'type' = 'job.arrived'",
            [job_id],
        ).fetchone()
    assert row is not None
    arrival = JobEvent.model_validate_json(row[0])
    assert arrival.status == JobStatus.PICKED_UP and arrival.data == {"driver_id": driver.sub}

    # A ping claiming someone else's job is stored without it.
    foreign = people["customer"].post("/v1/jobs", BODY).json()["job_id"]
    post(config, jwt, [at(110, 10, job=foreign)])
    wait_for(lambda: True if len(stored(config, driver.sub)) == 8 else None)
    with psycopg.connect(postgres.dsn(config, "primary")) as conn:
        claimed = conn.execute(
            "SELECT job_id::text FROM pings WHERE driver_id = %s ORDER BY ts", [driver.sub]
        ).fetchall()
    assert [r[0] for r in claimed] == [job_id] * 7 + [None]


def customer_sees(people: dict[str, Caller], path: str) -> dict[str, Any]:
    body: dict[str, Any] = people["customer"].get(path).json()
    return body


def test_the_relay_sweeps_old_sent_rows_expired_idempotency_keys_and_ended_links(
    config: StackConfig,
) -> None:
    dsn = postgres.dsn(config, "primary")
    tag = uuid.uuid4().hex
    with psycopg.connect(dsn) as conn:
        ids = [
            conn.execute(
                "INSERT INTO outbox (topic, key, payload, created_at, sent_at)"
                " VALUES ('sweep-test', %s, '{}', now() - %s::interval, now() - %s::interval)"
                " RETURNING id",
                [tag, age, age],
            ).fetchone()[0]  # type: ignore[index]
            for age in ("8 days", "6 days")
        ]
        for key, age in (("old", "25 hours"), ("new", "23 hours")):
            conn.execute(
                "INSERT INTO idempotency_keys (principal, key, request_hash, status, response,"
                " created_at) VALUES (%s, %s, '', 201, '', now() - %s::interval)",
                [f"customer:{tag}", key, age],
            )
        job_id = uuid.uuid4()
        conn.execute(
            "INSERT INTO jobs (job_id, created_by, status, pickup_lat, pickup_lon, dropoff_lat,"
            " dropoff_lon) VALUES (%s, 'sweep-test', 'cancelled', 0, 0, 0, 0)",
            [job_id],
        )
        for age in ("25 hours", "23 hours"):  # ended (expired or revoked) this long ago
            conn.execute(
                "INSERT INTO share_links (token_hash, job_id, created_by, expires_at)"
                " VALUES (%s, %s, 'sweep-test', now() - %s::interval)",
                [age.encode(), job_id, age],
            )

    async def sweep_once() -> int:
        pool = await open_pool(dsn, min_size=1, max_size=1, name="sweep-test")
        try:
            return await relay.sweep(pool, relay.RelayLimits())
        finally:
            await pool.close()

    # The api's own relays sweep too (at start, then every minute): whoever gets there.
    asyncio.run(sweep_once())
    with psycopg.connect(dsn) as conn:
        outbox_left = conn.execute("SELECT id FROM outbox WHERE key = %s", [tag]).fetchall()
        keys_left = conn.execute(
            "SELECT key FROM idempotency_keys WHERE principal = %s", [f"customer:{tag}"]
        ).fetchall()
    assert [r[0] for r in outbox_left] == ids[1:]  # sent 6 days ago: kept for 7
    assert [r[0] for r in keys_left] == ["new"]
    with psycopg.connect(dsn) as conn:
        links_left = conn.execute(
            "SELECT token_hash FROM share_links WHERE job_id = %s", [job_id]
        ).fetchall()
    assert [bytes(r[0]) for r in links_left] == [b"23 hours"]  # ended a day ago: deleted
