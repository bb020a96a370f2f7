"""Each principal's rate in the api: the bucket itself, and the 429 the route and the
cached views' fast path give alike from one shared bucket."""

import uuid
from pathlib import Path
from typing import cast

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiSettings
from api.errors import TooManyRequests
from api.principal_limit import PrincipalLimit
from runtime.auth import generate_keypair, issue_token
from runtime.clock import ManualClock
from runtime.postgres import Pool
from schemas.auth import Role
from tests.unit.test_api_http import UnavailablePool


def test_a_principal_gets_its_burst_then_its_rate_and_others_their_own() -> None:
    clock = ManualClock()
    limit = PrincipalLimit(rate_per_s=2.0, burst=4, clock=clock)
    for _ in range(4):
        limit.take("customer:a")
    with pytest.raises(TooManyRequests) as refused:
        limit.take("customer:a")
    assert refused.value.retry_after_s == 1  # half a second to the next token, rounded up
    limit.take("customer:b")  # another tenant: its own bucket, full
    clock.advance(0.5)
    limit.take("customer:a")  # one token back after 1/rate
    with pytest.raises(TooManyRequests):
        limit.take("customer:a")
    clock.advance(60)
    for _ in range(4):  # refilled to its burst, never past it
        limit.take("customer:a")
    with pytest.raises(TooManyRequests):
        limit.take("customer:a")


def test_refusals_cost_no_token_and_a_slow_rate_says_how_long_to_wait() -> None:
    clock = ManualClock()
    limit = PrincipalLimit(rate_per_s=0.1, burst=1, clock=clock)
    limit.take("k")
    for _ in range(50):  # a client hammering while refused does not push its turn back
        with pytest.raises(TooManyRequests) as refused:
            limit.take("k")
    assert refused.value.retry_after_s == 10
    clock.advance(10)
    limit.take("k")


def test_memory_is_bounded_by_forgetting_the_principal_idle_longest() -> None:
    clock = ManualClock()
    limit = PrincipalLimit(rate_per_s=1.0, burst=1, max_tracked=3, clock=clock)
    for key in ("a", "b", "c"):
        limit.take(key)
    limit.take("d")  # "a" is forgotten: it comes back with a full bucket
    limit.take("a")
    with pytest.raises(TooManyRequests):
        limit.take("d")  # remembered: still empty
    assert len(limit._buckets) == 3


def test_the_route_and_the_fast_path_refuse_alike_from_one_bucket(tmp_path: Path) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_keypair(private, public)

    async def open_pool() -> Pool:
        return cast(Pool, UnavailablePool())

    settings = ApiSettings(
        jwt_public_key_path=public,
        relay_enabled=False,
        replica_check_s=3600,
        principal_rate_per_s=0.01,  # nothing refills during the test
        principal_burst=3,
    )
    app = create_app(settings, open_read_pool=open_pool, open_write_pool=open_pool)

    def bearer(sub: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + issue_token(private, sub=sub, role=Role.CUSTOMER)}

    fast = f"/v1/jobs/{uuid.uuid4()}"  # answered by the fast path (api/reads/fast.py)
    routed = "/v1/jobs"  # answered by the route
    with TestClient(app) as client:
        a, b = bearer("cus-a"), bearer("cus-b")
        # Three tokens, taken by either entrance; the database is down, hence the 503s.
        assert [client.get(p, headers=a).status_code for p in (fast, routed, fast)] == [503] * 3
        refusals = [client.get(p, headers=a) for p in (fast, routed)]
        assert [r.status_code for r in refusals] == [429, 429]
        for r in refusals:
            assert r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["Retry-After"]) == 100  # 1 token / 0.01 per s
        assert refusals[0].json() == refusals[1].json()
        assert client.get(fast, headers=b).status_code == 503  # another tenant goes on
        assert client.get(routed, headers=b).status_code == 503
        # No token, a bad one: 401 before any bucket is touched.
        assert client.get(routed).status_code == 401
        # The operator's staff are bounded at the edge only.
        ops = {"Authorization": "Bearer " + issue_token(private, sub="ops-1", role=Role.OPS)}
        assert {client.get(fast, headers=ops).status_code for _ in range(10)} == {503}
