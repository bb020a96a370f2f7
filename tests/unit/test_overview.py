"""`GET /v1/ops/overview` over a Prometheus and an Alertmanager that answer what the test
says: NaN (no traffic) becomes null, each service's 5xx ratio is its own, the alerts and
silences are Alertmanager's (Prometheus's firing alerts while it is away), and a Prometheus
that is away or refuses a query is a 503 with Retry-After."""

from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import deps, ops_routes
from api.overview import AlertmanagerClient, OverviewMonitor, PrometheusClient, overview
from runtime import doctor
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
    if query == doctor.QUERIES["machine_cpu_busy"]:
        return httpx.Response(200, json=vector(({}, "0.95")))  # the doctor's one finding
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


def alertmanager(request: httpx.Request) -> httpx.Response:
    """An Alertmanager holding three alerts (one silenced, one inhibited) and a silence
    active, one pending and one expired."""
    if request.url.path == "/api/v2/alerts":
        assert request.url.params["silenced"] == request.url.params["inhibited"] == "true"
        lag = {"alertname": "ConsumerLagCritical", "severity": "critical", "group": "g"}
        alerts = [
            {"labels": lag, "startsAt": "2026-12-06T03:00:00Z",
             "annotations": {"summary": "g is 3m behind",
                             "runbook_url": "docs/runbooks/ConsumerLagCritical.md"},
             "status": {"state": "active", "silencedBy": [], "inhibitedBy": []},
             "receivers": [{"name": "critical"}]},
            {"labels": lag | {"alertname": "ConsumerLagHigh", "severity": "warning"},
             "annotations": {}, "receivers": [{"name": "warning"}],
             "status": {"state": "suppressed", "silencedBy": [], "inhibitedBy": ["fp1"]}},
            {"labels": {"alertname": "TargetDown", "severity": "critical", "process": "api-2"},
             "annotations": {}, "receivers": [{"name": "critical"}],
             "status": {"state": "suppressed", "silencedBy": ["s-1"], "inhibitedBy": []}},
        ]  # fmt: skip
        return httpx.Response(200, json=alerts)
    if request.url.path == "/api/v2/silences":
        matchers = [
            {"name": "alertname", "value": "TargetDown", "isRegex": False, "isEqual": True},
            {"name": "process", "value": "api-.*", "isRegex": True, "isEqual": True},
            {"name": "job", "value": "edge", "isRegex": False, "isEqual": False},
        ]
        silences = [
            {"id": f"s-{n}", "status": {"state": state}, "matchers": matchers,
             "startsAt": "2026-12-06T03:00:00Z", "endsAt": "2026-12-06T05:00:00Z",
             "createdBy": "ops-1", "comment": "rolling restart"}
            for n, state in ((1, "active"), (2, "pending"), (3, "expired"))
        ]  # fmt: skip
        return httpx.Response(200, json=silences)
    return httpx.Response(404)


def clients(
    answer_prometheus: Any = prometheus, answer_alertmanager: Any = alertmanager
) -> tuple[PrometheusClient, AlertmanagerClient]:
    return (
        PrometheusClient("http://prometheus", transport=httpx.MockTransport(answer_prometheus)),
        AlertmanagerClient("http://am", transport=httpx.MockTransport(answer_alertmanager)),
    )


async def test_the_overview_shows_what_alertmanager_holds() -> None:
    body = await overview(*clients(), now=1000.0)
    assert body["alertmanager"] == {"up": True, "alerts_from": "alertmanager"}
    states = {a["name"]: a["state"] for a in body["alerts"]}
    assert states == {
        "ConsumerLagCritical": "firing",
        "ConsumerLagHigh": "inhibited",
        "TargetDown": "silenced",
    }
    firing = body["alerts"][0]
    assert firing["runbook_url"] == "docs/runbooks/ConsumerLagCritical.md"
    assert firing["receivers"] == ["critical"] and firing["labels"] == {"group": "g"}
    assert body["alerts"][2]["silenced_by"] == ["s-1"]
    assert [s["id"] for s in body["silences"]] == ["s-1", "s-2"]  # not the expired one
    assert body["silences"][0]["matchers"] == [
        "alertname=TargetDown",
        "process=~api-.*",
        "job!=edge",
    ]
    assert body["silences"][0]["comment"] == "rolling restart"


async def test_with_alertmanager_away_prometheus_s_firing_alerts_stand_in() -> None:
    def away(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def not_alertmanager(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "success"})

    for answer in (away, not_alertmanager):
        body = await overview(*clients(answer_alertmanager=answer), now=1000.0)
        assert body["alertmanager"]["up"] is False, answer.__name__
        assert body["alertmanager"]["alerts_from"] == "prometheus"
        assert [a["name"] for a in body["alerts"]] == ["ConsumerLagHigh"]  # firing only
        assert body["alerts"][0]["labels"] == {"group": "g"}
        assert body["silences"] == []


async def test_the_overview_takes_prometheus_answers_apart() -> None:
    body = await overview(*clients(), now=1000.0)
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
    assert [f["pattern"] for f in body["findings"]] == ["machine-cpu-saturated"]
    assert body["series"]["pings_stored_per_s"] == [(0.0, 1.0), (15.0, None)]


def app_over(transport: httpx.MockTransport) -> TestClient:
    monitor = OverviewMonitor(
        PrometheusClient("http://p", transport=transport),
        AlertmanagerClient("http://am", transport=httpx.MockTransport(alertmanager)),
        0.0,
    )

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
