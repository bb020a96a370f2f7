"""`GET /v1/ops/overview` over a Prometheus that answers what the test says: NaN (no
traffic) becomes null, each service's 5xx ratio is its own, only firing alerts are listed,
and a Prometheus that is away or refuses a query is a 503 with Retry-After."""

from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import deps, ops_routes
from api.overview import OverviewMonitor, PrometheusClient, overview
from runtime.http import install_error_handlers
from schemas.auth import Principal, Role


def vector(*samples: tuple[dict[str, str], str]) -> dict[str, Any]:
    result = [{"metric": labels, "value": [1.0, value]} for labels, value in samples]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def prometheus(request: httpx.Request) -> httpx.Response:
    """A Prometheus with a little traffic: ingest answers 5 % 5xx, the api none."""
    if request.url.path == "/api/v1/alerts":
        alerts = [
            {"labels": {"alertname": "ConsumerLagHigh", "severity": "warning", "group": "g"},
             "annotations": {"summary": "g is 40s behind"}, "state": "firing"},
            {"labels": {"alertname": "TargetDown", "severity": "critical"}, "state": "pending"},
        ]  # fmt: skip
        return httpx.Response(200, json={"status": "success", "data": {"alerts": alerts}})
    query = request.url.params["query"]
    if request.url.path == "/api/v1/query_range":
        values = [[0.0, "1"], [15.0, "NaN"]]
        data = {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}
        return httpx.Response(200, json={"status": "success", "data": data})
    if "ingest_pings_accepted_total" in query:
        return httpx.Response(200, json=vector(({}, "48.5")))
    if "api_cache_requests_total" in query:
        return httpx.Response(200, json=vector(({}, "NaN")))  # no views read: 0/0
    if query.startswith("sum by (job) (rate(http_requests_total{"):
        return httpx.Response(200, json=vector(({"job": "ingest"}, "1"), ({"job": "api"}, "0")))
    if query.startswith("sum by (job) (rate(http_requests_total["):
        return httpx.Response(200, json=vector(({"job": "ingest"}, "20"), ({"job": "api"}, "4")))
    if query in ("sum by (job) (up)", "count by (job) (up)"):
        return httpx.Response(200, json=vector(({"job": "ingest"}, "2"), ({"job": "api"}, "1")))
    return httpx.Response(200, json=vector())


async def test_the_overview_takes_prometheus_answers_apart() -> None:
    client = PrometheusClient("http://prometheus", transport=httpx.MockTransport(prometheus))
    body = await overview(client, now=1000.0)
    assert body["throughput"]["pings_accepted_per_s"] == 48.5
    assert body["throughput"]["pings_stored_per_s"] is None  # no series at all
    assert body["cache"]["hit_ratio"] is None  # NaN: nothing to divide
    assert body["services"]["ingest"] == {
        "requests_per_s": 20.0,
        "errors_per_s": 1.0,
        "error_ratio": 0.05,
        "processes_up": 2,
        "processes": 2,
    }
    assert body["services"]["api"]["error_ratio"] == 0.0
    assert [a["name"] for a in body["alerts"]] == ["ConsumerLagHigh"]  # firing only
    assert body["alerts"][0]["labels"] == {"group": "g"}
    assert body["series"]["pings_stored_per_s"] == [(0.0, 1.0), (15.0, None)]


def app_over(transport: httpx.MockTransport) -> TestClient:
    monitor = OverviewMonitor(PrometheusClient("http://p", transport=transport), 0.0)

    async def principal() -> Principal:
        return Principal(sub="ops-1", role=Role.OPS)

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(ops_routes.router)
    app.dependency_overrides[deps.caller] = principal
    app.dependency_overrides[deps.overview_monitor] = lambda: monitor
    return TestClient(app)


def test_prometheus_away_or_refusing_is_a_503_with_retry_after() -> None:
    def away(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"status": "error", "error": "parse error"})

    def not_prometheus(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>a proxy's page</html>")

    for answer in (away, refusing, not_prometheus):
        r = app_over(httpx.MockTransport(answer)).get("/v1/ops/overview")
        assert r.status_code == 503, (answer.__name__, r.text)
        assert r.headers["Retry-After"] == "2"
        assert r.json()["error"]["code"] == "unavailable"
    assert app_over(httpx.MockTransport(prometheus)).get("/v1/ops/overview").status_code == 200
