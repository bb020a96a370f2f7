"""Ops on the real stack (docs/ops.md): Prometheus scrapes every process with its
request and process metrics and has the alert rules loaded; `GET /v1/ops/overview` sums the
pipeline up from it; the ops page, opened in headless Chromium through the URL `telemetry
ops-url` prints, shows live lag, throughput and charts (a screenshot is kept)."""

import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Page, sync_playwright

from cli.main import main
from infra import exporters, postgres, prometheus, services
from infra.config import REPO_ROOT
from infra.stack import Stack
from runtime.auth import issue_token
from schemas.auth import Role
from schemas.topics import STREAMS_GROUP
from tests.support.driving import ping_at, post, wait_stored
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"


def query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(stack.config.prometheus_url + "/api/v1/query", params={"query": expr})
    assert r.status_code == 200, r.text
    return list(r.json()["data"]["result"])


def bearer(stack: Stack, role: Role, sub: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {issue_token(stack.config.jwt_private_key, sub=sub, role=role)}"
    }


def pings_stored(stack: Stack, count: int) -> str:
    driver = f"drv-ops-{uuid.uuid4().hex[:6]}"
    token = issue_token(stack.config.jwt_private_key, sub=driver, role=Role.DRIVER)
    for i in range(count):
        post(stack.config, token, [ping_at(datetime.now(UTC), i * 5.0)])
    wait_stored(stack.config, driver, count)
    return driver


def test_prometheus_scrapes_every_process_with_request_and_process_metrics(stack: Stack) -> None:
    pings_stored(stack, 3)
    processes = {spec.name for spec in services.specs(stack.config)}

    # Every target: our processes, HAProxy, the ops exporter, Alertmanager, the node
    # exporter, and Debian's exporters of Redis, nginx and each PostgreSQL server.
    targets = {name for job in prometheus.scrape_jobs(stack.config).values() for name, _ in job}
    assert {"redis-exporter", "nginx-exporter", "node-exporter", "alertmanager"} <= targets

    def all_up() -> set[str] | None:
        up = {r["metric"]["process"] for r in query(stack, "up == 1")}
        return up if targets <= up else None

    wait_for(all_up, timeout_s=60)
    # Each exporter reaches what it exports, and the ops exporter PgBouncer's pools.
    reached = {
        "pg_up == 1": len(exporters.postgres_servers(stack.config)),
        # Our queries of each server: its CPU and its lock waits.
        "pg_server_cpu_seconds_total > 0": len(exporters.postgres_servers(stack.config)),
        "pg_lock_waits_waiting >= 0": len(exporters.postgres_servers(stack.config)),
        # One primary, and its standby streaming from it.
        "pg_server_is_primary == 1": 1,
        "pg_standbys_streaming and on (process) (pg_server_is_primary == 1) >= 1": 1,
        "redis_up == 1": 1,
        "nginx_up == 1": 1,
        'node_filesystem_size_bytes{job="node"} > 0': 1,
        "telemetry_pgbouncer_max_client_connections > 0": 1,
        "telemetry_outbox_oldest_unsent_seconds >= 0": 1,
    }
    for expr, count in reached.items():

        def found(expr: str = expr, count: int = count) -> bool | None:
            return len(query(stack, expr)) >= count or None

        wait_for(found, timeout_s=60)
    # Every service process counts its requests by route and status (Prometheus's own
    # scrapes of /metrics at least), and exports its process metrics.
    counted = {r["metric"]["process"] for r in query(stack, "http_requests_total")}
    assert processes <= counted, processes - counted
    memory = {r["metric"]["process"] for r in query(stack, "process_resident_memory_bytes")}
    assert processes <= memory, processes - memory

    # By route template; a scrape is counted once answered, so seen from the next one on.
    def ingest_routes() -> set[str] | None:
        routes = {r["metric"]["route"] for r in query(stack, 'http_requests_total{job="ingest"}')}
        return routes if {"/v1/pings", "/metrics"} <= routes else None

    wait_for(ingest_routes, timeout_s=30)
    # The freshness histograms, fed by the pings above.
    stored = wait_for(
        lambda: query(stack, "sum(streams_fix_to_stored_seconds_count) > 0") or None, 30
    )
    assert float(stored[0]["value"][1]) >= 3
    # The alert rules are loaded and evaluated.
    r = httpx.get(stack.config.prometheus_url + "/api/v1/rules")
    rules = {rule["name"] for group in r.json()["data"]["groups"] for rule in group["rules"]}
    assert {"ConsumerLagHigh", "PartitionStalled", "TargetDown", "HighErrorRatio"} <= rules


def test_the_overview_sums_the_pipeline_up_for_ops_only(stack: Stack) -> None:
    url = f"{stack.public_url()}/v1/ops/overview"
    pings_stored(stack, 5)

    def stored_rate() -> dict[str, Any] | None:
        r = httpx.get(url, headers=bearer(stack, Role.OPS, "ops-1"), timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        stored = (body["throughput"]["pings_stored_per_s"] or 0) > 0
        # A young stack's Prometheus has one point of a rate yet.
        return body if stored and len(body["series"]["pings_stored_per_s"]) > 1 else None

    body = wait_for(stored_rate, timeout_s=60)
    assert body["freshness_s"]["fix_to_stored"]["p99"] is not None
    assert body["services"]["ingest"]["processes_up"] == 2
    assert body["services"]["api"]["requests_per_s"] > 0
    assert "telemetry-streams" in body["consumer_lag"]
    assert body["replica"]["lag_s"] is not None
    assert isinstance(body["alerts"], list)

    r = httpx.get(url, headers=bearer(stack, Role.DISPATCHER, "disp-1"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert httpx.get(url).status_code == 401


def ops_url(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    monkeypatch.setenv("TELEMETRY_STATE_DIR", str(stack.config.state_dir))
    capsys.readouterr()  # the session stack's reports
    assert main(["ops-url", "--ttl", "300"]) == 0
    return capsys.readouterr().out.strip()


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-loaded=true]", timeout=30_000)


def test_the_ops_page_shows_live_lag_throughput_and_charts_in_chromium(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pings_stored(stack, 5)
    url = ops_url(stack, monkeypatch, capsys)
    assert url.startswith(f"{stack.public_url()}/ops#token=")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            open_page(page, url)
            assert page.locator("#state").get_attribute("data-state") == "ok", page.locator(
                "#state"
            ).text_content()
            # The token left the address bar.
            assert "token" not in page.url
            # Lag per partition, both groups, each with a status.
            rows = page.locator("#lag-table tbody tr")
            assert rows.count() >= 24
            groups = set(page.locator("#lag-table tbody td:first-child").all_text_contents())
            assert groups == {"telemetry-streams", "telemetry-photo-worker"}
            statuses = set(page.locator("#lag-table td.status").all_text_contents())
            assert statuses <= {"OK", "WARN", "STALL", "STOP", "REWIND"}

            # Throughput and freshness from Prometheus, once the pings above are in a rate.
            # Polled from here: a predicate given to the page as a string is evaluated with
            # eval, which the page's Content-Security-Policy forbids (as it should).
            def stored_rate() -> float | None:
                text = page.locator("#pings-stored").text_content() or ""
                try:
                    return value if (value := float(text.split()[0])) > 0 else None
                except (ValueError, IndexError):
                    return None

            wait_for(stored_rate, timeout_s=60)
            fix_to_stored = page.locator("#fix-to-stored").text_content() or ""
            assert " ms" in fix_to_stored or " s" in fix_to_stored, fix_to_stored
            services_shown = page.locator("#services-table tbody td:first-child")
            assert {"api", "ingest", "streams", "notifier"} <= set(
                services_shown.all_text_contents()
            )
            # Four charts drawn by uPlot (a canvas each), served by us.
            assert page.locator(".chart canvas").count() == 4
            assert not errors, errors
            page.screenshot(path=str(ARTIFACTS / "ops-page.png"), full_page=True)

            # Without a token, the page says how to open it; with a customer's, it says no.
            bare = browser.new_page()
            bare.goto(f"{stack.public_url()}/ops")
            bare.wait_for_selector("#state[data-state=error]", timeout=10_000)
            assert "telemetry ops-url" in (bare.locator("#state").text_content() or "")
            customer = issue_token(stack.config.jwt_private_key, sub="c-1", role=Role.CUSTOMER)
            denied = browser.new_page()
            open_page(denied, f"{stack.public_url()}/ops#token={customer}")
            assert denied.locator("#state").get_attribute("data-state") == "error"
            assert "403" in (denied.locator("#state").text_content() or "")
        finally:
            browser.close()
    assert Path(ARTIFACTS / "ops-page.png").stat().st_size > 10_000


def test_doctor_names_a_stopped_stream_from_the_live_metrics(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEMETRY_STATE_DIR", str(stack.config.state_dir))
    driver = issue_token(
        stack.config.jwt_private_key, sub=f"drv-{uuid.uuid4().hex[:6]}", role=Role.DRIVER
    )
    stack.stop("streams-1")
    try:
        post(stack.config, driver, [ping_at(datetime.now(UTC), 10.0 * i) for i in range(5)])

        def found() -> tuple[int, dict[str, Any]] | None:
            capsys.readouterr()
            code = main(["doctor", "--json"])
            body: dict[str, Any] = json.loads(capsys.readouterr().out)
            named = [f["pattern"] for f in body["findings"]]
            return (code, body) if "stream-stopped" in named else None

        # The ops exporter looks every 5 s and Prometheus scrapes it every 5 s.
        code, body = wait_for(found, timeout_s=90, interval_s=2)
        assert code == 2  # critical
        [stopped] = [f for f in body["findings"] if f["pattern"] == "stream-stopped"]
        assert stopped["evidence"]["group"] == STREAMS_GROUP
        assert stopped["evidence"]["records_waiting"] > 0
        assert stopped["evidence"]["worst_lag_s"] >= 0
        assert "telemetry up" in stopped["advice"]
    finally:
        stack.start("streams-1")


def test_doctor_names_a_writer_blocked_behind_a_lock_on_the_primary(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEMETRY_STATE_DIR", str(stack.config.state_dir))
    table = f"lock_probe_{uuid.uuid4().hex[:8]}"
    dsn = postgres.superuser_dsn(stack.config)
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute(f"CREATE TABLE {table} (x int)")
        holder.execute("BEGIN")
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

        def insert() -> None:
            with psycopg.connect(dsn, autocommit=True) as writer:
                writer.execute(f"INSERT INTO {table} VALUES (1)")

        blocked = threading.Thread(target=insert)
        blocked.start()
        try:

            def found() -> dict[str, Any] | None:
                capsys.readouterr()
                main(["doctor", "--json"])
                body: dict[str, Any] = json.loads(capsys.readouterr().out)
                waits = [f for f in body["findings"] if f["pattern"] == "postgres-lock-waits"]
                return waits[0] if waits else None

            # Past doctor's 5 s, on the next 5 s scrape.
            finding = wait_for(found, timeout_s=60, interval_s=2)
        finally:
            holder.execute("COMMIT")
            blocked.join(timeout=10)
        holder.execute(f"DROP TABLE {table}")
    # Named on the primary's own exporter (the one on the socket we locked through).
    [primary] = [
        f"{server}-exporter"
        for server, sockets, _ in exporters.postgres_servers(stack.config)
        if f"host={sockets} " in dsn
    ]
    assert finding["evidence"]["process"] == primary
    assert finding["evidence"]["longest_s"] >= 5
    assert "pg_blocking_pids" in finding["advice"]
    assert not blocked.is_alive()
