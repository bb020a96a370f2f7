"""`GET /v1/ops/overview` (role ops): the pipeline at a glance, from the stack's Prometheus,
which scrapes every process (docs/ops.md). Throughput, freshness (fix → stored,
receipt → stored, fix → pushed), each service's request and 5xx rates, the view cache's hit
ratio, notifier connections, the replica's replay lag, consumer lag, the last minutes as
series for the ops page's charts, `telemetry doctor`'s findings (runtime/doctor.py); and
from the stack's Alertmanager, the alerts it holds
(firing, silenced or inhibited) and the silences set. With Alertmanager away, the alerts
firing in Prometheus stand in, and the answer says so.

The queries are fixed here, one place; the answer is computed at most once per
`min_interval_s` however many ask (an ops page polls)."""

import asyncio
import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel

from runtime import doctor
from runtime.clock import Clock, SystemClock

# Rates over a minute: recent enough to see a change, smooth enough to read.
RATE = "1m"
# Quantiles over five minutes: a p99 needs enough observations.
QUANTILE = "5m"

INSTANT: dict[str, str] = {
    "pings_accepted_per_s": f"sum(rate(ingest_pings_accepted_total[{RATE}]))",
    "pings_stored_per_s": f"sum(rate(streams_pings_written_total[{RATE}]))",
    "positions_pushed_per_s": (
        f'sum(rate(notifier_messages_sent_total{{type="position"}}[{RATE}]))'
    ),
    "dead_lettered_per_s": f"sum(rate(streams_poison_total[{RATE}]))",
    "cache_hit_ratio": (
        f'sum(rate(api_cache_requests_total{{result="hit"}}[{QUANTILE}]))'
        f" / sum(rate(api_cache_requests_total[{QUANTILE}]))"
    ),
    "cache_failures_per_s": f"sum(rate(api_cache_unavailable_total[{RATE}]))",
    "notifier_connections": "sum(notifier_connections)",
    "replica_lag_s": "max(telemetry_replica_replay_lag_seconds)",
}


def quantile(q: float, histogram: str, selector: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket{selector}[{QUANTILE}])))"


FRESHNESS: dict[str, tuple[str, str]] = {
    "fix_to_stored": ("streams_fix_to_stored_seconds", ""),
    "received_to_stored": ("streams_received_to_stored_seconds", ""),
    "fix_to_pushed": ("notifier_commit_to_send_seconds", '{type="position"}'),
}

BY_LABEL: dict[str, tuple[str, str]] = {
    # name: (label, query)
    "requests_per_s": ("job", f"sum by (job) (rate(http_requests_total[{RATE}]))"),
    "errors_per_s": (
        "job",
        f'sum by (job) (rate(http_requests_total{{status=~"5.."}}[{RATE}]))',
    ),
    "processes_up": ("job", "sum by (job) (up)"),
    "processes": ("job", "count by (job) (up)"),
    "consumer_lag_s": ("group", "max by (group) (telemetry_consumer_lag_seconds)"),
    "consumer_lag_messages": ("group", "sum by (group) (telemetry_consumer_lag_messages)"),
}

# The charts: the last `SERIES_WINDOW_S` at `SERIES_STEP_S`.
SERIES_WINDOW_S = 15 * 60
SERIES_STEP_S = 15
SERIES: dict[str, str] = {
    "pings_accepted_per_s": INSTANT["pings_accepted_per_s"],
    "pings_stored_per_s": INSTANT["pings_stored_per_s"],
    "fix_to_stored_p99_s": quantile(0.99, "streams_fix_to_stored_seconds"),
    "fix_to_pushed_p99_s": quantile(0.99, "notifier_commit_to_send_seconds", '{type="position"}'),
    "consumer_lag_s": "max(telemetry_consumer_lag_seconds)",
    "error_ratio": (
        f'sum(rate(http_requests_total{{status=~"5.."}}[{RATE}]))'
        f" / sum(rate(http_requests_total[{RATE}]))"
    ),
}


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or refused a query."""


class AlertmanagerUnavailable(Exception):
    """Alertmanager did not answer, or answered something else than its API's lists."""


def number(text: str) -> float | None:
    """A sample's value; None for NaN (no traffic: 0/0) and the infinities."""
    value = float(text)
    return value if math.isfinite(value) else None


@dataclass
class PrometheusClient:
    """Where the overview asks Prometheus (its URL and timeout); `transport` lets a test answer for
    it."""

    url: str
    timeout_s: float = 3.0
    transport: httpx.AsyncBaseTransport | None = None  # tests answer for Prometheus

    def session(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport)

    async def _get(self, client: httpx.AsyncClient, path: str, **params: Any) -> Any:
        try:
            response = await client.get(self.url + path, params=params, timeout=self.timeout_s)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise PrometheusUnavailable(f"{path}: {exc!r}") from exc
        if body.get("status") != "success":
            raise PrometheusUnavailable(f"{path}: {body.get('error', response.text[:200])}")
        return body["data"]

    async def query(self, client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
        data = await self._get(client, "/api/v1/query", query=expr)
        return list(data["result"])

    async def query_range(
        self, client: httpx.AsyncClient, expr: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        data = await self._get(
            client, "/api/v1/query_range", query=expr, start=start, end=end, step=step
        )
        return list(data["result"])

    async def alerts(self, client: httpx.AsyncClient) -> list[dict[str, Any]]:
        data = await self._get(client, "/api/v1/alerts")
        return list(data["alerts"])


@dataclass
class AlertmanagerClient:
    """Where the overview asks Alertmanager (API v2); `transport` lets a test answer for it."""

    url: str
    timeout_s: float = 3.0
    transport: httpx.AsyncBaseTransport | None = None

    async def _list(self, client: httpx.AsyncClient, path: str, **params: str) -> list[Any]:
        try:
            response = await client.get(self.url + path, params=params, timeout=self.timeout_s)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise AlertmanagerUnavailable(f"{path}: {exc!r}") from exc
        if response.status_code != 200 or not isinstance(body, list):
            raise AlertmanagerUnavailable(f"{path}: {response.status_code} {response.text[:200]}")
        return body

    async def held(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The active alerts (silenced and inhibited ones too) and every silence."""
        async with httpx.AsyncClient(transport=self.transport) as client:
            alerts, silences = await asyncio.gather(
                self._list(
                    client, "/api/v2/alerts", active="true", silenced="true", inhibited="true"
                ),
                self._list(client, "/api/v2/silences"),
            )
        return alerts, silences


def scalar(result: list[dict[str, Any]]) -> float | None:
    return number(result[0]["value"][1]) if result else None


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float | None]:
    return {r["metric"].get(label, ""): number(r["value"][1]) for r in result}


def points(result: list[dict[str, Any]]) -> list[tuple[float, float | None]]:
    return [(float(t), number(v)) for t, v in result[0]["values"]] if result else []


def _alert(labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "name": labels.get("alertname"),
        "severity": labels.get("severity"),
        "summary": annotations.get("summary", ""),
        "runbook_url": annotations.get("runbook_url"),
        "labels": {k: v for k, v in labels.items() if k not in ("alertname", "severity")},
    }


def alert_view(alert: dict[str, Any]) -> dict[str, Any]:
    """One of Prometheus's alerts (its /api/v1/alerts)."""
    view = _alert(alert.get("labels", {}), alert.get("annotations", {}))
    return view | {"state": alert.get("state"), "since": alert.get("activeAt")}


def held_alert_view(alert: dict[str, Any]) -> dict[str, Any]:
    """One of Alertmanager's alerts: firing, or held back by a silence or a firing alert
    that inhibits it."""
    status = alert.get("status", {})
    state = "firing"
    if status.get("silencedBy"):
        state = "silenced"
    elif status.get("inhibitedBy"):
        state = "inhibited"
    view = _alert(alert.get("labels", {}), alert.get("annotations", {}))
    return view | {
        "state": state,
        "since": alert.get("startsAt"),
        "silenced_by": list(status.get("silencedBy", [])),
        "receivers": [r.get("name") for r in alert.get("receivers", [])],
    }


# A silence's matcher as PromQL writes it: (isEqual, isRegex) -> the operator.
MATCH = {(True, False): "=", (False, False): "!=", (True, True): "=~", (False, True): "!~"}


def silence_view(silence: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": silence.get("id"),
        "state": silence.get("status", {}).get("state"),
        "matchers": [
            f"{m.get('name')}{MATCH[bool(m.get('isEqual', True)), bool(m.get('isRegex'))]}"
            f"{m.get('value')}"
            for m in silence.get("matchers", [])
        ],
        "starts_at": silence.get("startsAt"),
        "ends_at": silence.get("endsAt"),
        "created_by": silence.get("createdBy"),
        "comment": silence.get("comment"),
    }


def services_view(values: dict[str, dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Per Prometheus job (a service): request and 5xx rates, the ratio, processes up."""
    jobs = sorted(set(values["processes"]) | set(values["requests_per_s"]))
    view = {}
    for job in jobs:
        requests = values["requests_per_s"].get(job)
        errors = values["errors_per_s"].get(job) or 0.0
        view[job] = {
            "requests_per_s": requests,
            "errors_per_s": errors,
            "error_ratio": errors / requests if requests else None,
            "processes_up": int(values["processes_up"].get(job) or 0),
            "processes": int(values["processes"].get(job) or 0),
        }
    return view


class Overview(BaseModel):
    """The answer's shape, for the OpenAPI document."""

    sampled_at: float
    throughput: dict[str, float | None]
    freshness_s: dict[str, dict[str, float | None]]
    services: dict[str, dict[str, Any]]
    cache: dict[str, float | None]
    notifier: dict[str, float | None]
    replica: dict[str, float | None]
    consumer_lag: dict[str, dict[str, float | None]]
    findings: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    silences: list[dict[str, Any]]
    alertmanager: dict[str, Any]
    series: dict[str, Any]


async def _doctor_answers(prometheus: PrometheusClient) -> dict[str, doctor.Series]:
    try:
        return await doctor.ask(prometheus.url, prometheus.transport, prometheus.timeout_s)
    except doctor.PrometheusUnanswered as exc:
        raise PrometheusUnavailable(str(exc)) from exc


async def _alerts(
    alertmanager: AlertmanagerClient, from_prometheus: list[dict[str, Any]]
) -> dict[str, Any]:
    """The alerts and silences Alertmanager holds; with it away, Prometheus's firing alerts
    (no silence can be known then)."""
    try:
        alerts, silences = await alertmanager.held()
    except AlertmanagerUnavailable as exc:
        return {
            "alerts": [alert_view(a) for a in from_prometheus if a.get("state") == "firing"],
            "silences": [],
            "alertmanager": {"up": False, "error": str(exc), "alerts_from": "prometheus"},
        }
    return {
        "alerts": [held_alert_view(a) for a in alerts],
        "silences": [
            silence_view(s)
            for s in silences
            if s.get("status", {}).get("state") in ("active", "pending")
        ],
        "alertmanager": {"up": True, "alerts_from": "alertmanager"},
    }


async def overview(
    prometheus: PrometheusClient, alertmanager: AlertmanagerClient, now: float
) -> dict[str, Any]:
    async with prometheus.session() as client:
        asked: dict[tuple[str, str], Awaitable[Any]] = {}
        for name, expr in INSTANT.items():
            asked["instant", name] = prometheus.query(client, expr)
        for name, (histogram, selector) in FRESHNESS.items():
            asked["p50", name] = prometheus.query(client, quantile(0.5, histogram, selector))
            asked["p99", name] = prometheus.query(client, quantile(0.99, histogram, selector))
        for name, (_, expr) in BY_LABEL.items():
            asked["by", name] = prometheus.query(client, expr)
        for name, expr in SERIES.items():
            start = now - SERIES_WINDOW_S
            asked["series", name] = prometheus.query_range(client, expr, start, now, SERIES_STEP_S)
        asked["alerts", ""] = prometheus.alerts(client)
        asked["doctor", ""] = _doctor_answers(prometheus)
        got = dict(zip(asked, await asyncio.gather(*asked.values()), strict=True))
    instant = {name: scalar(got["instant", name]) for name in INSTANT}
    labelled = {name: by_label(got["by", name], label) for name, (label, _) in BY_LABEL.items()}
    return {
        "sampled_at": now,
        "throughput": {
            name: instant[name]
            for name in (
                "pings_accepted_per_s",
                "pings_stored_per_s",
                "positions_pushed_per_s",
                "dead_lettered_per_s",
            )
        },
        "freshness_s": {
            name: {"p50": scalar(got["p50", name]), "p99": scalar(got["p99", name])}
            for name in FRESHNESS
        },
        "services": services_view(labelled),
        "cache": {
            "hit_ratio": instant["cache_hit_ratio"],
            "failures_per_s": instant["cache_failures_per_s"],
        },
        "notifier": {"connections": instant["notifier_connections"]},
        "replica": {"lag_s": instant["replica_lag_s"]},
        "consumer_lag": {
            group: {
                "seconds": seconds,
                "messages": labelled["consumer_lag_messages"].get(group),
            }
            for group, seconds in labelled["consumer_lag_s"].items()
        },
        "findings": [f.as_dict() for f in doctor.diagnose(got["doctor", ""])],
        "series": {"window_s": SERIES_WINDOW_S, "step_s": SERIES_STEP_S}
        | {name: points(got["series", name]) for name in SERIES},
    } | await _alerts(alertmanager, got["alerts", ""])


class OverviewMonitor:
    """One overview at a time, reused for `min_interval_s`: a room of ops pages polling
    costs Prometheus one set of queries per interval."""

    def __init__(
        self,
        prometheus: PrometheusClient,
        alertmanager: AlertmanagerClient,
        min_interval_s: float,
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._prometheus = prometheus
        self._alertmanager = alertmanager
        self._min_interval_s = min_interval_s
        self._lock = asyncio.Lock()
        self._latest: dict[str, Any] | None = None
        self._taken_at = 0.0

    async def report(self) -> dict[str, Any]:
        async with self._lock:
            due = self._clock.monotonic() - self._taken_at >= self._min_interval_s
            if self._latest is None or due:
                self._latest = await overview(
                    self._prometheus, self._alertmanager, self._clock.wall()
                )
                self._taken_at = self._clock.monotonic()
            return self._latest
